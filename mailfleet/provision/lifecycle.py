"""A host's server from creation to deletion: `mailfleet provision` and `mailfleet destroy`.

The order matters for money and for trust. A server is looked up by its label before one is
made, so running `provision` twice (or after a crash) never pays for two. Its SSH host key is
made here and its public half written into known_hosts, with the server's address, into
mailfleet.toml as soon as the provider names the address, before the first connection; that
connection checks the key strictly, and a server answering with another key is refused.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from mailfleet.config import Config, HostSettings, edit
from mailfleet.engine.tunnel import ssh_base
from mailfleet.errors import ConfigError
from mailfleet.provision.base import Offer, Provider, ProviderError, Server, ServerSpec, wait_running
from mailfleet.provision.userdata import HostKey, checked_public_key, known_hosts, user_data

DEFAULT_KNOWN_HOSTS = "~/.config/mailfleet/known_hosts"
DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
LOGIN_TIMEOUT = 300.0  # from "running" at the provider to cloud-init's sshd answering
REFUSED_FOR = 60.0  # a refused key may be cloud-init not done yet, for this long


@dataclass
class Outcome:
    host: str
    server: Server
    created: bool
    seconds: float
    cloud_init: str = ""

    def as_dict(self) -> dict:
        s = self.server
        return {"host": self.host, "created": self.created, "server": s.id, "status": s.status,
                "ipv4": s.ipv4, "ipv6": s.ipv6, "ssh": f"{s.login_address}:{s.ssh_port}",
                "seconds": round(self.seconds, 1), "cloud_init": self.cloud_init}


def entry(config: Config, name: str, source: Path) -> HostSettings:
    host = next((h for h in config.hosts if h.name == name), None)
    if host is None:
        names = ", ".join(h.name for h in config.hosts) or "none"
        raise ConfigError(f"No host named {name!r} in {source} (hosts: {names}).")
    if host.provider is None:
        raise ConfigError(f"Host {name} in {source} has no [hosts.provider] table: mailfleet "
                          "does not know where to create its server.",
                          hint="Add [hosts.provider] with provider, region, plan and image "
                               "below its [[hosts]] entry (see docs/provisioning.md).")
    return host


def deploy_key(host: HostSettings) -> str:
    """The public half of the key mailfleet logs in with: root's only key on the server."""
    candidates = [host.ssh_key] if host.ssh_key else list(DEFAULT_KEYS)
    for private in candidates:
        public = Path(f"{private}.pub").expanduser()
        if public.is_file():
            try:
                return checked_public_key(public.read_text(encoding="utf-8"), str(public))
            except (ValueError, UnicodeDecodeError) as err:
                raise ConfigError(f"{err}.") from None
    wanted = f"{host.ssh_key}.pub" if host.ssh_key else f"{DEFAULT_KEYS[0]}.pub"
    raise ConfigError(f"Host {host.name}: no SSH public key {wanted} to give the new server.",
                      hint="Set ssh_key for the host, or make a key with "
                           "`ssh-keygen -t ed25519`.")


def spec_for(config: Config, host: HostSettings, data: str = "") -> ServerSpec:
    p = host.provider
    assert p is not None
    return ServerSpec(name=host.name, fqdn=config.host_fqdn(host), region=p.region,
                      plan=p.plan, image=p.image, user_data=data, ipv6=p.ipv6,
                      backups=p.backups, private_network=p.private_network)


def dry_run(config: Config, host: HostSettings, provider: Provider) -> dict:
    """What `provision` would do, from read requests only: the offer and the lookup."""
    offer = provider.offer()
    spec = spec_for(config, host)
    check_offer(provider, offer, spec, host.provider.provider)
    existing = provider.find(host.name)
    return {"host": host.name, "provider": provider.name, "exists": existing is not None,
            "server": existing.id if existing else None,
            "would_create": None if existing else {
                "name": spec.fqdn, "region": f"{spec.region} ({offer.regions[spec.region]})",
                "plan": f"{spec.plan} ({offer.plans[spec.plan]})", "image": spec.image,
                "ipv6": spec.ipv6, "backups": spec.backups}}


def check_offer(provider: Provider, offer: Offer, spec: ServerSpec, key: str) -> None:
    for what, value, known in (("region", spec.region, offer.regions),
                               ("plan", spec.plan, offer.plans),
                               ("image", spec.image, offer.images)):
        if value not in known:
            raise ProviderError(
                f"{provider.name} has no {what} {value!r} (host {spec.name}).",
                hint=f"`mailfleet provision --list {key}` names what it offers.", exit_code=2)


