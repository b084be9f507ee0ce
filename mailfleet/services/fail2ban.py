"""fail2ban: addresses that keep failing to log in (SSH, SMTP AUTH, IMAP, ManageSieve, and on
the web tier Roundcube, SOGo and Radicale, by the client's address in their own logs) are
banned for a while. Settings come from [fail2ban] in mailfleet.toml; the operator's own
networks (`ignore`) are never banned.
"""

from __future__ import annotations

from pyinfra.facts.server import Command

from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.lab.network import GATEWAY as LAB_GATEWAY
from mailfleet.services import radicale, sshd
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import HostPlan, Service, Unit
from mailfleet.templating import render

# python3-systemd: the journal backend (a Recommends, and deploy installs no Recommends)
PACKAGES = ["fail2ban", "python3-systemd", "iptables"]
JAIL_FILE = "/etc/fail2ban/jail.d/mailfleet.local"
# mailfleet's own filters (fail2ban ships none for these), under the same names on the host
FILTERS = ("mailfleet-radicale", "mailfleet-dav")
FILTER_DIR = "/etc/fail2ban/filter.d"
MAIL_JAILS = ("postfix", "dovecot")
WEBMAIL_JAILS = {"roundcube": "roundcube-auth", "sogo": "sogo-auth"}


def jails(plan: HostPlan) -> list[str]:
    """The jails a host runs: logins only where that service is deployed."""
    webmail = WEBMAIL_JAILS.get(plan.webmail)
    return ["sshd", *(MAIL_JAILS if plan.mail else []), *([webmail] if webmail else []),
            *(["radicale"] if plan.radicale else []),
            # calendars proxied to Radicale on another web host: nginx's log of failures
            *(["radicale-proxy"] if plan.calendars and not plan.radicale else [])]


def deploy(ctx: HostContext) -> None:
    settings = ctx.config.fail2ban
    ssh_ports = sshd.ports(ctx)
    # written everywhere (inert without a jail), so switching a feature on or off only
    # changes the jail file
    filters = [ctx.op(config_file, name=f"Write the fail2ban filter {name}",
                      dest=f"{FILTER_DIR}/{name}.conf",
                      content=render(f"fail2ban/filter.d/{name}.conf")) for name in FILTERS]
    jail_file = ctx.op(config_file, name=f"Write the fail2ban jails {JAIL_FILE}", dest=JAIL_FILE,
                   content=render("fail2ban/mailfleet.local.j2", bantime=settings.bantime,
                                  findtime=settings.findtime, maxretry=settings.maxretry,
                                  ignore=[*ignored(ctx.config, ctx.settings), *ctx.plan.peers],
                                  jails=jails(ctx.plan), dav_failed_log=radicale.FAILED_LOG,
                                  ssh_ports=",".join(str(p) for p in sorted(ssh_ports))))
    ctx.service("fail2ban", restart_when=(*filters, jail_file))


def ignored(config, settings) -> list[str]:
    """[fail2ban] ignore, and on a lab host the lab's gateway: the operator's machine reaches
    the host from there, and its own test logins must never ban it."""
    extra = [LAB_GATEWAY] if settings.lab and LAB_GATEWAY not in config.fail2ban.ignore else []
    return [*config.fail2ban.ignore, *extra]


def parse_jails(text: str) -> list[str]:
    """The jail names from `fail2ban-client status`."""
    for line in text.splitlines():
        if "Jail list:" in line:
            return [j.strip() for j in line.split(":", 1)[1].split(",") if j.strip()]
    return []


_STATUS = "fail2ban-client status 2>&1"


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, text in engine.facts(Command, command=_STATUS).items():
        running = parse_jails(text or "")
        wanted = jails(engine.plans[name])
        missing = [j for j in wanted if j not in running]
        results.append(CheckResult(
            name, "fail2ban jails", "fail" if missing else "ok",
            f"missing: {', '.join(missing)} (running: {', '.join(running) or 'none'})" if missing
            else f"running: {', '.join(running)}", "run `mailfleet deploy`; see "
            "`journalctl -u fail2ban`"))
    return results


SERVICE = Service("fail2ban", packages=tuple(PACKAGES), deploy=deploy, checks=checks,
                  reads=(_STATUS,),
                  units=(Unit("fail2ban", checked=False),), managed_paths=("/etc/fail2ban/jail.d", FILTER_DIR))
