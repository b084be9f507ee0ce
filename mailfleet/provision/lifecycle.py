"""A host's server from creation to deletion: `mailfleet provision` and `mailfleet destroy`.

The order matters for money and for trust. A server is looked up by its label before one is
made, so running `provision` twice (or after a crash) never pays for two. Its SSH host key is
made here and its public half written into known_hosts, with the server's address, into
mailfleet.toml as soon as the provider names the address, before the first connection; that
connection checks the key strictly, and a server answering with another key is refused.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from mailfleet.config import Config, HostSettings, edit, parse, read_text, save
from mailfleet.engine.tunnel import ssh_base
from mailfleet.errors import ConfigError
from mailfleet.provision.base import Offer, Provider, ProviderError, Server, ServerSpec, wait_running
from mailfleet.provision.userdata import (HostKey, checked_public_key, known_host, known_hosts,
                                          user_data)

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
    settings = host.provider
    assert settings is not None
    server = provider.find(host.name)
    created = server is None
    if server is None:
        check_offer(provider, provider.offer(), spec_for(config, host), settings.provider)
        key = HostKey.generate()
        data = user_data(host.name, config.host_fqdn(host), deploy_key(host), key)
        log(f"{host.name}: creating the server at {provider.name}")
        server = provider.create(spec_for(config, host, data))
        # the moment it exists it is named in the config, with its host key: a run cut short
        # after this point is finished by the next one, never paid for twice
        host = _update(path, host.name, {"server_id": server.id, "host_key": key.public},
                       within="provider")
    else:
        log(f"{host.name}: the server exists already at {provider.name} ({server.id})")
        if server.id != settings.server_id or not settings.host_key:
            raise ProviderError(
                f"{provider.name} has a server labelled for {host.name} ({server.id}) that "
                f"{path} did not make (it records "
                f"{settings.server_id or 'none'}): mailfleet does not know its host key, and "
                "neither logs in to it nor deletes it.",
                hint="Delete it in the provider's console if it is yours, or give this host "
                     "another name.")
    assert host.provider is not None and host.provider.host_key is not None
    try:
        server = wait_running(provider, server)
        host = record(path, host, server, host.provider.host_key)
    except ProviderError as err:
        raise ProviderError(f"{err.message.rstrip('.')}; server {server.id} exists at "
                            f"{provider.name}.", hint=f"`mailfleet provision {host.name}` "
                            "again finishes it; `mailfleet destroy` removes it.") from None
    if server.ipv4 or server.ipv6:
        provider.set_reverse_dns(server, config.host_fqdn(host))
    state = first_login(host, server)
    if state not in ("done", "disabled"):
        log(f"{host.name}: cloud-init reports {state!r} (see `cloud-init status --long` on it); "
            "the host key and root's key were checked all the same")
    return Outcome(host.name, server, created, time.monotonic() - started, state)


def _update(path: Path, name: str, values: dict, within: str | None = None) -> HostSettings:
    """Set (or, for None, remove) keys of host `name`'s entry (or of its sub-table)."""
    def change(doc: tomlkit.TOMLDocument) -> None:
        table = next(h for h in doc["hosts"] if h.get("name") == name)
        if within:
            table = table[within]
        for key, value in values.items():
            if value is not None:
                table[key] = value
            elif key in table:
                del table[key]

    saved = edit(path, change)
    return next(h for h in saved.hosts if h.name == name)


def known_hosts_file(host: HostSettings) -> Path:
    """Where the host's SSH key is kept: its ssh_known_hosts, else mailfleet's own file."""
    return Path(host.ssh_known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()


def record(path: Path, host: HostSettings, server: Server, public_key: str) -> HostSettings:
    """The server's address (and host key, in known_hosts), saved before anything connects."""
    address = server.login_address
    if not address:
        raise ProviderError(f"The provider named no address for {host.name} ({server.id}).")
    write_known_hosts(known_hosts_file(host),
                      address, server.ssh_port, public_key)
    return _update(path, host.name, {
        "address": address,
        "ssh_port": server.ssh_port if server.ssh_port != 22 else None,
        "ipv4": server.ipv4 if server.ipv4 != address else None,
        "ipv6": server.ipv6 if server.ipv6 != address else None,
        "ssh_known_hosts": host.ssh_known_hosts or DEFAULT_KNOWN_HOSTS})


def write_known_hosts(path: Path, address: str, port: int, public_key: str | None) -> None:
    """Replace every key known for address:port (hashed lines too: `ssh-keygen -R`) by
    `public_key` (none: only remove them). Locked: parallel runs each keep their line."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            subprocess.run(["ssh-keygen", "-R", known_host(address, port), "-f", str(path)],
                           capture_output=True, stdin=subprocess.DEVNULL, check=False)
            path.with_name(path.name + ".old").unlink(missing_ok=True)
        text = path.read_text() if path.exists() else ""
        if public_key:
            text += known_hosts([address], port, public_key)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)


def first_login(host: HostSettings, server: Server) -> str:
    """Log in as root with the host key checked strictly (whatever ssh's own config says),
    and wait for cloud-init to finish; cloud-init's own status word."""
    known = known_hosts_file(host)
    base = ssh_base(host)
    command = [base[0], "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
               *base[1:], host.address, "cloud-init status --wait >/dev/null 2>&1; "
               "cloud-init status 2>/dev/null | sed -n 's/^status: //p'"]
    started = time.monotonic()
    while True:
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=LOGIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise ProviderError(f"{host.name} ({server.id}): the first login did not finish "
                                f"within {LOGIN_TIMEOUT:.0f} s (cloud-init still running?).")
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


def destroy(path: Path, config: Config, host: HostSettings, provider: Provider,
            log=print) -> Server | None:
    """Delete the server this config made for `host` (its recorded id, never another one
    that carries the label), then its entry and known_hosts lines. The shortened config is
    checked first: nothing is deleted when it would not be accepted."""
    text = without_host(path, config, host.name)
    server = provider.find(host.name)
    recorded = host.provider.server_id if host.provider else None
    if server is not None:
        if server.id != recorded:
            raise ProviderError(
                f"{provider.name} has a server labelled for {host.name} ({server.id}), but "
                f"{path} records {recorded or 'none'}: it was not made by this config; "
                "nothing was deleted.")
        log(f"{host.name}: deleting server {server.id} at {provider.name}")
        provider.destroy(server)
    if host.address:
        write_known_hosts(known_hosts_file(host),
                          host.address, host.ssh_port, None)
    save(path, text)
    return server


def without_host(path: Path, config: Config, name: str) -> str:
    """The config's text without host `name`, checked as a config. The VPN addresses of the
    hosts after it stay theirs (they are numbered by place in [[hosts]] when not given)."""
    doc = tomlkit.parse(read_text(path))
    hosts = doc["hosts"]
    index = next(i for i, h in enumerate(hosts) if h.get("name") == name)
    if config.features.wireguard:
        for later in config.hosts[index + 1:]:
            table = next(h for h in hosts if h.get("name") == later.name)
            table["vpn_address"] = config.vpn_address(later)
    del hosts[index]
    if not len(hosts):
        del doc["hosts"]
    text = tomlkit.dumps(doc)
    try:
        parse(text, path)
    except ConfigError as err:
        raise ConfigError(f"Removing host {name} would leave a config mailfleet refuses: "
                          f"{err.message}", hint="Change that first; nothing was deleted.") from None
    return text
