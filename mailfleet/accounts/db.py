"""A psycopg connection to the mail database, as mailfleet_admin, through an SSH tunnel
that ends in a private Unix socket.

PostgreSQL listens on the host's localhost only; the operator's machine reaches it over
the SSH access mailfleet already has. The role's password is read from the host's secret
file for the duration of the connection and never stored here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from mailfleet.accounts.schema import DATABASE
from mailfleet.config import Config, HostSettings
from mailfleet.engine.snapshot import SECRETS_DIR
from mailfleet.engine.tunnel import ssh_run, tunnel
from mailfleet.errors import ConfigError, DeployError

ADMIN_ROLE = "mailfleet_admin"
PORT = 5432


def database_host(config: Config, name: str | None = None, source: Path | None = None) -> HostSettings:
    """The host whose database the accounts commands change: --host NAME, else the one
    host with the db role (several independent database hosts need --host)."""
    if name:
        return config.select_hosts([name], source)[0]
    candidates = [h for h in config.select_hosts(None, source) if "db" in h.roles]
    if not candidates:
        raise ConfigError(f"No host in {source or 'the config'} has the db role.",
                          hint='Give one host roles = ["db", ...].')
    if len(candidates) > 1:
        raise ConfigError(
            f"Several hosts have their own mail database ({', '.join(h.name for h in candidates)}).",
            hint="Name the one to change with --host NAME.")
    return candidates[0]


@contextmanager
def connect(host: HostSettings) -> Iterator[psycopg.Connection]:
    """An autocommit connection; callers group changes with `conn.transaction()`."""
    secret = ssh_run(host, f"cat {SECRETS_DIR}/postgres-{ADMIN_ROLE} 2>/dev/null || true").strip()
    if not secret:
        raise DeployError(f"{host.name} has no database password for {ADMIN_ROLE} yet.",
                          hint="Run `mailfleet deploy` first.")
    with tunnel(host, [PORT]) as forward:
        try:
            # host=DIR: libpq opens the Unix socket DIR/.s.PGSQL.PORT, the tunnel's end in
            # a directory only this user can enter (never a local TCP port anyone could hold)
            conn = psycopg.connect(host=str(forward.directory), port=PORT, dbname=DATABASE,
                                   user=ADMIN_ROLE, password=secret, connect_timeout=15,
                                   autocommit=True)
        except psycopg.OperationalError as err:
            raise DeployError(f"Could not connect to the mail database on {host.name}: "
                              f"{str(err).strip().splitlines()[-1]}.") from err
        try:
            with conn:
                yield conn
        except psycopg.Error as err:
            detail = getattr(getattr(err, "diag", None), "message_primary", None) or str(err)
            raise DeployError(f"The mail database on {host.name} refused the change: "
                              f"{detail.strip().rstrip('.')}.") from err
