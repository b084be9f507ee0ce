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


def mail_dir(domain: str, local: str | None = None) -> str:
    return f"{VMAIL_DIR}/{domain}" + (f"/{local}" if local else "")


def kick(settings: HostSettings, mask: str) -> None:
    """End the IMAP/ManageSieve sessions of removed or disabled users (`*@domain` for a
    whole domain): without it an open session keeps reading mail until it logs out."""
    ssh_run(settings, f"doveadm kick {shlex.quote(mask)} >/dev/null 2>&1 || true")


def dispose(settings: HostSettings, domain: str, local: str | None, how: str) -> str:
    """Keep, archive or delete a removed mailbox's (or whole domain's) mail on the host;
    one clause saying what happened to it."""
    path = mail_dir(domain, local)
    who = f"{local}@{domain}" if local else domain
    if how == "keep":
        again = f"adding {who} again" if local else f"adding {domain} and its users again"
        return (f"its mail is kept in {path} on {settings.name} ({again} gives it back; "
                f"--archive or --purge removes it)")
    if how == "purge":
        ssh_run(settings, f"rm -rf {shlex.quote(path)}")
        return f"its mail in {path} on {settings.name} was deleted"
    parent, name = path.rsplit("/", 1)
    archive = f"{ARCHIVE_DIR}/{who}-$(date -u +%Y%m%d-%H%M%S).tar.gz"
    out = ssh_run(settings, (
        f'if [ -d {shlex.quote(path)} ]; then '
        # the parent stays traversable: PostgreSQL's backups live there too
        f'install -d -m 755 {BACKUP_ROOT} && install -d -m 700 {ARCHIVE_DIR} && '
        f'umask 077 && '
        f'a="{archive}" && tar -C {shlex.quote(parent)} -czf "$a" {shlex.quote(name)} && '
        f'rm -rf {shlex.quote(path)} && echo "$a"; fi')).strip()
    if not out:
        return f"it had no mail on {settings.name} yet ({path} did not exist)"
    return f"its mail was archived to {out} on {settings.name} and removed from {path}"


def disposal(archive: bool, purge: bool) -> str:
    if archive and purge:
        raise UsageError("Use either --archive or --purge, not both.")
    return "archive" if archive else "purge" if purge else "keep"
