"""Patroni: runs a cluster member's PostgreSQL, and makes a standby the primary when the
primary's host is gone (its lock in etcd expires).

Debian's `patroni.service` with /etc/patroni/config.yml, Debian's directory layout
(/var/lib/postgresql/VERSION/main, config in /etc/postgresql/VERSION/main, where mailfleet
keeps writing conf.d and pg_hba.conf). The host whose database becomes the cluster's hands
its running PostgreSQL to Patroni, which takes the data directory over as it is; a joining
host's Patroni waits for the cluster (templates/patroni/join.sh.j2) and copies the primary
with pg_basebackup.
"""

from __future__ import annotations

import shlex

from pyinfra.api import operation
from pyinfra.operations import systemd

from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.operations import unit_restarted
from mailfleet.services import cluster, etcd, postgres
from mailfleet.services.checks import CheckResult
from mailfleet.services.platform import platform
from mailfleet.services.shape import Port, Service, Unit, provided
from mailfleet.templating import render

# python3-etcd named: apt may meet patroni's "python3-etcd | python3-consul | ..." with another
PACKAGES = ["patroni", "python3-etcd"]
CONFIG = cluster.CONFIG
JOIN = "/usr/local/lib/mailfleet/patroni-join"
CALLBACK = "/usr/local/lib/mailfleet/patroni-callback"
# written by CALLBACK (as postgres) whenever Patroni (re)started PostgreSQL
RESTARTED = "/var/lib/postgresql/.mailfleet-pg-restarted"
RECONNECT = "mailfleet-pg-restarted"
RECONNECT_FILES = tuple(f"/etc/systemd/system/{RECONNECT}.{kind}" for kind in ("path", "service"))
DROP_IN = "/etc/systemd/system/patroni.service.d/mailfleet.conf"
LEAD_SECONDS = 300


@operation()
def handed_over(standalone: str, marker: str):
    """Stop the standalone PostgreSQL and mark this host a member: Patroni starts the same
    data directory next, as the cluster's first primary."""
    directory = shlex.quote(marker.rsplit("/", 1)[0])
    yield (f"systemctl stop {shlex.quote(standalone)} && mkdir -p {directory} && "
           f"touch {shlex.quote(marker)}")


def _until(sql: str, value: str, seconds: int, why: str) -> str:
    """Shell: wait until `sql` on this host's PostgreSQL answers `value` (≤ `seconds`), else
    fail saying `why`."""
    probe = postgres.psql_query(sql)
    return (f"i=0; until [ \"$({probe})\" = {value} ]; do i=$((i+1)); "
            f"[ $i -gt {seconds} ] && {{ echo {shlex.quote(why)} >&2; exit 1; }}; sleep 1; done")


@operation()
def leading(seconds: int):
    """Wait until this host's PostgreSQL, under Patroni now, is the primary."""
    yield _until("SELECT pg_is_in_recovery()", "f", seconds, "PostgreSQL did not become the "
                 f"primary under Patroni within {seconds} s (see journalctl -u patroni)")


@operation()
def restarted(member: str, undo: str, seconds: int = 120):
    """Restart a member's PostgreSQL through Patroni (a setting that needs a restart, such
    as archive_mode): systemd does not run it on a member, and Patroni keeps the primary's
    lock while it restarts. Returns once PostgreSQL answers again. patronictl exits 0 on a
    refused restart too: its answer is read, and on failure the file `undo` that asked for
    the restart is removed, so that the next deploy writes it and restarts again."""
    command = (f"patronictl -c {CONFIG} restart {shlex.quote(cluster.SCOPE)} "
               f"{shlex.quote(member)} --force")
    yield (f"out=$({command} 2>&1); case \"$out\" in *'Success: restart on member'*) ;; *) "
           f"rm -f {shlex.quote(undo)}; printf '%s\\n' \"$out\" >&2; exit 1 ;; esac; "
           + _until("SELECT 1", "1", seconds, f"PostgreSQL did not answer within {seconds} s "
                    "of its restart by Patroni (see journalctl -u patroni)"))


def restart_postgresql(ctx: HostContext, why: str, undo: str, **when) -> None:
    """Restart this host's PostgreSQL for `why` (a change of the file `undo`): Debian's unit
    on a lone host, Patroni on a cluster member. `when`: an `_if=` condition."""
    if ctx.plan.cluster:
        ctx.op(restarted, name=f"Restart PostgreSQL through Patroni ({why})",
               member=ctx.plan.host, undo=undo, **when)
    else:
        ctx.op(unit_restarted, name=f"Restart postgresql ({why})", unit="postgresql", **when)


