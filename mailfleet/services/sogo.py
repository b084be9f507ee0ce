"""SOGo: webmail, calendars and contacts (CalDAV/CardDAV) and optionally ActiveSync, the
alternative to Roundcube (+ Radicale), from Debian's packages.

Its own PostgreSQL database (SOGo makes its tables there on first use) and role; the users
are mailfleet's accounts through the `sogo_users` view (migration 0003), so a password
changed in SOGo is the one Dovecot checks; the view's update goes through
webmail_set_password (migration 0004: limited, logged). nginx proxies /SOGo to it on 127.0.0.1.
"""

from __future__ import annotations

from pyinfra.api import operation
from pyinfra.facts.server import Command
from pyinfra.operations import systemd

from mailfleet.accounts import schema
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.services import cluster, etcd, system, upstream
from mailfleet.services.checks import CheckResult, https_count
from mailfleet.services.platform import platform
from mailfleet.services.shape import HostPlan, Service, Unit
from mailfleet.templating import render

# memcached: SOGo keeps sessions and its failed-login counter there (a Depends, named so
# that removal takes it away again)
PACKAGES = ["sogo", "memcached"]
ACTIVESYNC_PACKAGES = ["sogo-activesync"]
DATABASE = "sogo"
ROLE = "mailfleet_sogo"
PORT = 20000
CONFIG = "/etc/sogo/sogo.conf"
DROP_IN_DIR = "/etc/systemd/system/sogo.service.d"
DROP_IN = f"{DROP_IN_DIR}/mailfleet.conf"
URL_PATH = "/SOGo"
# a cluster member's: SOGo restarted when the accounts database's primary changes
RECONNECT = "mailfleet-sogo-reconnect"
RECONNECT_UNIT = f"/etc/systemd/system/{RECONNECT}.service"
RECONNECT_SCRIPT = "/usr/local/lib/mailfleet/sogo-reconnect"

SNAPSHOT = {"sogo": "dpkg-query -W -f='${Package} ${db:Status-Status}\\n' "
                          "sogo sogo-activesync 2>/dev/null"}


def packages(plan: HostPlan) -> list[str]:
    return [*PACKAGES, *(ACTIVESYNC_PACKAGES if plan.activesync else [])]


def _installed(ctx: HostContext) -> set[str]:
    return {line.split()[0] for line in ctx.snapshot("sogo").splitlines()
            if line.split()[1:] == ["installed"]}


@operation()
def remove(packages: list[str], everything: bool):
    """Packages of SOGo that the config no longer wants. With `everything` (webmail is not
    SOGo any more) also its config, logs and spool; its database (users' calendars,
    contacts and preferences) stays until dropped by hand."""
    yield (system.purged(packages)
           + (f" && {{ systemctl disable --now {RECONNECT}.service >/dev/null 2>&1; "
              f"rm -rf /etc/sogo /var/log/sogo /var/spool/sogo {DROP_IN_DIR} {RECONNECT_UNIT} "
              f"{RECONNECT_SCRIPT}; }}" if everything else ""))


def retire(ctx: HostContext) -> None:
    if _installed(ctx):
        ctx.op(remove, name="Remove SOGo (webmail is not sogo)",
               packages=[*PACKAGES, *ACTIVESYNC_PACKAGES], everything=True)


def deploy(ctx: HostContext) -> None:
    installed = _installed(ctx)
    config = ctx.config
    if not ctx.plan.activesync and "sogo-activesync" in installed:
        ctx.op(remove, name="Remove SOGo's ActiveSync (activesync = false)",
               packages=ACTIVESYNC_PACKAGES, everything=False)
    # its database and role are the database host's (postgres.webmail_database)
    where = upstream.endpoints(ctx)
    # a cluster member: this host's PostgreSQL may be a standby, and SOGo writes (sessions,
    # preferences, a password change). Its URLs cannot hold libpq's host list (GNUstep's
    # NSURL refuses commas), and libpq picks among one name's addresses without checking
    # each for writes: the URLs name no host, and libpq reads the members from PGHOST and
    # keeps the primary (target_session_attrs=read-write, both in SOGo's environment)
    members = [where.db_host, *ctx.plan.cluster_peers] if ctx.plan.cluster else []
    conf = ctx.op(config_file, name=f"Write {CONFIG}", dest=CONFIG, mode="640", group="sogo",
                  secret=True,
                  content=render("sogo/sogo.conf.j2", fqdn=ctx.fqdn, db_user=ROLE,
                                 db_password=upstream.secret(ctx, f"postgres-{ROLE}"),
                                 db_address="" if members else f"{where.db_host}:5432",
                                 db_name=DATABASE, remote=where.remote,
                                 server=where.mail_host,
                                 accounts_db=schema.DATABASE, domain=config.mail.domain,
                                 title=config.web.title, port=PORT,
                                 activesync=ctx.plan.activesync,
                                 min_password_length=config.mail.min_password_length,
                                 min_password_regex=f".{{{config.mail.min_password_length},}}"))
    # libpq reads these from SOGo's environment: the database on the mail host is verified
    env = ctx.op(config_file, name="Write SOGo's database connection settings", dest=DROP_IN,
                 content=render("sogo/service-override.conf.j2", ca_file=where.ca_file,
                                remote=where.remote, members=",".join(members)))
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(env))
    ctx.service("memcached")
    ctx.service("sogo", restart_when=(conf, env))
    if ctx.plan.cluster:
        reconnect(ctx)


