"""SSH only over the VPN (`ssh.vpn_only`): sshd listens only on the host's WireGuard address.

This is the change that can lock the operator out, so it is made in steps, after the firewall
(which must already let the tunnel's UDP port in): a *new* SSH connection as the admin user
over the VPN must work before sshd is told to listen only there; after the reload it must
work again, or the listen setting is taken back. A failed VPN path leaves SSH open where it
was and fails the deploy with the reason. Only then does the firewall's SSH rule move onto
the tunnel's interface.

The firewall asks this module whether SSH is on the VPN (`ssh_on_vpn_now`, `vpn_only`);
the ports sshd listens on come from sshd.py, the tunnel and the login over it from
wireguard.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import files, python, systemd

from mailfleet.config import Config, HostSettings
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.runner import explain_failure
from mailfleet.engine.snapshot import FileState
from mailfleet.errors import DeployError
from mailfleet.services import sshd
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service
from mailfleet.services.wireguard import INTERFACE, UNIT, vpn_login_works
from mailfleet.templating import render

LISTEN_DROPIN = "/etc/ssh/sshd_config.d/01-mailfleet-vpn.conf"
ORDER_DROPIN = "/etc/systemd/system/ssh.service.d/mailfleet-vpn.conf"


def vpn_only(config: Config) -> bool:
    return config.features.wireguard and config.ssh.vpn_only


def ssh_on_vpn_now(ctx: HostContext) -> bool:
    """sshd already listens only on the VPN (as this config wants it)."""
    wanted = render("wireguard/sshd-listen.conf.j2", address=ctx.config.vpn_address(ctx.settings))
    return vpn_only(ctx.config) and ctx.file_matches(LISTEN_DROPIN, wanted)


def learn_host_keys(settings: HostSettings, vpn: str) -> None:
    """The host's SSH keys under its VPN address in known_hosts, read over the connection
    that is trusted already: the new path is the same host."""
    ok, output = host.run_shell_command("cat /etc/ssh/ssh_host_*_key.pub", _sudo=settings.sudo)
    if not ok:
        return
    name = vpn if settings.ssh_port == 22 else f"[{vpn}]:{settings.ssh_port}"
    path = Path(settings.ssh_known_hosts or "~/.ssh/known_hosts").expanduser()
    lines = path.read_text().splitlines() if path.exists() else []
    wanted = [f"{name} {' '.join(line.split()[:2])}" for line in output.stdout.splitlines()
              if len(line.split()) >= 2]
    # keys an earlier host at this VPN address had are replaced (a rebuilt host)
    kept = [line for line in lines if line.split(" ", 1)[0] != name]
    if wanted and kept + wanted != lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{line}\n" for line in kept + wanted))


def _try_vpn_path(settings: HostSettings, vpn: str, admin: str, result: dict[str, bool]) -> None:
    learn_host_keys(settings, vpn)
    ok, why = vpn_login_works(settings, vpn, admin)
    result["ok"] = ok
    if not ok:
        explain_failure(settings.name, (
            f"SSH over the VPN to {admin}@{vpn} does not work ({why}), so SSH was not "
            f"restricted to the VPN and stays open at {settings.address}. Bring up this "
            "machine's side of the tunnel (`mailfleet vpn client NAME`) and check its "
            "[[vpn.peers]] entry and the firewall on the way."))


def _verify_or_reopen(settings: HostSettings, vpn: str, admin: str) -> None:
    ok, why = vpn_login_works(settings, vpn, admin)
    if ok:
        return
    host.run_shell_command(f"rm -f {LISTEN_DROPIN} && systemctl reload ssh", _sudo=settings.sudo)
    message = (f"With sshd on the VPN only, {admin}@{vpn} could not log in ({why}); sshd "
               f"listens on every address again.")
    explain_failure(settings.name, message)
    raise DeployError(message)


@operation()
def ssh_rule_on_vpn(port: int):
    """The firewall's SSH rule: only on the VPN interface, no longer from everywhere."""
    yield (f"ufw allow in on {INTERFACE} to any port {port} proto tcp comment 'mailfleet: ssh "
           f"over the VPN' && {{ ufw --force delete allow {port}/tcp || true; }}")


