"""WireGuard: the private network of the mail hosts and their operators, and SSH only over it.

Each host makes its own key pair (the private key never leaves it); the hosts' public keys
are read before any operation is added (`prepare`), because every host's config names all
the others. The kernel module is used where the kernel has one; wg-quick falls back to
wireguard-go by itself where it has not (containers, the lab).

`ssh.vpn_only` is the change that can lock the operator out, so it is made in steps, after
the firewall (which must already let the tunnel's UDP port in): a *new* SSH connection as the
admin user over the VPN must work before sshd is told to listen only there; after the reload
it must work again, or the listen setting is taken back. A failed VPN path leaves SSH open
where it was and fails the deploy with the reason. When mailfleet already reaches the host
over the VPN, a change of the tunnel's config is armed with a rollback timer on the host,
cancelled only once a new SSH connection over the new tunnel works.
"""

from __future__ import annotations

import base64
import ipaddress
import time
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command
from pyinfra.operations import files, python, systemd

from mailfleet.config import WG_KEY_RE, Config, HostSettings, VpnPeer
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.runner import explain_failure
from mailfleet.engine.snapshot import FileState
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import ConfigError, DeployError
from mailfleet.services import system
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service, Unit
from mailfleet.templating import render

PACKAGES = ["wireguard-tools", "wireguard-go"]
INTERFACE = "wg0"
UNIT = f"wg-quick@{INTERFACE}"
DIR = "/etc/wireguard"
KEY = f"{DIR}/{INTERFACE}.key"
CONF = f"{DIR}/{INTERFACE}.conf"
PREVIOUS = CONF + ".mailfleet-prev"
ROLLBACK_UNIT = "mailfleet-vpn-rollback"
ROLLBACK_SECONDS = 60
APPLY_UNIT = "mailfleet-vpn-apply"
APPLY_DELAY = 3
APPLY = "/usr/local/lib/mailfleet/wg-apply"
RELOAD_DROPIN = f"/etc/systemd/system/{UNIT}.service.d/mailfleet.conf"
LISTEN_DROPIN = "/etc/ssh/sshd_config.d/01-mailfleet-vpn.conf"
ORDER_DROPIN = "/etc/systemd/system/ssh.service.d/mailfleet-vpn.conf"
KEEPALIVE = 25
HANDSHAKE_MAX_AGE = 240
# the tunnel's live IPv4 addresses: is this deploy's own connection running over it?
SNAPSHOT = {"wireguard": f"ip -o -4 address show dev {INTERFACE} | awk '{{print $4}}'"}

# The public key from the private one with openssl (in every Debian), not `wg pubkey`: the
# keys are needed before wireguard-tools is installed. The bytes are the fixed PKCS#8 header
# of an X25519 key; wg genkey's output is the raw 32 bytes in base64.
_X25519_DER = r"\060\056\002\001\000\060\005\006\003\053\145\156\004\042\004\040"
PUBLIC_KEY = (f"[ -s {KEY} ] && {{ printf '{_X25519_DER}'; base64 -d < {KEY}; }} | "
              "openssl pkey -inform DER -pubout -outform DER | tail -c 32 | base64")
MAKE_KEY = (f"[ -s {KEY} ] || ( umask 077 && mkdir -p {DIR} && "
            f"head -c 32 /dev/urandom | base64 > {KEY}.new && mv {KEY}.new {KEY} ); {PUBLIC_KEY}")


# -- keys --------------------------------------------------------------------------------

def prepare(engine: Engine, all_settings: list[HostSettings]) -> None:
    """Every host's public key, made on the host when missing (not in check mode), for the
    peers sections of the others; hosts outside --limit are asked over SSH."""
    config = engine.config
    if not config.features.wireguard:
        return
    command = f"{PUBLIC_KEY}; true" if engine.check else MAKE_KEY
    keys = {name: _public_key(text) for name, text in engine.facts(Command, command=command).items()}
    for settings in all_settings:
        if settings.name not in keys:
            keys[settings.name] = _public_key(ssh_run(settings, f"{PUBLIC_KEY}; true"))
    for name, key in keys.items():
        if key:
            remember_host_key(config, config.host_fqdn(_by_name(config, name)), key)
    engine.shared["wireguard_keys"] = keys


def _public_key(text: str | None) -> str | None:
    """A host's answer to PUBLIC_KEY if it is a WireGuard key, else None: it goes into the
    other hosts' wg0.conf, whose PostUp lines wg-quick runs as root, so a line break or
    anything but base64 from one host must not reach them."""
    text = (text or "").strip()
    return text if WG_KEY_RE.fullmatch(text) else None


