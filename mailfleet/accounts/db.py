"""A psycopg connection to the mail database, as mailfleet_admin, through an SSH tunnel
that ends in a private Unix socket.

PostgreSQL listens on the host's localhost only; the operator's machine reaches it over
the SSH access mailfleet already has. The role's password is read from the host's secret
file for the duration of the connection and never stored here.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from mailfleet.accounts.schema import DATABASE
from mailfleet.config import Config, HostSettings
from mailfleet.engine.snapshot import SECRETS_DIR
from mailfleet.engine.tunnel import ssh_run, tunnel
from mailfleet.errors import ConfigError, DeployError

# Patroni's REST API on every member of a cluster (services/cluster.py)
PATRONI_PORT = 8008

ADMIN_ROLE = "mailfleet_admin"
PORT = 5432


def database_host(config: Config, name: str | None = None, source: Path | None = None) -> HostSettings:
    """The host whose database the accounts commands change: --host NAME, else the one
    host with the db role (several independent database hosts need --host)."""
    if name:
        return config.select_hosts([name], source)[0]
    if config.cluster_members():
        return primary_host(config)
    candidates = [h for h in config.select_hosts(None, source) if "db" in h.roles]
    if not candidates:
        raise ConfigError(f"No host in {source or 'the config'} has the db role.",
                          hint='Give one host roles = ["db", ...].')
    if len(candidates) > 1:
        raise ConfigError(
            f"Several hosts have their own mail database ({', '.join(h.name for h in candidates)}).",
            hint="Name the one to change with --host NAME.")
    return candidates[0]


def primary_host(config: Config) -> HostSettings:
    """The cluster's primary, as the first member that answers says (Patroni's REST API):
    writes go there, wherever it is after a failover."""
    reasons = []
    for member in config.cluster_members():
        url = f"http://{config.vpn_address(member)}:{PATRONI_PORT}/cluster"
        fetch = ("import json, urllib.request; print(' '.join(m['name'] for m in json.load("
                 f"urllib.request.urlopen({url!r}, timeout=5))['members'] "
                 "if m.get('role') in ('leader', 'master')))")
        try:
            leader = ssh_run(member, f"python3 -c {shlex.quote(fetch)}", timeout=20).strip()
        except DeployError as err:
            reasons.append(err.message)
            continue
        found = [m for m in config.cluster_members() if m.name == leader]
        if found:
            return found[0]
        reasons.append(f"{member.name} knows no primary now")
    raise DeployError(f"The accounts database's cluster has no primary now ({len(reasons)} "
                      f"member(s) asked; first answer: {reasons[0].rstrip('.')}).",
                      hint="Run `mailfleet cluster status`; a failover takes up to half a "
                      "minute.")


def replayed_everywhere(conn: psycopg.Connection, host: str, timeout: float = 30) -> None:
    """Wait until every standby streaming from this primary has replayed what was written
    here so far (a mailbox added is known to every host's Postfix and Dovecot when the
    command ends)."""
    # standbys streaming or catching up (not a base backup being taken, not one starting)
    behind = ("SELECT count(*) FROM pg_stat_replication WHERE state IN ('streaming', "
              "'catchup') AND (replay_lsn IS NULL OR replay_lsn < %s::pg_lsn)")
    deadline = time.monotonic() + timeout
    try:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            return  # a standby named with --host: it wrote nothing
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        while conn.execute(behind, (lsn,)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise DeployError(f"The change was made on {host}, but a standby has not "
                                  f"replayed it within {timeout:.0f} s.",
                                  hint="Run `mailfleet cluster status`.")
            time.sleep(0.05)
    except psycopg.Error as err:  # the change was committed: say so, not "refused"
        raise DeployError(f"The change was made on {host}, but whether every standby has it "
                          f"could not be asked: {str(err).strip().splitlines()[-1]}.",
                          hint="Run `mailfleet cluster status`.") from err


@contextmanager
def connect(host: HostSettings, cluster: bool = False) -> Iterator[psycopg.Connection]:
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
                if cluster:
                    replayed_everywhere(conn, host.name)
        except psycopg.Error as err:
            detail = getattr(getattr(err, "diag", None), "message_primary", None) or str(err)
            raise DeployError(f"The mail database on {host.name} refused the change: "
                              f"{detail.strip().rstrip('.')}.") from err
