"""A psycopg connection to the mail database, as mailfleet_admin, through an SSH tunnel.

PostgreSQL listens on the host's localhost only; the operator's machine reaches it over
the SSH access mailfleet already has. The role's password is read from the host's secret
file for the duration of the connection and never stored here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from pyinfra.facts.files import FileContents

from mailfleet.accounts.schema import DATABASE
from mailfleet.engine import Engine
from mailfleet.engine.runner import SECRETS_DIR
from mailfleet.engine.tunnel import tunnel
from mailfleet.errors import DeployError

ADMIN_ROLE = "mailfleet_admin"
PORT = 5432


def database_host(engine: Engine) -> str:
    """The host with the `db` role (the first one, until clusters have more)."""
    for name, settings in engine.settings.items():
        if "db" in settings.roles:
            return name
    raise DeployError("No selected host has the db role.",
                      hint='Give one host roles = ["db", ...] in the config.')


@contextmanager
def connect(engine: Engine, host: str | None = None) -> Iterator[psycopg.Connection]:
    name = host or database_host(engine)
    secret = engine.facts(FileContents, path=f"{SECRETS_DIR}/postgres-{ADMIN_ROLE}").get(name)
    if not secret or not secret[0].strip():
        raise DeployError(f"{name} has no database password for {ADMIN_ROLE} yet.",
                          hint="Run `mailfleet deploy` first.")
    with tunnel(engine.settings[name], [PORT]) as ports:
        try:
            conn = psycopg.connect(host="127.0.0.1", port=ports[PORT], dbname=DATABASE,
                                   user=ADMIN_ROLE, password=secret[0].strip(), connect_timeout=15)
        except psycopg.OperationalError as err:
            raise DeployError(f"Could not connect to the mail database on {name}: "
                              f"{str(err).strip().splitlines()[-1]}.") from err
        try:
            with conn:
                yield conn
        except psycopg.Error as err:
            detail = getattr(getattr(err, "diag", None), "message_primary", None) or str(err)
            raise DeployError(f"The mail database on {name} refused the change: "
                              f"{detail.strip().rstrip('.')}.") from err