def deploy(ctx: HostContext) -> None:
    state = postgres.cluster_state(ctx)
    version = platform(ctx).postgresql
    me = ctx.plan.host
    address = dict(ctx.plan.cluster)[me]
    join = ctx.op(config_file, name="Let a joining host wait for the cluster", dest=JOIN,
                  mode="755", content=render(
                      "patroni/join.sh.j2", marker=cluster.MARKER,
                      marker_dir=cluster.MARKER.rsplit("/", 1)[0], endpoint=etcd.ENDPOINT,
                      namespace=cluster.NAMESPACE, standalone=f"postgresql@{version}-main",
                      data_dir=f"/var/lib/postgresql/{version}/main"))
    unit = ctx.op(config_file, name="Run Patroni after the VPN and etcd, and again when it dies",
                  dest=DROP_IN, content=render("patroni/unit.conf.j2", join=JOIN))
    ctx.op(systemd.daemon_reload, name="Reload systemd units (Patroni)", _if=ctx.changed(unit))
    callback = ctx.op(config_file, name="Let Patroni say when PostgreSQL restarted", dest=CALLBACK,
                      mode="755", content=render("patroni/callback.sh.j2", stamp=RESTARTED))
    if ctx.plan.mail or ctx.plan.webmail == "sogo":
        reconnect(ctx)
    replication, _ = ctx.secret("cluster-replication")
    rest, _ = ctx.secret("cluster-rest")
    conf = ctx.op(config_file, name="Configure Patroni", dest=CONFIG, mode="640",
                  group="postgres", secret=True, content=render(
                      "patroni/config.yml.j2", scope=cluster.SCOPE, namespace=cluster.NAMESPACE,
                      member_name=me, address=address, rest_port=cluster.PATRONI_PORT,
                      rest_password=rest, members=ctx.plan.cluster,
                      data_dir=f"/var/lib/postgresql/{version}/main",
                      bin_dir=f"/usr/lib/postgresql/{version}/bin",
                      config_dir=f"/etc/postgresql/{version}/main",
                      pgpass=f"/var/lib/postgresql/{version}-main.pgpass",
                      replication_role=cluster.REPLICATION_ROLE,
                      replication_password=replication, callback=CALLBACK))
    bootstrap = state.bootstraps(me)
    if bootstrap:
        ctx.op(handed_over, name="Hand the running PostgreSQL over to Patroni",
               standalone=f"postgresql@{version}-main", marker=cluster.MARKER)
    run = ctx.service("patroni", reload_when=(conf, join, callback,
                                              *provided(ctx).postgresql_config),
                      no_block=me in state.joining)
    if bootstrap:
        ctx.op(leading, name="Wait until PostgreSQL is the primary under Patroni",
               seconds=LEAD_SECONDS, _if=ctx.changed(run))


def reconnect(ctx: HostContext) -> None:
    """A mail host's Dovecot and Postfix keep pooled connections to this host's PostgreSQL:
    after Patroni restarted it (a demotion restarts it), the first login or lookup on each
    dead connection failed ("terminating connection due to administrator command"). SOGo
    never gives up a dead connection at all. A path unit reloads the mail services and
    restarts SOGo when the callback's stamp changes."""
    units = [ctx.op(config_file, name=f"Write {RECONNECT}.{kind}",
                    dest=f"/etc/systemd/system/{RECONNECT}.{kind}",
                    content=render(f"patroni/pg-restarted.{kind}.j2", stamp=RESTARTED,
                                   mail=ctx.plan.mail, sogo=ctx.plan.webmail == "sogo"))
             for kind in ("path", "service")]
    ctx.op(systemd.daemon_reload, name="Reload systemd units (reconnect)", _if=ctx.changed(*units))
    ctx.service(f"{RECONNECT}.path", restart_when=(units[0],))


def checks(engine: Engine) -> list[CheckResult]:
    """The cluster as a whole, once (from the first member's view of all of them)."""
    statuses = cluster.member_status(engine.config)
    found = cluster.problems(statuses, engine.config.cluster.max_lag_bytes)
    primary = next((s.host for s in statuses if s.role == "primary"), "none")
    first = engine.config.cluster_members()[0].name
    summary = ", ".join(f"{s.host} {s.role}" for s in statuses)
    return [CheckResult(first, "accounts database cluster", "fail" if found else "ok",
                        "; ".join(found) if found else f"primary {primary}; {summary}",
                        "run `mailfleet cluster status`; see `journalctl -u patroni`")]


SERVICE = Service(
    "patroni", applies=lambda plan: bool(plan.cluster), packages=tuple(PACKAGES),
    deploy=deploy, checks=checks,
    units=(Unit("patroni", (Port(cluster.PATRONI_PORT, "Patroni REST API", "cluster"),
                            Port(5432, "PostgreSQL replication", "cluster"))),
           # (a mail or SOGo host's only; `check` sees its effect, not the unit)
           Unit(f"{RECONNECT}.path", checked=False)),
    managed_paths=(CONFIG, JOIN, CALLBACK, DROP_IN, *RECONNECT_FILES))
