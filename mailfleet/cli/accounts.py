"""What the domain, user and alias commands share: which database, passwords, questions."""

from __future__ import annotations

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
from mailfleet.errors import UsageError
from mailfleet.services.mailboxes import ARCHIVE_DIR

HostOption = Annotated[
    Optional[str],
    typer.Option("--host", "-H", metavar="HOST",
                 help="The host whose mail database to change [default: the one with the db role]."),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Archive = Annotated[bool, typer.Option(
    "--archive", help=f"Pack its mail into {ARCHIVE_DIR}, then delete it.")]
Purge = Annotated[bool, typer.Option("--purge", help="Delete its mail.")]
FATE = {"keep": "kept", "archive": "archived", "purge": "DELETED"}


@contextmanager
def database(ctx: typer.Context, host: str | None) -> Iterator[tuple[Config, HostSettings, psycopg.Connection]]:
    g = globals_of(ctx)
    config = g.load()
    settings = db.database_host(config, host, g.config_path)
    with db.connect(settings, cluster=bool(config.cluster_members())) as conn:
        yield config, settings, conn


def mail_hosts(config: Config, database_host: HostSettings) -> list[HostSettings]:
    """Where a mailbox's sessions and mail are (to end them, to archive or purge it): the
    database's host, or in a cluster the members with the mail role (the primary may hold
    no mail at all)."""
    members = config.cluster_members()
    return [m for m in members if "mail" in m.roles] if members else [database_host]


def parse(fn, value: str, option: str):
    """A rules.* check on a command-line value; a refusal is a usage error naming it."""
    try:
        return fn(value)
    except ValueError as err:
        raise UsageError(f"{option}: {err}.") from err


def require_configured(config: Config, address: str) -> None:
    """The address's domain is one of mailfleet.toml's: Postfix accepts mail for those alone
    (a domain left in the database after it left the file gets none)."""
    domain = rules.domain_of(address)
    if domain not in config.mail.all_domains:
        raise UsageError(f"Domain {domain} is not in mailfleet.toml, so mail for it is refused.",
                         hint=f"Add it first: mailfleet domain add {domain}")


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


def disposal(archive: bool, purge: bool) -> str:
    if archive and purge:
        raise UsageError("Use either --archive or --purge, not both.")
    return "archive" if archive else "purge" if purge else "keep"