def restrict_ssh(ctx: HostContext) -> None:
    """After the firewall step: sshd only on the VPN address, ordered after the tunnel."""
    if not vpn_only(ctx.config):
        _reopen_ssh(ctx)
        return
    vpn = ctx.config.vpn_address(ctx.settings)
    admin = ctx.config.admin.user
    listen = render("wireguard/sshd-listen.conf.j2", address=vpn)
    gate: dict = {}
    switching = not ssh_on_vpn_now(ctx)
    if switching and not ctx.check:
        result: dict[str, bool] = {}
        ctx.op(python.call, name="Reach SSH over the VPN before closing it elsewhere",
               function=_try_vpn_path, settings=ctx.settings, vpn=vpn, admin=admin,
               result=result)
        gate = {"_if": lambda: result.get("ok", False)}
    order = ctx.op(config_file, name=f"Start sshd after the VPN ({ORDER_DROPIN})",
                   dest=ORDER_DROPIN, content=render("wireguard/ssh-after-vpn.conf.j2", unit=UNIT),
                   **gate)
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(order))
    written = ctx.op(config_file, name=f"Let sshd listen only on the VPN ({LISTEN_DROPIN})",
                     dest=LISTEN_DROPIN, content=listen, validate=sshd.VALIDATE, **gate)
    ctx.op(systemd.service, name="Reload ssh", service="ssh", reloaded=True,
           _if=ctx.changed(written))
    if gate:
        ctx.op(python.call, name="Log in over the VPN with sshd on the VPN only (else reopened)",
               function=_verify_or_reopen, settings=ctx.settings, vpn=vpn, admin=admin, **gate)
    if switching and ctx.config.features.firewall:  # (--check shows it too)
        for port in sorted(sshd.ports(ctx)):
            ctx.op(ssh_rule_on_vpn, name=f"Admit SSH ({port}) only over the VPN in the firewall",
                   port=port, **gate)


def _reopen_ssh(ctx: HostContext) -> None:
    """vpn_only turned off (or never on): no listen or ordering drop-in of ours."""
    present = [p for p in (LISTEN_DROPIN, ORDER_DROPIN) if isinstance(ctx.file_state(p), FileState)]
    if not present:
        return
    removed = ctx.op(files.file, name="Let sshd listen on every address again",
                     path=LISTEN_DROPIN, present=False)
    order = ctx.op(files.file, name="Start sshd without waiting for the VPN",
                   path=ORDER_DROPIN, present=False)
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(order))
    ctx.op(systemd.service, name="Reload ssh", service="ssh", reloaded=True,
           _if=ctx.changed(removed))


# what sshd would listen on for a connection from the Internet (as sshd.checks asks it)
_LISTEN = (f"sshd -T -C {shlex.quote(f'user=root,host={sshd.FROM},addr={sshd.FROM}')} 2>&1 | "
           "grep -i '^listenaddress '; true")


def parse_listen(text: str) -> list[str]:
    """The `listenaddress` values of `sshd -T` (`ADDRESS:PORT` each)."""
    return [line.split(None, 1)[1].strip() for line in text.splitlines()
            if line.lower().startswith("listenaddress ") and len(line.split()) > 1]


def checks(engine: Engine) -> list[CheckResult]:
    if not vpn_only(engine.config):
        return []
    results = []
    for name, text in engine.facts(Command, command=_LISTEN).items():
        listen = " ".join(parse_listen(text or ""))
        vpn = engine.config.vpn_address(engine.settings[name])
        on_vpn = bool(listen) and all(a.rpartition(":")[0] == vpn for a in listen.split())
        results.append(CheckResult(name, "SSH only over the VPN", "ok" if on_vpn else "fail",
                                   f"sshd listens on {listen or 'nothing'}", "run `mailfleet deploy`"))
    return results


# applies everywhere: with ssh.vpn_only off it puts SSH back on every address
SERVICE = Service("ssh over the VPN", deploy=restrict_ssh, checks=checks,
                  reads=lambda engine, plan: [_LISTEN] if vpn_only(engine.config) else [],
                  managed_paths=("/etc/systemd/system/ssh.service.d",),
                  facts=lambda ctx: [(File, {"path": LISTEN_DROPIN}), (File, {"path": ORDER_DROPIN})])