def _by_name(config: Config, name: str) -> HostSettings:
    return next(h for h in config.hosts if h.name == name)


def keys_dir(config: Config) -> Path:
    return Path(config.vpn.keys_dir).expanduser()


def remember_host_key(config: Config, fqdn: str, key: str) -> None:
    """Kept on this machine so `vpn client` can write a config while the VPN is down."""
    path = keys_dir(config) / "hosts" / f"{fqdn}.pub"
    if not path.exists() or path.read_text().strip() != key:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key + "\n")


def known_host_key(config: Config, fqdn: str) -> str | None:
    path = keys_dir(config) / "hosts" / f"{fqdn}.pub"
    return path.read_text().strip() if path.exists() else None


def generate_private_key() -> str:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def public_key_of(private_key: str) -> str:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def peer_keys(config: Config, peer: VpnPeer, create: bool) -> tuple[str | None, str | None]:
    """(private key or None, public key) of a peer: its public_key from the config, else the
    key pair mailfleet keeps for it on this machine (made when `create`)."""
    path = keys_dir(config) / f"{peer.name}.key"
    private = None
    if path.exists():
        private = path.read_text().strip()
    elif create and peer.public_key is None:
        private = generate_private_key()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
        path.write_text(private + "\n")
    try:
        derived = public_key_of(private) if private else None
    except ValueError:
        raise ConfigError(f"{path} does not hold a WireGuard private key.") from None
    if peer.public_key:
        return (private if derived == peer.public_key else None), peer.public_key
    return private, derived


# -- the tunnel on each host ----------------------------------------------------------------

def endpoint(config: Config, settings: HostSettings) -> str:
    where = (settings.vpn_endpoint or settings.public_address(4) or settings.public_address(6)
             or settings.address)
    if ":" in where:
        where = f"[{where}]"
    return f"{where}:{config.vpn.port}"


def peers(config: Config, me: HostSettings, keys: dict[str, str | None]) -> list[dict]:
    """The other hosts (with endpoints: hosts connect to each other) and the peers."""
    found = []
    for other in config.hosts:
        if other.name != me.name and keys.get(other.name):
            found.append({"name": other.name, "host": True, "public_key": keys[other.name],
                          "address": config.vpn_address(other), "endpoint": endpoint(config, other)})
    for peer in config.vpn.peers:
        public = peer_keys(config, peer, create=True)[1]
        found.append({"name": peer.name, "host": False, "public_key": public,
                      "address": peer.address, "endpoint": None})
    return found


def interface_config(config: Config, settings: HostSettings, keys: dict[str, str | None]) -> str:
    return render("wireguard/wg0.conf.j2", key_file=KEY, address=config.vpn_address(settings),
                  prefixlen=ipaddress.ip_network(config.vpn.network).prefixlen,
                  port=config.vpn.port, peers=peers(config, settings, keys))


def reached_over_vpn(ctx: HostContext) -> bool:
    return ctx.config.ssh.vpn_only and ctx.settings.address == ctx.config.vpn_address(ctx.settings)


def live_addresses(ctx: HostContext) -> set[str]:
    """The addresses the host's wg0 has now (without prefix length)."""
    return {line.split("/")[0] for line in ctx.snapshot("wireguard").split()}


@operation()
def remove():
    """features.wireguard switched off: the tunnel, its config and mailfleet's helpers go,
    and the packages. The host's key stays in /etc/wireguard, so turned on again the host
    has the same public key and the operators' client configs still fit."""
    yield (f"systemctl disable --now {UNIT} 2>/dev/null; "
           f"rm -rf {CONF} {PREVIOUS} {APPLY} {RELOAD_DROPIN.rsplit('/', 1)[0]} && "
           f"systemctl daemon-reload && {system.purged(PACKAGES)}")


def _take_down(ctx: HostContext) -> None:
    """Only a tunnel mailfleet set up (its reload drop-in is there; a wg0 made by hand is
    left alone), and never the one this very deploy runs over: that would cut it halfway."""
    if not isinstance(ctx.file_state(RELOAD_DROPIN), FileState):
        return
    if ctx.settings.address in live_addresses(ctx):
        raise ConfigError(
            f"features.wireguard is off, but mailfleet reaches "
            f"{ctx.settings.name} over the VPN ({ctx.settings.address}), which turning it off "
            "would cut: set ssh.vpn_only = false and deploy, then give the host's public "
            "address as its `address` and turn WireGuard off.")
    ctx.op(remove, name="Take the VPN down and remove WireGuard (features.wireguard = false)")


