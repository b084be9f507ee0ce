"""The sections of mailfleet.toml about reaching things: DNS, the VPN, SSH and the hosts."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from mailfleet.config.provider import ProviderSettings
from mailfleet.config.settings import Role
from mailfleet.config.values import (
    DOMAIN_RE,
    HOST_NAME_RE,
    SSH_HOST_RE,
    UNIX_USER_RE,
    Strict,
    checked_ip,
    domain_name,
    resolver_address,
    wireguard_key,
)

# an external report address may carry a +tag, unlike the mailboxes mailfleet creates
REPORT_LOCAL_CHARS = re.compile(r"[A-Za-z0-9._+-]")


class DnsZone(Strict):
    """A zone mailfleet may change with RFC 2136 updates signed by a TSIG key."""

    zone: str = Field(description="Zone name, like example.org (or 2.0.192.in-addr.arpa).")
    server: str = Field(description="IP address of the zone's primary server.")
    port: Annotated[int, Field(ge=1, le=65535)] = 53
    tsig_key_file: str = Field(description="The TSIG key, as `tsig-keygen` writes it (BIND syntax).")
    host_server: str | None = Field(
        None, description="The primary's address as the mail hosts reach it, when it differs "
                          "from `server` (ACME DNS-01 renewals run on the hosts).")
    host_port: Annotated[int | None, Field(ge=1, le=65535)] = None

    @field_validator("zone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        return domain_name(value)

    @field_validator("server", "host_server")
    @classmethod
    def _check_server(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address (RFC 2136 updates go to the "
                             "primary server's address)") from None


class DnsSettings(Strict):
    check: bool = Field(True, description="Include the DNS checks in `mailfleet check`.")
    resolvers: list[str] = Field(
        default_factory=list,
        description="Where `dns check` asks (IP or IP:PORT); default: this machine's resolver.")
    tcp: bool = Field(False, description="Ask the resolvers over TCP.")
    ttl: Annotated[int, Field(ge=60, le=86400)] = 3600
    dmarc_policy: Literal["none", "quarantine", "reject"] = "quarantine"
    dmarc_rua: str | None = Field(None, description="Where DMARC reports go; default postmaster@DOMAIN.")
    mta_sts_mode: Literal["enforce", "testing", "none"] = "testing"
    tlsrpt_rua: str | None = Field(None, description="Where TLS reports go; default postmaster@DOMAIN.")
    caa_issuers: list[str] = Field(default_factory=lambda: ["letsencrypt.org"])
    zones: list[DnsZone] = Field(default_factory=list)

    @field_validator("resolvers")
    @classmethod
    def _check_resolvers(cls, values: list[str]) -> list[str]:
        for value in values:
            resolver_address(value)
        return values

    @field_validator("dmarc_rua", "tlsrpt_rua")
    @classmethod
    def _check_mailbox(cls, value: str | None) -> str | None:
        """A report address lands in a TXT record as rua=mailto:ADDRESS, where ';' starts a
        new tag, ',' a new URI and '!' a size limit: only a plain address may pass."""
        if value is None:
            return None
        value = value.strip().removeprefix("mailto:")
        local, _, domain = value.rpartition("@")
        if not local or not DOMAIN_RE.fullmatch(domain.lower()):
            raise ValueError(f"{value!r} is not a mail address (like dmarc@example.org)")
        bad = next((c for c in local if not REPORT_LOCAL_CHARS.match(c)), None)
        if bad is not None:
            raise ValueError(f"{value!r} is not a report address: {bad!r} is not allowed before "
                             "the @ (letters, digits, '.', '-', '_' and '+')")
        if local.startswith(".") or local.endswith(".") or ".." in local or len(local) > 64:
            raise ValueError(f"{value!r} is not a report address: no leading, trailing or double "
                             "dot, at most 64 characters before the @")
        return value

    @field_validator("caa_issuers")
    @classmethod
    def _check_issuers(cls, values: list[str]) -> list[str]:
        return [domain_name(v) for v in values]


class VpnPeer(Strict):
    """A machine that is not a mail host but joins the VPN: the operator's laptop, a
    monitoring box. Hosts never connect to it; it connects to them."""

    name: str = Field(description="Used in `mailfleet vpn client NAME`.")
    address: str = Field(description="Its address inside the VPN, like 10.8.0.100.")
    public_key: str | None = Field(
        None, description="Its WireGuard public key; unset: mailfleet keeps a key pair for it "
                          "on this machine (made by `vpn client NAME` or the first deploy).")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not HOST_NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a peer name (lower case letters, digits, '-')")
        return value

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        return checked_ip(value, 4)  # type: ignore[return-value]

    @field_validator("public_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        return None if value is None else wireguard_key(value)


class VpnSettings(Strict):
    """WireGuard between the hosts and the peers (features.wireguard = true)."""

    network: str = Field("10.8.0.0/24", description="The VPN's IPv4 network; hosts take .1, .2, "
                                                    "... in [[hosts]] order unless they set vpn_address.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(51820, description="UDP port of the hosts.")
    keys_dir: str = Field(
        "~/.config/mailfleet/vpn",
        description="On this machine: the peers' key pairs mailfleet made, and the hosts' "
                    "public keys (so `vpn client` works while the VPN is down).")
    peers: list[VpnPeer] = Field(default_factory=list)

    @field_validator("network")
    @classmethod
    def _check_network(cls, value: str) -> str:
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 network like 10.8.0.0/24") from None
        if network.version != 4 or not network.is_private or network.prefixlen > 29:
            raise ValueError(f"{value!r} must be a private IPv4 network of at least 8 "
                             "addresses, like 10.8.0.0/24")
        return str(network)


class SshSettings(Strict):
    vpn_only: bool = Field(
        False, description="sshd listens only on the host's VPN address, the firewall admits 22 "
                           "only on the VPN, and mailfleet connects over the VPN (needs "
                           "features.wireguard and this machine in [[vpn.peers]]).")


class HostSettings(Strict):
    name: str = Field(description="Short name used on the command line (--limit NAME).")
    address: str = Field("", description="Address or DNS name mailfleet connects to over SSH "
                                         "(`mailfleet provision` writes it for a host with "
                                         "a [hosts.provider] table).")
    fqdn: str | None = Field(None, description="Host name to set; default: mail.hostname.")
    ipv4: str | None = Field(None, description="Public IPv4 address for DNS (A, SPF, PTR); "
                                               "default: address, when it is a public one.")
    ipv6: str | None = Field(None, description="Public IPv6 address for DNS (AAAA, SPF, PTR); "
                                               "default: address, when it is a public one.")
    ssh_user: str = "root"
    ssh_port: Annotated[int, Field(ge=1, le=65535)] = 22
    ssh_key: str | None = None
    ssh_known_hosts: str | None = None
    roles: list[Role] = Field(default_factory=lambda: ["mail", "db", "web"])
    vpn_address: str | None = Field(None, description="The host's address in [vpn] network; "
                                                      "default: by its place in [[hosts]].")
    vpn_endpoint: str | None = Field(
        None, description="Where the other hosts send its WireGuard traffic (address or name); "
                          "default: its public IPv4 or IPv6 address, else `address`.")
    lab: str | None = Field(None, description="Set by `mailfleet lab up` on the hosts it made.")
    provider: ProviderSettings | None = Field(
        None, description="Where `mailfleet provision` creates this host's server.")

    @property
    def sudo(self) -> bool:
        """mailfleet runs its commands through sudo when it logs in as anyone but root."""
        return self.ssh_user != "root"

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not HOST_NAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a valid host name (lower case letters, digits and '-', "
                "starting with a letter)"
            )
        return value

    @field_validator("ipv4", "vpn_address")
    @classmethod
    def _check_ipv4(cls, value: str | None) -> str | None:
        return checked_ip(value, 4)

    @field_validator("ipv6")
    @classmethod
    def _check_ipv6(cls, value: str | None) -> str | None:
        return checked_ip(value, 6)

    @field_validator("vpn_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() or c in "[]/" for c in value)):
            raise ValueError(f"{value!r} is not an address or host name")
        return value

    def public_address(self, version: int) -> str | None:
        """The address the world reaches this host at, as DNS must name it."""
        given = self.ipv4 if version == 4 else self.ipv6
        if given:
            return given
        try:
            address = ipaddress.ip_address(self.address)
        except ValueError:
            return None
        # a private or documentation address is what mailfleet connects to, not what the
        # world reaches: those hosts must say ipv4/ipv6 themselves
        return str(address) if address.version == version and address.is_global else None

    @field_validator("fqdn")
    @classmethod
    def _check_fqdn(cls, value: str | None) -> str | None:
        return None if value is None else domain_name(value)

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        """An IP address or a DNS name: it is an argument of ssh, where '-' starts an option."""
        if value == "":
            return value  # (only for a host that `provision` has still to make: see below)
        if value.startswith("-"):
            raise ValueError(f"{value!r} starts with '-', which ssh would take for an option: "
                             "not an IP address or host name")
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        if not SSH_HOST_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not an IP address or host name")
        return value

    @field_validator("ssh_user")
    @classmethod
    def _check_ssh_user(cls, value: str) -> str:
        if not UNIX_USER_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Unix user name (lower case letters, digits, "
                             "'_' and '-', not starting with '-')")
        return value

    @field_validator("ssh_key")
    @classmethod
    def _check_ssh_key(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError(f"{value!r} is not a usable file name (no control characters)")
        return value

    @field_validator("ssh_known_hosts")
    @classmethod
    def _check_known_hosts(cls, value: str | None) -> str | None:
        # it goes into `ssh -o UserKnownHostsFile=...`, which splits the value at spaces
        if value is not None and (not value.strip() or any(
                c.isspace() or c in "\"'" or not c.isprintable() for c in value)):
            raise ValueError(f"{value!r} is not a usable file name (no spaces, quotes or "
                             "control characters)")
        return value

    @field_validator("roles")
    @classmethod
    def _check_roles(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a host needs at least one role (mail, db, web)")
        return value

    @model_validator(mode="after")
    def _address_or_provider(self) -> HostSettings:
        if not self.address and self.provider is None:
            raise ValueError(f"host {self.name!r} has no address: give the address mailfleet "
                             "connects to, or a [hosts.provider] table for `mailfleet "
                             "provision` to create the server")
        return self