def reconnect(ctx: HostContext) -> None:
    """SOGo never drops a pooled database connection that died, so after a switchover or a
    failover every request on one failed (logins refused) until SOGo restarted: a unit
    watches Patroni's leader key in etcd and restarts SOGo when the primary changes. (A
    restart of this host's PostgreSQL under Patroni restarts SOGo too: patroni.reconnect.)"""
    script = ctx.op(config_file, name="Let a new primary restart SOGo", dest=RECONNECT_SCRIPT,
                    mode="755", content=render("sogo/reconnect.sh.j2", unit=f"{RECONNECT}.service"))
    unit = ctx.op(config_file, name=f"Write {RECONNECT}.service", dest=RECONNECT_UNIT,
                  content=render("sogo/reconnect.service.j2", endpoint=etcd.ENDPOINT,
                                 key=f"{cluster.NAMESPACE}{cluster.SCOPE}/leader",
                                 script=RECONNECT_SCRIPT))
    ctx.op(systemd.daemon_reload, name="Reload systemd units (SOGo's reconnect)",
           _if=ctx.changed(unit))
    ctx.service(f"{RECONNECT}.service", restart_when=(unit, script))


def nginx_values(ctx: HostContext) -> dict[str, object]:
    """What the nginx site needs to proxy SOGo and serve its static files."""
    return dict(sogo_port=PORT, sogo_path=URL_PATH,
                sogo_resources=f"{platform(ctx).gnustep_lib}/SOGo/WebServerResources/",
                activesync=ctx.plan.activesync)


LOGIN_MARK = "SOGo.MainUI"  # the login page's Angular module: the page rendered, not an error


_CHECK_READ = ("systemctl is-active sogo.service memcached.service | tr '\\n' ' '; echo; "
               + https_count(f"{URL_PATH}/", LOGIN_MARK))


def checks(engine: Engine) -> list[CheckResult]:
    """SOGo and memcached run, and the login page renders through nginx."""
    command = _CHECK_READ
    results = []
    for name, text in engine.facts(Command, command=command).items():
        lines = (text or "").splitlines()
        states = (lines[0].split() if lines else []) + ["unknown", "unknown"]
        for unit, state in zip(("sogo", "memcached"), states):
            results.append(CheckResult(name, f"{unit} running",
                                       "ok" if state == "active" else "fail", state,
                                       f"see `journalctl -u {unit}` and /var/log/sogo/sogo.log"))
        count = lines[-1].strip() if len(lines) > 1 else "0"
        ok = count not in ("", "0")
        url = f"https://{engine.config.host_fqdn(engine.settings[name])}{URL_PATH}/"
        results.append(CheckResult(name, "webmail login page", "ok" if ok else "fail",
                                   f"SOGo at {url}" + ("" if ok else " shows no login page"),
                                   "see /var/log/sogo/sogo.log and the nginx error log"))
    return results


SERVICE = Service("sogo", applies=lambda plan: plan.webmail == "sogo", packages=packages,
                  deploy=deploy, retire=retire, checks=checks, snapshot=SNAPSHOT,
                  reads=(_CHECK_READ,),
                  managed_paths=("/etc/sogo", DROP_IN_DIR, RECONNECT_UNIT, RECONNECT_SCRIPT),
                  units=(Unit("sogo", checked=False), Unit("memcached", checked=False),
                         Unit(f"{RECONNECT}.service", checked=False)))