def deploy(ctx: HostContext) -> None:
    keys = ctx.shared.get("wireguard_keys", {})
    if not keys.get(ctx.settings.name) and not ctx.check:
        raise DeployError(f"{ctx.settings.name}: the WireGuard key could not be made "
                          f"(is openssl installed?).")
    content = interface_config(ctx.config, ctx.settings, keys)
    changing = not ctx.file_matches(CONF, content)
    guarded = changing and reached_over_vpn(ctx) and not ctx.check
    if guarded:
        ctx.op(arm_rollback, name=f"Arm a rollback of the VPN settings (in {ROLLBACK_SECONDS} s "
                                  "unless confirmed)")
    ctx.op(config_file, name=f"Install {APPLY}", dest=APPLY, mode="755",
           content=render("wireguard/wg-apply.sh.j2", conf=CONF, key=KEY, interface=INTERFACE,
                          unit=UNIT))
    dropin = ctx.op(config_file, name=f"Reload {UNIT} with {APPLY}", dest=RELOAD_DROPIN,
                    content=render("wireguard/reload.conf.j2", script=APPLY))
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(dropin))
    written = ctx.op(config_file, name=f"Write the VPN settings {CONF}", dest=CONF,
                     content=content, mode="600")
    if not guarded:
        ctx.service(UNIT, reload_when=(written,))
        return
    # The change may cut the connection this deploy runs over: it is applied detached, a
    # few seconds later, so this command's answer still gets back; then only a new login
    # over the new tunnel cancels the rollback. On failure nothing more is sent over the
    # old connection (it may be dead): the host's timer puts the old settings back.
    ctx.service(UNIT)
    ctx.op(apply_detached, name=f"Apply the VPN settings (in {APPLY_DELAY} s, detached)",
           _if=ctx.changed(written))
    ctx.op(python.call, name="Reach SSH over the changed VPN (else the host rolls it back)",
           function=_confirm, settings=ctx.settings, vpn=ctx.config.vpn_address(ctx.settings),
           admin=ctx.config.admin.user)


def _detached(unit: str, seconds: int, command: str) -> str:
    """A command systemd runs by itself after `seconds` (a transient timer named `unit`)."""
    # (a timer's default accuracy is a minute: an apply due in 3 s could fire after 60)
    return (f"systemctl stop {unit}.timer 2>/dev/null; systemctl reset-failed {unit}.service "
            f"2>/dev/null; systemd-run --quiet --unit={unit} --on-active={seconds} "
            f"--timer-property=AccuracySec=100ms {command}")


@operation()
def arm_rollback():
    """Put the old tunnel config back by itself unless a new SSH login over the new one
    cancels it: the change may cut the very connection that would undo it."""
    yield f"cp -p {CONF} {PREVIOUS}; " + _detached(
        ROLLBACK_UNIT, ROLLBACK_SECONDS, f"/bin/sh -c 'mv -f {PREVIOUS} {CONF} && "
                                         f"systemctl reload {UNIT}'")


@operation()
def apply_detached():
    yield _detached(APPLY_UNIT, APPLY_DELAY, f"systemctl reload {UNIT}")


def _confirm(settings: HostSettings, vpn: str, admin: str) -> None:
    time.sleep(APPLY_DELAY + 2)
    # a login that proves the new settings: only once the apply timer has fired
    ok, why = vpn_login_works(settings, vpn, admin, attempts=4, command=(
        f"sudo -n sh -c '! systemctl is-active --quiet {APPLY_UNIT}.timer'"))
    if ok:
        _, output = host.run_shell_command(
            f"systemctl stop {ROLLBACK_UNIT}.timer; test -e {PREVIOUS} && rm -f {PREVIOUS} && "
            "echo kept; true", _sudo=settings.sudo)
        if "kept" in output.stdout:
            return
        why = f"it came back only after the host's rollback ({ROLLBACK_SECONDS} s)"
    message = (f"SSH over the VPN to {admin}@{vpn} stopped working with the new VPN settings "
               f"({why}): the host puts the previous ones back by itself within "
               f"{ROLLBACK_SECONDS} s of the change. Check the [[vpn.peers]] entry of the "
               "machine you run mailfleet on.")
    explain_failure(settings.name, message)
    raise DeployError(message)


# -- SSH only over the VPN --------------------------------------------------------------------

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


