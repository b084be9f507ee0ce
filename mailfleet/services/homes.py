"""Where each mailbox lives in a cluster: the mail hosts and their VPN addresses
(`mail_hosts`), every mailbox's home among them, and each mail host's own health-check
mailbox, homed on it. Dovecot on every mail host reads them to serve a mailbox or proxy it
to its home (templates/dovecot). The deploy that makes the database changes (the primary,
or the host whose database becomes the cluster's) writes them.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command

from mailfleet.accounts.passwords import hash_password
from mailfleet.accounts.schema import DATABASE
from mailfleet.engine import Engine, HostContext
from mailfleet.services import mailflow
from mailfleet.services.checks import CheckResult
from mailfleet.services.postgres import PSQL, cluster_state, psql_script, sql_literal
from mailfleet.services.shape import Service

_STATE = ("SELECT 'host ' || name || ' ' || host(address) FROM mail_hosts UNION ALL "
          "SELECT 'homeless ' || count(*) FROM mailboxes WHERE home IS NULL UNION ALL "
          "SELECT 'check ' || email || ' ' || home FROM mailboxes WHERE system AND home IS NOT NULL")
SNAPSHOT = {"homes": f"{PSQL} -tA -d {DATABASE} -c {shlex.quote(_STATE)} 2>/dev/null || true"}


def parse_state(text: str) -> tuple[dict[str, str], int, dict[str, str]]:
    """(mail host → address, mailboxes without a home, check mailbox → its home)."""
    hosts, homeless, checks = {}, 0, {}
    for line in text.splitlines():
        kind, *values = line.split()
        if kind == "host" and len(values) == 2:
            hosts[values[0]] = values[1]
        elif kind == "homeless" and values and values[0].isdigit():
            homeless = int(values[0])
        elif kind == "check" and len(values) == 2:
            checks[values[0]] = values[1]
    return hosts, homeless, checks


@operation()
def homes(wanted: dict[str, str], found: dict[str, str], homeless: int, first: str,
          check_mailboxes: dict[str, str], password_hash: str):
    """mail_hosts as the config has them; a mailbox without a home gets `first` (the mail
    host listed first: the one that held the mail before the cluster had several);
    `check_mailboxes` ({address: home}) exist with `password_hash` (empty: as they are)."""
    statements = [
        f"INSERT INTO mail_hosts (name, address) VALUES ({sql_literal(name)}, "
        f"{sql_literal(address)}) ON CONFLICT (name) DO UPDATE SET address = EXCLUDED.address;"
        for name, address in wanted.items() if found.get(name) != address]
    gone = [name for name in found if name not in wanted]
    if gone:  # a host still home to mailboxes stays listed (check reports them)
        names = ", ".join(sql_literal(n) for n in gone)
        statements.append(f"DELETE FROM mail_hosts h WHERE name IN ({names}) AND NOT EXISTS "
                          "(SELECT 1 FROM mailboxes m WHERE m.home = h.name);")
    if homeless:
        statements.append(f"UPDATE mailboxes SET home = {sql_literal(first)} WHERE home IS NULL;")
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
    found, homeless, checks = parse_state(ctx.snapshot("homes"))
    wanted = dict(ctx.plan.mail_cluster)
    password, fresh = ctx.secret(mailflow.SECRET)  # the fleet's (cluster.SHARED_SECRETS)
    domain = ctx.config.mail.domain
    missing = {mailflow.check_address(domain, name): name for name in wanted
               if checks.get(mailflow.check_address(domain, name)) != name}
    if fresh:
        missing = {mailflow.check_address(domain, name): name for name in wanted}
    ctx.op(homes, name="Record the mail hosts and each mailbox's home", wanted=wanted,
           found=found, homeless=homeless, first=next(iter(wanted)), check_mailboxes=missing,
           password_hash=hash_password(password) if missing else "")


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
