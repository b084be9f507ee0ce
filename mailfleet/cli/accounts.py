"""What the domain, user and alias commands share: which database, passwords, questions."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Optional

import psycopg
import typer

from mailfleet.accounts import db, rules
from mailfleet.accounts.passwords import generate_password
from mailfleet.cli.output import err_console
from mailfleet.cli.state import globals_of
from mailfleet.config import Config, HostSettings
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import UsageError
from mailfleet.services.backup import ROOT as BACKUP_ROOT
from mailfleet.services.mailstore import VMAIL_DIR

HostOption = Annotated[
    Optional[str],
    typer.Option("--host", "-H", metavar="HOST",
                 help="The host whose mail database to change [default: the one with the db role]."),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ARCHIVE_DIR = f"{BACKUP_ROOT}/mailboxes"
Archive = Annotated[bool, typer.Option(
    "--archive", help=f"Pack its mail into {ARCHIVE_DIR}, then delete it.")]
Purge = Annotated[bool, typer.Option("--purge", help="Delete its mail.")]
FATE = {"keep": "kept", "archive": "archived", "purge": "DELETED"}


@contextmanager
def database(ctx: typer.Context, host: str | None) -> Iterator[tuple[Config, HostSettings, psycopg.Connection]]:
    g = globals_of(ctx)
    config = g.load()
    settings = db.database_host(config, host, g.config_path)
    with db.connect(settings) as conn:
        yield config, settings, conn


def parse(fn, value: str, option: str):
    """A rules.* check on a command-line value; a refusal is a usage error naming it."""
    try:
        return fn(value)
    except ValueError as err:
        raise UsageError(f"{option}: {err}.") from err


def new_password(email: str, config: Config, stdin: bool, generate: bool) -> tuple[str, bool]:
    """(password, generated) from --generate, --password-stdin or two hidden prompts."""
    if stdin and generate:
        raise UsageError("Use either --password-stdin or --generate, not both.")
    if generate:
        return generate_password(), True
    minimum = config.mail.min_password_length
    if not stdin and sys.stdin.isatty():
        for _ in range(3):
            password = typer.prompt(f"Password for {email}", hide_input=True,
                                    confirmation_prompt=True)
            try:
                return rules.password(password, email, minimum), False
            except ValueError as err:
                err_console.print(f"The {err}; try another (at least {minimum} characters).",
                                  markup=False)  # the reason may quote the password
        raise UsageError("No acceptable password after three tries; nothing was changed.")
    if not stdin:
        raise UsageError("No password given and no terminal to ask for one.",
                         hint="Pipe it in with --password-stdin, or use --generate.")
    try:
        return rules.password(sys.stdin.readline().rstrip("\r\n"), email, minimum), False
    except ValueError as err:
        raise UsageError(f"The {err}; nothing was changed.",
                         hint=f"Choose another (at least {minimum} characters, not a common "
                              "one, without the user name), or use --generate.") from err


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} Not confirmed: no terminal to ask; nothing was changed.",
                         hint="Add --yes to confirm.")
    if not typer.confirm(question, default=False):
        raise UsageError("Not confirmed; nothing was changed.")


def path_component(value: str, what: str) -> str:
    """`value` as one directory name under the mail store, or a usage error: a database
    from before today's rules may hold a mailbox named "/" or "..", whose "mail directory"
    would be the whole domain's (rm -rf /var/mail/vmail/DOMAIN//)."""
    if value in ("", ".", "..") or "/" in value or "\0" in value:
        raise UsageError(f"The {what} {value!r} is not a single path component, so mailfleet "
                         "will not archive or delete a mail directory named after it; "
                         "nothing was changed.",
                         hint="Remove it without --archive or --purge (its mail is kept), "
                              "then look after that mail by hand.")
    return value


def mail_dir(domain: str, local: str | None = None, vmail: str = VMAIL_DIR) -> str:
    """The mail directory of a mailbox (or of a whole domain), each part checked to be a
    single path component."""
    path = f"{vmail}/{path_component(domain, 'domain')}"
    return path + (f"/{path_component(local, 'mailbox name')}" if local is not None else "")


def kick(settings: HostSettings, mask: str) -> None:
    """End the IMAP/ManageSieve sessions of removed or disabled users (`*@domain` for a
    whole domain): without it an open session keeps reading mail until it logs out."""
    ssh_run(settings, f"doveadm kick {shlex.quote(mask)} >/dev/null 2>&1 || true")


def dispose_command(domain: str, local: str | None, how: str, vmail: str = VMAIL_DIR,
                    backup_root: str = BACKUP_ROOT, archive_dir: str = ARCHIVE_DIR) -> str | None:
    """The root shell command that archives ("archive") or deletes ("purge") a mailbox's
    (or domain's) mail; None for "keep". Every value is shlex-quoted (names come from the
    database, which may predate today's rules); the directories are parameters so a test
    can run the command against a temporary directory."""
    if how == "keep":
        return None
    path = mail_dir(domain, local, vmail)
    if how == "purge":
        return f"rm -rf -- {shlex.quote(path)}"
    parent, name = path.rsplit("/", 1)
    who = f"{local}@{domain}" if local is not None else domain
    archive = shlex.quote(f"{archive_dir}/{who}-") + '"$(date -u +%Y%m%d-%H%M%S)".tar.gz'
    return (
        f'if [ -d {shlex.quote(path)} ]; then '
        # the parent stays traversable: PostgreSQL's backups live there too
        f'install -d -m 755 {shlex.quote(backup_root)} && '
        f'install -d -m 700 {shlex.quote(archive_dir)} && '
        f'umask 077 && '
        f'a={archive} && tar -C {shlex.quote(parent)} -czf "$a" -- {shlex.quote(name)} && '
        f'rm -rf -- {shlex.quote(path)} && printf "%s\\n" "$a"; fi')


def dispose(settings: HostSettings, domain: str, local: str | None, how: str) -> str:
    """Keep, archive or delete a removed mailbox's (or whole domain's) mail on the host;
    one clause saying what happened to it."""
    command = dispose_command(domain, local, how)
    path = f"{VMAIL_DIR}/{domain}" + (f"/{local}" if local is not None else "")
    who = f"{local}@{domain}" if local is not None else domain
    if command is None:
        again = f"adding {who} again" if local else f"adding {domain} and its users again"
        return (f"its mail is kept in {path} on {settings.name} ({again} gives it back; "
                f"--archive or --purge removes it)")
    if how == "purge":
        ssh_run(settings, command)
        return f"its mail in {path} on {settings.name} was deleted"
    out = ssh_run(settings, command).strip()
    if not out:
        return f"it had no mail on {settings.name} yet ({path} did not exist)"
    return f"its mail was archived to {out} on {settings.name} and removed from {path}"


def disposal(archive: bool, purge: bool) -> str:
    if archive and purge:
        raise UsageError("Use either --archive or --purge, not both.")
    return "archive" if archive else "purge" if purge else "keep"