def provision(path: Path, config: Config, host: HostSettings, provider: Provider,
              log=print) -> Outcome:
    started = time.monotonic()
    server = provider.find(host.name)
    created = server is None
    if server is None:
        check_offer(provider, provider.offer(), spec_for(config, host), host.provider.provider)
        key = HostKey.generate()
        data = user_data(host.name, config.host_fqdn(host), deploy_key(host), key)
        log(f"{host.name}: creating the server at {provider.name}")
        server = wait_running(provider, provider.create(spec_for(config, host, data)))
        host = record(path, host, server, key)
        if server.ipv4 or server.ipv6:
            provider.set_reverse_dns(server, config.host_fqdn(host))
    else:
        log(f"{host.name}: the server exists already at {provider.name} ({server.id})")
        server = wait_running(provider, server)
        if not host.address:
            raise ProviderError(
                f"{provider.name} has a server for {host.name} ({server.id}) that mailfleet.toml "
                "has no address for: its host key is unknown, so mailfleet does not log in.",
                hint=f"Remove it with `mailfleet destroy {host.name}` and provision it again.")
    state = first_login(host, server)
    return Outcome(host.name, server, created, time.monotonic() - started, state)


def record(path: Path, host: HostSettings, server: Server, key: HostKey) -> HostSettings:
    """The server's address and host key, saved before anything connects to it."""
    address = server.login_address
    if not address:
        raise ProviderError(f"The provider named no address for {host.name} ({server.id}).")
    known = Path(host.ssh_known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()
    write_known_hosts(known, address, server.ssh_port, key)

    def change(doc: tomlkit.TOMLDocument) -> None:
        table = next(h for h in doc["hosts"] if h.get("name") == host.name)
        table["address"] = address
        if server.ssh_port != 22:
            table["ssh_port"] = server.ssh_port
        for version, value in (("ipv4", server.ipv4), ("ipv6", server.ipv6)):
            if value and value != address:
                table[version] = value
        if not host.ssh_known_hosts:
            table["ssh_known_hosts"] = DEFAULT_KNOWN_HOSTS

    saved = edit(path, change)
    return next(h for h in saved.hosts if h.name == host.name)


def write_known_hosts(path: Path, address: str, port: int, key: HostKey | None) -> None:
    """Replace the lines for address:port by the key's (none: just remove them)."""
    where = address if port == 22 else f"[{address}]:{port}"
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    kept = [line for line in lines if line.split(" ", 1)[0] != where]
    if key is not None:
        kept.append(known_hosts([address], port, key))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text("".join(kept))
    tmp.replace(path)


def first_login(host: HostSettings, server: Server) -> str:
    """Log in as root with the host key checked strictly, and wait for cloud-init to finish;
    cloud-init's own status word."""
    command = [*ssh_base(host), host.address, "cloud-init status --wait >/dev/null 2>&1; "
               "cloud-init status 2>/dev/null | sed -n 's/^status: //p'"]
    started = time.monotonic()
    while True:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=LOGIN_TIMEOUT)
        if done.returncode == 0:
            return done.stdout.strip() or "unknown"
        why = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        waited = time.monotonic() - started
        if "Host key verification failed" in done.stderr or "IDENTIFICATION HAS CHANGED" in done.stderr:
            raise ProviderError(
                f"{host.name} at {host.address} port {host.ssh_port} answers with another SSH "
                "host key than the one mailfleet made for it: refused, nothing was sent to it.",
                hint="If you rebuilt the server yourself, remove it with `mailfleet destroy "
                     f"{host.name}` and provision it again; otherwise someone may be in between.")
        denied = "Permission denied" in why
        if done.returncode != 255 or waited > LOGIN_TIMEOUT or (denied and waited > REFUSED_FOR):
            raise ProviderError(f"{host.name} ({server.id}) is running but mailfleet could not "
                                f"log in as root over SSH: {why}")
        time.sleep(2)


def destroy(path: Path, host: HostSettings, provider: Provider, log=print) -> Server | None:
    """Delete the server labelled for `host`, then (only then) its entry and known_hosts lines."""
    server = provider.find(host.name)
    if server is not None:
        log(f"{host.name}: deleting server {server.id} at {provider.name}")
        provider.destroy(server)
    if host.address:
        write_known_hosts(Path(host.ssh_known_hosts or DEFAULT_KNOWN_HOSTS).expanduser(),
                          host.address, host.ssh_port, None)

    def change(doc: tomlkit.TOMLDocument) -> None:
        hosts = doc["hosts"]
        index = next(i for i, h in enumerate(hosts) if h.get("name") == host.name)
        del hosts[index]
        if not len(hosts):
            del doc["hosts"]

    edit(path, change)
    return server

