"""Where each mailbox lives in a cluster: the mail hosts and their VPN addresses
(`mail_hosts`), every mailbox's home among them, and each mail host's own health-check
mailbox, homed on it. Dovecot on every mail host reads them to serve a mailbox or proxy it
to its home (templates/dovecot). The deploy that makes the database changes (the primary,
or the host whose database becomes the cluster's) writes them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command

from mailfleet.accounts.passwords import hash_password
from mailfleet.accounts.schema import DATABASE
from mailfleet.engine import Engine, HostContext
from mailfleet.services import mailflow
from mailfleet.services.checks import CheckResult
from mailfleet.services.postgres import (PSQL, cluster_state, database_state, psql_script,
                                        sql_literal)
from mailfleet.services.shape import HostPlan, Service

_STATE = ("SELECT 'host ' || name || ' ' || host(address) FROM mail_hosts UNION ALL "
          "SELECT 'homeless ' || count(*) FROM mailboxes WHERE home IS NULL UNION ALL "
          "SELECT 'homed ' || home || ' ' || count(*) FROM mailboxes WHERE home IS NOT NULL "
          "GROUP BY home UNION ALL "
          "SELECT 'check ' || email || ' ' || coalesce(home, '-') FROM mailboxes WHERE system")
# (its own query: before schema 7 it fails alone)
_REPLICAS = ("SELECT 'unreplicated ' || count(*) FROM mailboxes "
             "WHERE home IS NOT NULL AND replica IS NULL")
SNAPSHOT = {"homes": "; ".join(f"{PSQL} -tA -d {DATABASE} -c {shlex.quote(query)} 2>/dev/null"
                               " || true" for query in (_STATE, _REPLICAS))}
HOMES_SCHEMA = 6  # the schema version that has mailboxes.home
REPLICAS_SCHEMA = 7  # ... and mailboxes.replica


@dataclass(frozen=True)
class HomesState:
    """What the database says before the deploy: the mail hosts and their addresses, how
    many mailboxes have no home and how many each host is home to, how many have a home
    but no replica, the check mailboxes."""

    hosts: dict[str, str] = field(default_factory=dict)
    homeless: int = 0
    homed: dict[str, int] = field(default_factory=dict)
    unreplicated: int = 0
    checks: dict[str, str] = field(default_factory=dict)  # address -> home ("-": none)

    @classmethod
    def parse(cls, text: str) -> HomesState:
        state = cls()
        for line in text.splitlines():
            kind, *values = line.split() or [""]
            if kind == "host" and len(values) == 2:
                state.hosts[values[0]] = values[1]
            elif kind == "homeless" and values and values[0].isdigit():
                state = replace(state, homeless=int(values[0]))
            elif kind == "unreplicated" and values and values[0].isdigit():
                state = replace(state, unreplicated=int(values[0]))
            elif kind == "homed" and len(values) == 2 and values[1].isdigit():
                state.homed[values[0]] = int(values[1])
            elif kind == "check" and len(values) == 2:
                state.checks[values[0]] = values[1]
        return state


def first_home(plan: HostPlan) -> str:
    """Where a mailbox without a home lives meanwhile: the first mail host listed."""
    return plan.mail_cluster[0][0] if plan.mail_cluster else ""


def known(ctx: HostContext) -> bool:
    """Whether this host's database copy knows homes (schema 6) by the time Dovecot asks
    it: already, or because its database is the one this deploy migrates, or is copied
    from it. A standby still at schema 5 keeps serving every mailbox itself until the
    primary's migration reaches it (the next deploy proxies)."""
    if not ctx.plan.mail_cluster:
        return False
    cluster = cluster_state(ctx)
    return (database_state(ctx).schema_version >= HOMES_SCHEMA
            or cluster.writes_here(ctx.plan.host)
            or ctx.plan.host in cluster.joining)


