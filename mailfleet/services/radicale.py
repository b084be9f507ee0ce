"""Radicale: calendars and address books (CalDAV/CardDAV) for the mail accounts, behind
nginx over HTTPS, each user owning their own collections.

Users log in with their mail address and password: a small authentication module (a
template) asks Dovecot over IMAPS, the same on Radicale 3.1 (Debian 12, which has no IMAP
backend) and 3.5 (Debian 13, whose dovecot backend breaks against Dovecot 2.4).

Radicale keeps its collections in files, written by one process, so a cluster with several
web members keeps them on one: the first web member in mailfleet.toml runs Radicale, and the
others' nginx proxies the CalDAV/CardDAV path to it over the VPN (every web host then shows
the same calendars). Its collections are in that host's backups. The other web hosts' nginx
logs failed logins itself for their fail2ban.
"""

from __future__ import annotations

from pyinfra.api import operation
from pyinfra.facts.files import Directory, File
from pyinfra.facts.server import Command
from pyinfra.operations import files, systemd

from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.snapshot import FileState
from mailfleet.services import system, upstream
from mailfleet.services.checks import CheckResult, https_fetch
from mailfleet.services.shape import HostPlan, Port, Service, Unit
from mailfleet.templating import render

PACKAGES = ["radicale"]
PORT = 5232
STORAGE = "/var/lib/radicale/collections"
MODULE_DIR = "/usr/local/lib/mailfleet/radicale"
MODULE = f"{MODULE_DIR}/mailfleet_radicale_auth.py"
DROP_IN_DIR = "/etc/systemd/system/radicale.service.d"
DROP_IN = f"{DROP_IN_DIR}/mailfleet.conf"
# on a web host whose nginx proxies to Radicale on another: its failed logins (fail2ban)
FAILED_LOG = "/var/log/nginx/mailfleet-dav-failed.log"


@operation()
def remove():
    """Radicale switched off: the package, its config and mailfleet's module go; the users'
    calendars and address books in /var/lib/radicale/collections stay."""
    yield (f"{system.purged(PACKAGES)} && rm -rf {MODULE_DIR} {DROP_IN_DIR} && "
           "systemctl daemon-reload")


def retire(ctx: HostContext, why: str = "radicale = false") -> None:
    # only what mailfleet set up (its module is there): a Radicale installed by hand for
    # something else is left alone
    if isinstance(ctx.file_state(MODULE), FileState):
        ctx.op(remove, name=f"Remove Radicale ({why})")


def serves_others(plan: HostPlan) -> bool:
    """Radicale here answers the other web members' nginx too (on the VPN)."""
    return plan.radicale and len(plan.web_cluster) > 1


def deploy(ctx: HostContext) -> None:
    if not ctx.plan.radicale:  # another web member holds the calendars: nginx proxies there
        retire(ctx, f"the calendars are on {ctx.plan.calendar_host}")
        # its failed logins, logged by nginx, for fail2ban (which wants the file to exist)
        ctx.op(files.file, name=f"Create {FAILED_LOG}", path=FAILED_LOG, user="www-data",
               group="adm", mode="640")
        return
    where = upstream.endpoints(ctx)  # logins are checked by the mail host's IMAP
    listen = ["127.0.0.1", *([ctx.plan.private_address] if serves_others(ctx.plan) else [])]
    values = dict(fqdn=ctx.fqdn, mail_host=where.mail_host, ca_file=where.ca_file, port=PORT,
                  storage=STORAGE, path=ctx.config.web.radicale_path, module_dir=MODULE_DIR,
                  listen=listen, after_vpn=serves_others(ctx.plan))
    ctx.op(files.directory, name="Create Radicale's storage", path=STORAGE, user="radicale",
           group="radicale", mode="750")
    written = [
        ctx.op(config_file, name="Write Radicale's authentication module",
               dest=MODULE,
               content=render("radicale/mailfleet_radicale_auth.py.j2", **values)),
        ctx.op(config_file, name="Write /etc/radicale/config", dest="/etc/radicale/config",
               content=render("radicale/config.j2", **values), group="radicale", mode="640"),
    ]
    unit = ctx.op(config_file, name="Let Radicale load mailfleet's module",
                  dest=DROP_IN,
                  content=render("radicale/service-override.conf.j2", **values))
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(unit))
    ctx.service("radicale", restart_when=(*written, unit))


def _check_read(engine: Engine) -> str:
    # a client's first question (PROPFIND) without a login: 401 (a browser's GET is redirected
    # to Radicale's web page instead)
    return https_fetch(f"{engine.config.web.radicale_path}/",
                       '-o /dev/null -w "%{http_code}" -X PROPFIND -H "Depth: 0"')


def checks(engine: Engine) -> list[CheckResult]:
    """Radicale answers through nginx and asks for a login (401), as clients see it (on a
    web member without it: through the proxy to the one with it)."""
    path = engine.config.web.radicale_path
    command = _check_read(engine)
    results = []
    for name, text in engine.facts(Command, command=command).items():
        ok = (text or "").strip() == "401"
        plan = engine.plans[name]
        where = "" if plan.radicale else f" on {plan.calendar_host}"
        results.append(CheckResult(name, "CalDAV/CardDAV (Radicale)", "ok" if ok else "fail",
                                   f"{path}/ " + ("asks for a login" if ok else f"answers {text!r}"),
                                   f"see `journalctl -u radicale`{where} and the nginx error log"))
    return results


def units(plan: HostPlan) -> tuple[Unit, ...]:
    if not plan.radicale:
        return ()
    ports = (Port(PORT, "Radicale for the other web hosts", "web cluster"),) \
        if serves_others(plan) else ()
    return (Unit("radicale", ports, checked=False),)


SERVICE = Service("radicale", applies=lambda plan: plan.calendars,
                  packages=lambda plan: PACKAGES if plan.radicale else (),
                  deploy=deploy, retire=retire, checks=checks,
                  reads=lambda engine, plan: [_check_read(engine)], units=units,
                  managed_paths=("/etc/radicale", MODULE_DIR, DROP_IN_DIR),
                  facts=lambda ctx: [(Directory, {"path": STORAGE})] if ctx.plan.radicale
                  else [(File, {"path": FAILED_LOG})])
