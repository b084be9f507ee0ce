"""WireGuard: the private network of the mail hosts and their operators.

Each host makes its own key pair (the private key never leaves it); the hosts' public keys
are read before any operation is added (`prepare`), because every host's config names all
the others. The kernel module is used where the kernel has one; wg-quick falls back to
wireguard-go by itself where it has not (containers, the lab).

When mailfleet already reaches the host over the VPN, a change of the tunnel's config is armed
with a rollback timer on the host, cancelled only once a new SSH connection over the new
tunnel works. SSH only over the VPN (`ssh.vpn_only`) is services/ssh_vpn.py; the keys kept on
the operator's machine are services/vpn_keys.py.
"""

from __future__ import annotations

import ipaddress
import time

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command
from pyinfra.operations import python, systemd

from mailfleet.config import WG_KEY_RE, Config, HostSettings
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.runner import explain_failure
from mailfleet.engine.snapshot import FileState
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import ConfigError, DeployError
from mailfleet.services import system, vpn_keys
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service, Unit
from mailfleet.services.sshd import admin_login_works
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

def prepare(engine: Engine, all_settings: list[HostSettings], make: set[str] = frozenset()) -> None:
    """Every host's public key, made on the host when missing (not in check mode), for the
    peers sections of the others; hosts outside this engine are asked over SSH, and those
    of this deploy's later phases (`make`) get theirs made now, so that the hosts of an
    earlier phase already list them."""
    config = engine.config
    if not config.features.wireguard:
        return
    command = f"{PUBLIC_KEY}; true" if engine.check else MAKE_KEY
    keys = {name: _public_key(text) for name, text in engine.facts(Command, command=command).items()}
    for settings in all_settings:
        if settings.name not in keys:
            making = settings.name in make and not engine.check
            keys[settings.name] = _public_key(ssh_run(settings, MAKE_KEY if making
                                                      else f"{PUBLIC_KEY}; true"))
    for name, key in keys.items():
        if key:
            vpn_keys.remember_host_key(config, config.host_fqdn(_by_name(config, name)), key)
    engine.shared["wireguard_keys"] = keys


def _public_key(text: str | None) -> str | None:
    """A host's answer to PUBLIC_KEY if it is a WireGuard key, else None: it goes into the
    other hosts' wg0.conf, whose PostUp lines wg-quick runs as root, so a line break or
    anything but base64 from one host must not reach them."""
    text = (text or "").strip()
    return text if WG_KEY_RE.fullmatch(text) else None


def _by_name(config: Config, name: str) -> HostSettings:
    return next(h for h in config.hosts if h.name == name)


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
        public = vpn_keys.peer_keys(config, peer, create=True)[1]
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


# -- a login over the tunnel -------------------------------------------------------------------

def vpn_login_works(settings: HostSettings, vpn: str, admin: str, attempts: int = 3,
                    command: str = "sudo -n true") -> tuple[bool, str]:
    """A brand-new SSH connection as the admin user to the host's VPN address."""
    over_vpn = settings.model_copy(update={"address": vpn})
    why = ""
    # every failure is asked again here, not only an sshd not yet listening: the confirming
    # command itself fails (exit 1) until the host's apply timer has fired
    for attempt in range(attempts):
        ok, why = admin_login_works(over_vpn, admin, command, attempts=1)
        if ok:
            return True, ""
        time.sleep(1 + attempt)
    return False, why


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


_KEY_READ = f"{PUBLIC_KEY}; true"


def checks(engine: Engine) -> list[CheckResult]:
    config = engine.config
    results = []
    fix = "run `mailfleet deploy`, then `journalctl -u " + UNIT + "` on the host"
    names = {v.name: v for v in config.hosts}
    keys = {name: (key or "").strip() for name, key in
            engine.facts(Command, command=_KEY_READ).items()}
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
            key = keys.get(other.name) or vpn_keys.known_host_key(config, config.host_fqdn(other))
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
                  reads=(_KEY_READ, _STATUS),
                  units=(Unit(UNIT, checked=False),),
                  managed_paths=("/etc/wireguard", "/etc/systemd/system/wg-quick@wg0.service.d"))