@operation()
def homes(wanted: dict[str, str], found: HomesState, first: str, stale_checks: list[str],
          check_mailboxes: dict[str, str], password_hash: str, schema_version: int):
    """mail_hosts as the config has them (a host gone from it stays while it is home to
    mailboxes: check reports them); a mailbox without a home gets `first`, one without a
    replica gets one (migration 0007's trigger); the mail hosts' check mailboxes
    ({address: home}) with `password_hash`, the single host's gone. Before a migration the
    snapshot could not tell what is missing: `schema_version` says so."""
    gone = [name for name in found.hosts if name not in wanted and not found.homed.get(name)]
    statements = []
    if gone:  # first: a new host may take a gone one's address
        names = ", ".join(sql_literal(n) for n in gone)
        statements.append(f"DELETE FROM mail_hosts WHERE name IN ({names});")
    statements += [
        f"INSERT INTO mail_hosts (name, address) VALUES ({sql_literal(name)}, "
        f"{sql_literal(address)}) ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address;"
        for name, address in wanted.items() if found.hosts.get(name) != address]
    if found.homeless or schema_version < HOMES_SCHEMA:
        statements.append(f"UPDATE mailboxes SET home = {sql_literal(first)} WHERE home IS NULL;")
    added = set(wanted) - set(found.hosts)
    if len(wanted) > 1 and (found.unreplicated or found.homeless or added or gone
                            or schema_version < REPLICAS_SCHEMA):
        statements.append("UPDATE mailboxes SET replica = NULL "
                          "WHERE home IS NOT NULL AND replica IS NULL;")
    if stale_checks:
        statements.append("DELETE FROM mailboxes WHERE system AND email IN ("
                          + ", ".join(sql_literal(a) for a in stale_checks) + ");")
    for address, home in check_mailboxes.items():
        domain = address.split("@", 1)[1]
        statements.append(
            "INSERT INTO mailboxes (email, domain, name, password, system, home) VALUES "
            f"({sql_literal(address)}, {sql_literal(domain)}, 'mailfleet health check', "
            f"{sql_literal(password_hash)}, true, {sql_literal(home)}) ON CONFLICT (email) DO "
            "UPDATE SET password = EXCLUDED.password, active = true, home = EXCLUDED.home;")
    if not statements:
        host.noop("every mail host and mailbox home is in the database")
        return
    yield psql_script("\n".join(statements) + "\n", DATABASE)


def deploy(ctx: HostContext) -> None:
    cluster = cluster_state(ctx)
    if cluster is None or not cluster.writes_here(ctx.plan.host) or not ctx.plan.mail_cluster:
        return
    state = HomesState.parse(ctx.snapshot("homes"))
    wanted = dict(ctx.plan.mail_cluster)
    password, fresh = ctx.secret(mailflow.SECRET)  # the fleet's (cluster.SHARED_SECRETS)
    domain = ctx.config.mail.domain
    addresses = {mailflow.check_address(domain, name): name for name in wanted}
    missing = addresses if fresh else {a: h for a, h in addresses.items()
                                       if state.checks.get(a) != h}
    # the mailboxes from before several mail hosts live where the cluster's database came
    # from when that is a mail host (a single host grown into a cluster)
    first = cluster.source if cluster.source in wanted else first_home(ctx.plan)
    version = database_state(ctx).schema_version
    single = mailflow.check_address(domain)  # the single host's check mailbox
    ctx.op(homes, name="Record the mail hosts and each mailbox's home and replica",
           wanted=wanted, found=state, first=first,
           stale_checks=[single] if version < HOMES_SCHEMA or single in state.checks else [],
           check_mailboxes=missing, password_hash=hash_password(password) if missing else "",
           schema_version=version)


_COUNTS = (f"{PSQL} -tA -d {DATABASE} -c " + shlex.quote(
    "SELECT coalesce(home, '-') || ' ' || count(*) FILTER (WHERE NOT system) "
    "FROM mailboxes GROUP BY home") + " 2>/dev/null || true")


def checks(engine: Engine) -> list[CheckResult]:
    """Per mail host, the mailboxes homed there (read on each member's own copy)."""
    results = []
    for name, text in engine.facts(Command, command=_COUNTS).items():
        plan = engine.plans[name]
        if not plan.mail:
            continue
        counts = dict(line.split() for line in (text or "").splitlines() if " " in line)
        strays = sorted(set(counts) - {n for n, _ in plan.mail_cluster})
        results.append(CheckResult(
            name, "mailboxes homed here", "fail" if strays else "ok",
            f"{counts.get(name, '0')} mailbox(es)" + (
                f"; homed on hosts that are no mail host: {', '.join(strays)}" if strays else ""),
            "give those mailboxes a home among the mail hosts" if strays else ""))
    return results


SERVICE = Service("homes", applies=lambda plan: bool(plan.mail_cluster) and plan.db,
                  deploy=deploy, checks=checks, reads=(_COUNTS,), snapshot=SNAPSHOT)
