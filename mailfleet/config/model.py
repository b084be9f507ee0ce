"""The whole mailfleet.toml: its sections, and the rules that span them.

Every error names the file, the line (where the key can be found) and the key, because
a config that is wrong must be fixed by a person reading one sentence: validators raise
ValueError with the reason, and load.py turns it into that sentence.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator

from mailfleet.config.network import DnsSettings, HostSettings, SshSettings, VpnSettings
from mailfleet.config.settings import (
    AcmeSettings,
    AdminSettings,
    BackupSettings,
    ClusterSettings,
    Fail2banSettings,
    FeatureSettings,
    MailSettings,
    WebSettings,
)
from mailfleet.config.values import Strict
from mailfleet.errors import ConfigError


class Config(Strict):
    mail: MailSettings
    admin: AdminSettings = Field(default_factory=AdminSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    fail2ban: Fail2banSettings = Field(default_factory=Fail2banSettings)
    dns: DnsSettings = Field(default_factory=DnsSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    acme: AcmeSettings = Field(default_factory=AcmeSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    vpn: VpnSettings = Field(default_factory=VpnSettings)
    ssh: SshSettings = Field(default_factory=SshSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    hosts: list[HostSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_hosts(self) -> Config:
        seen: set[str] = set()
        for host in self.hosts:
            if host.name in seen:
                raise ValueError(f"host name {host.name!r} is used twice in [[hosts]]")
            seen.add(host.name)
        return self

    @model_validator(mode="after")
    def _dns01_needs_zones(self) -> Config:
        if self.acme.enabled and self.acme.challenge == "dns-01" and not self.dns.zones:
            raise ValueError('acme.challenge = "dns-01" publishes TXT records with RFC 2136: '
                             "add the zones as [[dns.zones]] (zone, server, tsig_key_file)")
        names = {h.name for h in self.hosts}
        for name in self.acme.tsig_keys:
            if name not in names:
                raise ValueError(f"acme.tsig_keys names host {name!r}, which is not in [[hosts]]")
        if self.acme.enabled and self.acme.challenge == "dns-01":
            for host in self.hosts:
                if "web" in host.roles and host.name not in self.acme.tsig_keys:
                    raise ValueError(
                        f'acme.challenge = "dns-01": acme.tsig_keys has no key for host '
                        f"{host.name!r}; give it a key of its own that may update only its "
                        "_acme-challenge TXT records (the zone's key stays on this machine)")
        return self

    @model_validator(mode="after")
    def _vpn_addresses(self) -> Config:
        if self.ssh.vpn_only and not self.features.wireguard:
            raise ValueError("ssh.vpn_only = true needs features.wireguard = true (SSH would "
                             "listen on a VPN that does not exist)")
        if not self.features.wireguard:
            return self
        network = ipaddress.ip_network(self.vpn.network)
        if len(self.hosts) + len(self.vpn.peers) > network.num_addresses - 2:
            raise ValueError(f"vpn.network {network} has too few addresses for "
                             f"{len(self.hosts)} hosts and {len(self.vpn.peers)} peers")
        owners: dict[str, str] = {}
        names = {h.name for h in self.hosts}
        for who, address in [*((f"host {h.name}", self.vpn_address(h)) for h in self.hosts),
                             *((f"peer {p.name}", p.address) for p in self.vpn.peers)]:
            if ipaddress.ip_address(address) not in network or address in (
                    str(network.network_address), str(network.broadcast_address)):
                raise ValueError(f"the VPN address {address} of {who} is not a host address "
                                 f"in vpn.network {network}")
            if address in owners:
                raise ValueError(f"the VPN address {address} is given to both {owners[address]} "
                                 f"and {who}")
            owners[address] = who
        for peer in self.vpn.peers:
            if peer.name in names:
                raise ValueError(f"vpn peer {peer.name!r} has the name of a host")
        if len({p.name for p in self.vpn.peers}) != len(self.vpn.peers):
            raise ValueError("two [[vpn.peers]] have the same name")
        return self

    @model_validator(mode="after")
    def _cluster_members(self) -> Config:
        if not self.cluster.enabled:
            return self
        members = [h.name for h in self.hosts if "db" in h.roles]
        if members and len(members) not in (3, 5):  # (none: no hosts yet, or a lab taken down)
            reason = ("two members cannot outvote each other: when one is gone the other has no "
                      "quorum and stops accepting writes" if len(members) == 2 else
                      "an odd number of members is what keeps a quorum when one is gone")
            raise ValueError(f"cluster.enabled = true needs 3 or 5 hosts with the db role, and "
                             f"the config has {len(members)}: {reason}")
        if not self.features.wireguard:
            raise ValueError("cluster.enabled = true needs features.wireguard = true (the "
                             "members replicate and elect the primary over the WireGuard "
                             "network only)")
        if not self.features.firewall:
            raise ValueError("cluster.enabled = true needs features.firewall = true (etcd, "
                             "Patroni's API and replication are open to the other members "
                             "alone, on the VPN)")
        return self

    def cluster_members(self) -> list[HostSettings]:
        """The hosts of the replicated accounts database, in config order (none without one)."""
        return [h for h in self.hosts if "db" in h.roles] if self.cluster.enabled else []

    def vpn_address(self, host: HostSettings) -> str:
        """The host's VPN address: its own, else .1, .2, ... by its place in [[hosts]]."""
        if host.vpn_address:
            return host.vpn_address
        network = ipaddress.ip_network(self.vpn.network)
        index = next(i for i, h in enumerate(self.hosts) if h.name == host.name)
        return str(network.network_address + 1 + index)

    def hosts_with(self, role: str) -> list[HostSettings]:
        return [h for h in self.hosts if role in h.roles]

    def lab_without_dns(self) -> str | None:
        """The first lab host's name when every host is a lab host and no resolver is set
        (`mailfleet lab dns` sets one): then no name of this config can be looked up, and
        `check` says what the lab lacks instead of failing on mail that works."""
        if self.hosts and all(h.lab for h in self.hosts) and not self.dns.resolvers:
            return self.hosts[0].name
        return None

    def host_fqdn(self, host: HostSettings) -> str:
        """A host's name: its own fqdn, else the mail hostname (the usual one-host setup)."""
        if host.fqdn:
            return host.fqdn
        if len(self.hosts) <= 1:
            return self.mail.hostname
        return f"{host.name}.{self.mail.domain}"

    def select_hosts(self, limit: list[str] | None, source: Path | None = None) -> list[HostSettings]:
        """The hosts named by --limit (all when empty); an unknown name is a usage error."""
        if not self.hosts:
            raise ConfigError(
                f"{source or 'the config'} lists no [[hosts]].",
                hint="Add a [[hosts]] table, or run `mailfleet lab up` to boot local test hosts.",
            )
        waiting = next((h for h in self.hosts if not h.address), None)
        if waiting is not None:
            raise ConfigError(
                f"Host {waiting.name} in {source or 'the config'} has no server yet.",
                hint=f"Create it with `mailfleet provision {waiting.name}`.")
        if not limit:
            return list(self.hosts)
        by_name = {h.name: h for h in self.hosts}
        unknown = [name for name in limit if name not in by_name]
        if unknown:
            raise ConfigError(
                f"No host named {unknown[0]!r} in {source or 'the config'} "
                f"(hosts: {', '.join(by_name)}).",
            )
        return [by_name[name] for name in limit]
