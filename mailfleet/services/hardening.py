"""The rest of a hardened host: kernel and network sysctls, automatic security updates,
time sync, and no Apache (nginx serves the web parts).

In a container (the lab) the kernel.* and fs.* settings belong to the machine's kernel and
time sync to the machine's clock: they are written, and `check` says they are the host's.
"""

from __future__ import annotations

import shlex

from pyinfra.api import operation
from pyinfra.facts.server import Command

from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service
from mailfleet.templating import render

PACKAGES = ["unattended-upgrades", "systemd-timesyncd"]
SYSCTL_FILE = "/etc/sysctl.d/60-mailfleet.conf"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
SYSCTL = {
    # no spoofed sources, no redirects, no source routing
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.secure_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.default.accept_source_route": "0",
    "net.ipv6.conf.all.accept_source_route": "0",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv4.icmp_ignore_bogus_error_responses": "1",
    "net.ipv4.tcp_syncookies": "1",
    # (no log_martians: UFW sets it to 0 whenever it starts, from /etc/ufw/sysctl.conf)
    # kernel pointers and logs only for root; no core dumps of setuid programs
    "kernel.kptr_restrict": "2",
    "kernel.dmesg_restrict": "1",
    "fs.protected_hardlinks": "1",
    "fs.protected_symlinks": "1",
    "fs.suid_dumpable": "0",
}
_LIVE = "for k in " + " ".join(SYSCTL) + "; do printf '%s ' $k; sysctl -n $k 2>/dev/null || echo -; done"
SNAPSHOT = {"apache": "dpkg-query -W -f '${Status}' apache2 2>/dev/null || true"}


@operation()
def apply_sysctl(settings: dict[str, str]):
    """Set each value now; keys the kernel keeps read-only here (containers) are skipped."""
    yield "; ".join(f"sysctl -q -w {shlex.quote(f'{k}={v}')} 2>/dev/null" for k, v in
                    settings.items()) + "; true"


@operation()
def purge_apache():
    yield ("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q apache2 apache2-bin apache2-data "
           "apache2-utils && apt-get autoremove -y -q")


def deploy(ctx: HostContext) -> None:
    if "ok installed" in ctx.snapshot("apache"):  # before nginx wants ports 80 and 443
        ctx.op(purge_apache, name="Remove Apache")
    written = ctx.op(config_file, name=f"Write the kernel settings {SYSCTL_FILE}",
                     dest=SYSCTL_FILE, content=render("hardening/sysctl.conf.j2", settings=SYSCTL))
    ctx.op(apply_sysctl, name="Apply the kernel settings", settings=SYSCTL,
           _if=ctx.changed(written))
    ctx.op(config_file, name="Turn on automatic security updates", dest=AUTO_UPGRADES,
           content=render("hardening/20auto-upgrades.j2"))


_STATUS = (f"{_LIVE}; echo ==; echo \"virt $(systemd-detect-virt --container 2>/dev/null)\"; "
           "echo \"upgrade $(apt-config dump APT::Periodic::Unattended-Upgrade)\"; "
           "echo \"timer $(systemctl is-enabled apt-daily-upgrade.timer 2>/dev/null)\"; "
           "echo \"ntp $(timedatectl show -p NTPSynchronized --value 2>/dev/null)\"")


def parse_status(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """({sysctl key: live value}, {virt|upgrade|timer|ntp: answer}) from `_STATUS`."""
    live_text, _, rest = text.partition("==")
    live = dict(line.split(" ", 1) for line in live_text.splitlines() if " " in line)
    status = {}
    for line in rest.splitlines():
        key, _, value = line.partition(" ")
        status[key] = value.strip()
    return {k: v.strip() for k, v in live.items()}, status


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, text in engine.facts(Command, command=_STATUS).items():
        live, status = parse_status(text or "")
        container = status.get("virt", "none") not in ("", "none")
        where = f"{status.get('virt')} container"
        wrong = [k for k, v in SYSCTL.items() if live.get(k) != v]
        if not wrong:
            results.append(CheckResult(name, "kernel settings", "ok", f"{len(SYSCTL)} hardened"))
        elif container and all(k.startswith(("kernel.", "fs.")) for k in wrong):
            results.append(CheckResult(name, "kernel settings", "warn",
                                       f"network settings hardened; {', '.join(wrong)} belong "
                                       f"to the machine's kernel ({where})"))
        else:
            results.append(CheckResult(name, "kernel settings", "fail",
                                       "not as written: " + ", ".join(wrong),
                                       f"run `mailfleet deploy`, then `sysctl -p {SYSCTL_FILE}`"))
        auto = status.get("upgrade", "").endswith('"1";') and status.get("timer") == "enabled"
        results.append(CheckResult(name, "security updates", "ok" if auto else "fail",
                                   "unattended-upgrades runs daily" if auto else
                                   "unattended-upgrades is not enabled", "run `mailfleet deploy`"))
        if container:
            results.append(CheckResult(name, "time sync", "ok", f"{where}: the machine keeps the time"))
        else:
            synced = status.get("ntp") == "yes"
            results.append(CheckResult(name, "time sync", "ok" if synced else "warn",
                                       "NTP synchronised" if synced else "clock not synchronised yet",
                                       "systemctl status systemd-timesyncd"))
    return results


SERVICE = Service("hardening", packages=tuple(PACKAGES), deploy=deploy, checks=checks,
                  reads=(_STATUS,),
                  snapshot=SNAPSHOT, managed_paths=(SYSCTL_FILE, AUTO_UPGRADES))