def vpn_login_works(settings: HostSettings, vpn: str, admin: str, attempts: int = 3,
                    command: str = "sudo -n true") -> tuple[bool, str]:
    """A brand-new SSH connection as the admin user to the host's VPN address."""
    from mailfleet.services.sshd import admin_login_works

    over_vpn = settings.model_copy(update={"address": vpn})
    why = ""
    for attempt in range(attempts):
        ok, why = admin_login_works(over_vpn, admin, command)
        if ok:
            return True, ""
        time.sleep(1 + attempt)
    return False, why


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
    from mailfleet.services.sshd import _VALIDATE

    order = ctx.op(config_file, name=f"Start sshd after the VPN ({ORDER_DROPIN})",
                   dest=ORDER_DROPIN, content=render("wireguard/ssh-after-vpn.conf.j2", unit=UNIT),
                   **gate)
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(order))
    written = ctx.op(config_file, name=f"Let sshd listen only on the VPN ({LISTEN_DROPIN})",
                     dest=LISTEN_DROPIN, content=listen, validate=_VALIDATE, **gate)
    ctx.op(systemd.service, name="Reload ssh", service="ssh", reloaded=True,
           _if=ctx.changed(written))
    if gate:
        ctx.op(python.call, name="Log in over the VPN with sshd on the VPN only (else reopened)",
               function=_verify_or_reopen, settings=ctx.settings, vpn=vpn, admin=admin, **gate)
    if switching and ctx.config.features.firewall:  # (--check shows it too)
        from mailfleet.services import firewall

        for port in sorted(firewall.parse(ctx.snapshot("firewall"))[3]):
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


# -- checks -----------------------------------------------------------------------------------

_STATUS = (f"echo \"unit $(systemctl is-active {UNIT})\"; "
           f"echo \"kind $(ip -d link show {INTERFACE} 2>/dev/null | grep -oE 'wireguard|tun' | head -n 1)\"; "
           f"wg show {INTERFACE} dump 2>/dev/null | tail -n +2; echo \"now $(date +%s)\"")


def parse_status(text: str) -> tuple[dict[str, str], dict[str, int]]:
    """({unit, kind, now}, {peer public key: latest handshake, 0 = never})."""
    facts: dict[str, str] = {}
    handshakes: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 5:
            handshakes[parts[0]] = int(parts[4]) if parts[4].isdigit() else 0
        else:
            key, _, value = line.partition(" ")
            facts[key] = value.strip()
    return facts, handshakes


def checks(engine: Engine) -> list[CheckResult]:
    config = engine.config
    results = []
    fix = "run `mailfleet deploy`, then `journalctl -u " + UNIT + "` on the host"
    names = {v.name: v for v in config.hosts}
    keys = {name: (key or "").strip() for name, key in
            engine.facts(Command, command=f"{PUBLIC_KEY}; true").items()}
    for name, text in engine.facts(Command, command=_STATUS).items():
        facts, handshakes = parse_status(text or "")
        if facts.get("unit") != "active" or not facts.get("kind"):
            results.append(CheckResult(name, "VPN", "fail", f"{UNIT} is {facts.get('unit') or 'absent'}",
                                       fix))
            continue
        how = "kernel WireGuard" if facts["kind"] == "wireguard" else "wireguard-go (no kernel module)"
        now = int(facts.get("now") or time.time())
        stale = []
        for other in config.hosts:
            if other.name == name:
                continue
            key = keys.get(other.name) or known_host_key(config, config.host_fqdn(other))
            seen = handshakes.get(key or "", 0)
            # a live session re-handshakes every 2 minutes and expires after 3
            if not seen or now - seen > HANDSHAKE_MAX_AGE:
                stale.append(other.name)
        me = names[name]
        message = f"{INTERFACE} up at {config.vpn_address(me)} ({how}), {len(handshakes)} peers"
        if stale:
            results.append(CheckResult(name, "VPN", "fail", message + "; no handshake with "
                                       + ", ".join(stale) + f" in the last {HANDSHAKE_MAX_AGE} s",
                                       f"check UDP {config.vpn.port} between the hosts"))
        else:
            results.append(CheckResult(name, "VPN", "ok", message))
    return results


SERVICE = Service("wireguard", applies=lambda plan: plan.wireguard, packages=tuple(PACKAGES),
                  deploy=deploy, retire=_take_down, checks=checks, snapshot=SNAPSHOT,
                  units=(Unit(UNIT, checked=False),),
                  managed_paths=("/etc/wireguard", "/etc/systemd/system/wg-quick@wg0.service.d",
                                 "/etc/systemd/system/ssh.service.d"))
# runs after the firewall, which must let the tunnel in first
SSH_OVER_VPN = Service("ssh over the VPN", deploy=restrict_ssh)
