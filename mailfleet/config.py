"""The mailfleet.toml model.

Every error names the file, the line (where the key can be found) and the key, because
a config that is wrong must be fixed by a person reading one sentence.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import tomlkit
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mailfleet.errors import ConfigError

DEFAULT_PATH = Path("mailfleet.toml")
ENV_VAR = "MAILFLEET_CONFIG"

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
DOMAIN_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+$")
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
UNIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# a host name as ssh and DNS take it (labels of letters, digits, '_' and '-', no leading '-')
SSH_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
                         r"(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?$")

Role = Literal["mail", "db", "web"]
WEBMAIL_CHOICES = ("roundcube", "sogo", "none")
WEBMAIL_BOTH_REASON = (
    "Roundcube and SOGo cannot both be deployed: each writes the user's single active Sieve "
    "script (SOGo's vacation message silently disables Roundcube's filters), and users would "
    "get two password screens and two address books; choose one"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def domain_name(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if not DOMAIN_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid domain name (like example.org)")
    return value


class MailSettings(_Strict):
    domain: str = Field(description="Primary mail domain.")
    hostname: str = Field(description="Fully qualified name of the mail host (MX, SMTP banner).")
    domains: list[str] = Field(default_factory=list, description="Further domains served.")
    dkim_selector: str = Field("mail", description="DKIM selector: the key is at SELECTOR._domainkey.")
    message_size_mb: Annotated[int, Field(ge=1, le=500)] = 50
    default_quota_mb: Annotated[int, Field(ge=1)] = 2048
    min_password_length: Annotated[int, Field(ge=8, le=128)] = 12
    vmail_uid: Annotated[int, Field(ge=1000, le=59999)] = 5000
    vmail_gid: Annotated[int, Field(ge=1000, le=59999)] = 5000

    @field_validator("dkim_selector")
    @classmethod
    def _check_selector(cls, value: str) -> str:
        if not re.fullmatch(_LABEL, value):
            raise ValueError(f"{value!r} is not a valid DKIM selector (one DNS label, like mail)")
        return value

    @property
    def all_domains(self) -> list[str]:
        """The primary domain first, then the others, without repeats."""
        return list(dict.fromkeys([self.domain, *self.domains]))

    @field_validator("domain", "hostname")
    @classmethod
    def _checkdomain_name(cls, value: str) -> str:
        return domain_name(value)

    @field_validator("domains")
    @classmethod
    def _check_domains(cls, values: list[str]) -> list[str]:
        return [domain_name(v) for v in values]


# sshd_config keywords mailfleet decides (templates/ssh/mailfleet.conf.j2, the VPN listen
# drop-in) or that would open another way in (docs/hardening.md). sshd keeps the first value
# it reads, so most repeats would be ignored anyway; refusing them says so instead of letting
# a line look effective. Lower case: sshd ignores the keyword's case.
SSHD_OWNED = frozenset(k.lower() for k in (
    # who may log in, and how
    "PermitRootLogin", "AllowUsers", "AuthenticationMethods", "PubkeyAuthentication",
    "PasswordAuthentication", "KbdInteractiveAuthentication", "ChallengeResponseAuthentication",
    "PermitEmptyPasswords", "MaxAuthTries", "LoginGraceTime", "AuthorizedKeysFile",
    "AuthorizedKeysCommand", "AuthorizedKeysCommandUser", "HostbasedAuthentication",
    "IgnoreRhosts", "GSSAPIAuthentication", "KerberosAuthentication", "StrictModes",
    "PermitUserEnvironment", "TrustedUserCAKeys", "AuthorizedPrincipalsFile",
    "AuthorizedPrincipalsCommand", "AuthorizedPrincipalsCommandUser", "RevokedKeys",
    # no X11 or agent forwarding; idle sessions end
    "X11Forwarding", "AllowAgentForwarding", "ClientAliveInterval", "ClientAliveCountMax",
    # algorithms
    "KexAlgorithms", "Ciphers", "MACs", "PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes",
    "HostKeyAlgorithms",
    # where sshd listens (ssh.vpn_only moves it; the firewall opens what sshd listens on)
    "ListenAddress", "Port",
))


def sshd_keyword(line: str) -> str | None:
    """The keyword of one sshd_config line (`Key value`, `Key=value`, `Key = value`), as
    sshd splits it; None when the text is not one such line."""
    if "\n" in line or "\r" in line:
        return None
    found = re.fullmatch(r"\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(\S.*)", line)
    return found.group(1) if found else None


def _user_name(value: str, reason: str) -> str:
    if value == "root" or not UNIX_USER_RE.fullmatch(value):
        raise ValueError(f"{value!r} {reason}")
    return value


class AdminSettings(_Strict):
    user: str = "mfadmin"
    uid: Annotated[int, Field(ge=1000, le=59999)] = 1000
    ssh_key: str | None = Field(
        None, description="Public key (or its .pub file) for the admin user; default: the "
                          "public half of each host's ssh_key.")
    remove_users: list[str] = Field(
        default_factory=lambda: ["linuxuser"],
        description="Provider default users to delete (never the one mailfleet connects as).")
    sshd_settings: list[str] = Field(
        default_factory=list,
        description="Extra sshd_config lines after mailfleet's own; Match, Include and the "
                    "keywords mailfleet sets are refused (they could loosen them).")

    @field_validator("user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        return _user_name(value, "is not a usable admin user name (lower case, not root)")

    @field_validator("remove_users")
    @classmethod
    def _check_removals(cls, values: list[str]) -> list[str]:
        return [_user_name(v, "cannot be removed (not a user name, or root)") for v in values]

    @field_validator("sshd_settings")
    @classmethod
    def _check_sshd_lines(cls, values: list[str]) -> list[str]:
        for number, value in enumerate(values, start=1):
            keyword = sshd_keyword(value)
            if keyword is None:
                raise ValueError(f"entry {number}, {value!r}, is not one sshd_config line "
                                 "(Keyword value)")
            if keyword.lower() in ("match", "include"):
                raise ValueError(f"entry {number}, {value!r}: {keyword} is refused (a Match "
                                 "block or an included file could override mailfleet's SSH "
                                 "settings)")
            if keyword.lower() in SSHD_OWNED:
                raise ValueError(f"entry {number}, {value!r}: {keyword} is set by mailfleet "
                                 "and cannot be changed here")
        return [v.strip() for v in values]

    @model_validator(mode="after")
    def _admin_is_kept(self) -> AdminSettings:
        if self.user in self.remove_users:
            raise ValueError(f"remove_users lists the admin user {self.user!r} itself")
        return self


class Fail2banSettings(_Strict):
    bantime: str = Field("1h", description="How long an address stays banned (fail2ban time).")
    findtime: str = Field("10m", description="Window in which failures are counted.")
    maxretry: Annotated[int, Field(ge=1, le=100)] = 5
    ignore: list[str] = Field(default_factory=list,
                              description="Your own addresses or networks: never banned.")

    @field_validator("bantime", "findtime")
    @classmethod
    def _check_time(cls, value: str) -> str:
        if not re.fullmatch(r"\d+[smhdw]?", value.strip()):
            raise ValueError(f"{value!r} is not a duration like 600, 10m, 1h or 1d")
        return value.strip()

    @field_validator("ignore")
    @classmethod
    def _check_networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network") from None
        return values


class FeatureSettings(_Strict):
    webmail: Literal["roundcube", "sogo", "none"] = "roundcube"
    radicale: bool = False
    # Exchange ActiveSync for phones' built-in mail/calendar apps: a part of SOGo
    activesync: bool = False
    firewall: bool = True
    wireguard: bool = False
    backups: bool = True

    @field_validator("webmail", mode="before")
    @classmethod
    def _one_webmail(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple, set)):
            chosen = {str(v).lower() for v in value}
            if {"roundcube", "sogo"} <= chosen:
                raise ValueError(WEBMAIL_BOTH_REASON)
            raise ValueError('must be one of "roundcube", "sogo" or "none", not a list')
        if isinstance(value, str) and value.lower() not in WEBMAIL_CHOICES:
            if "roundcube" in value.lower() and "sogo" in value.lower():
                raise ValueError(WEBMAIL_BOTH_REASON)
            raise ValueError(f'must be "roundcube", "sogo" or "none", not {value!r}')
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _radicale_needs_roundcube(self) -> FeatureSettings:
        if self.radicale and self.webmail == "sogo":
            raise ValueError(
                "radicale = true is not needed with SOGo, which has its own calendars and "
                "contacts; set radicale = false"
            )
        if self.activesync and self.webmail != "sogo":
            raise ValueError(
                f'activesync = true needs webmail = "sogo" (ActiveSync is a part of SOGo), '
                f'not {self.webmail!r}'
            )
        return self


def _ip(value: str | None, version: int) -> str | None:
    if value is None:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv{version} address") from None
    if address.version != version:
        raise ValueError(f"{value!r} is not an IPv{version} address")
    return str(address)


DMARC_POLICIES = ("none", "quarantine", "reject")
# an external report address may carry a +tag, unlike the mailboxes mailfleet creates
REPORT_LOCAL_CHARS = re.compile(r"[A-Za-z0-9._+-]")


class DnsZone(_Strict):
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


class DnsSettings(_Strict):
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


def resolver_address(value: str) -> tuple[str, int]:
    """"IP" or "IP:PORT" ("[v6]:PORT" for IPv6) as (ip, port)."""
    host, port = value, 53
    match = re.fullmatch(r"\[(.+)\]:(\d+)|([^:]+):(\d+)", value)
    if match:
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not a resolver address (IP or IP:PORT)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r} has no valid port")
    return host, port


class WebSettings(_Strict):
    webmail_path: str = Field("/", description="Where webmail is served on https://HOSTNAME.")
    radicale_path: str = Field("/radicale", description="Where CalDAV/CardDAV is served.")
    title: str = Field("Webmail", description="The name on the webmail login page.")

    @field_validator("webmail_path", "radicale_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not re.fullmatch(r"/([a-z0-9_-]+/?)*", value):
            raise ValueError(f"{value!r} is not a URL path like / or /webmail")
        return "/" + value.strip("/") if value != "/" else "/"

    @model_validator(mode="after")
    def _radicale_has_its_own_path(self) -> WebSettings:
        if self.radicale_path == "/" or self.radicale_path == self.webmail_path:
            raise ValueError(f"radicale_path {self.radicale_path!r} must be a path of its own, "
                             "like /radicale")
        return self

    @field_validator("title")
    @classmethod
    def _check_title(cls, value: str) -> str:
        # quotes and backslashes are fine: each template escapes the title for its format;
        # < and > are refused because the webmail pages show it as HTML
        if not value.strip() or any(c in value for c in "<>") or any(
                ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError(f"{value!r} cannot be a title (it must not be empty and must have "
                             "no < or > and no control characters such as a line break)")
        return value.strip()


WG_KEY_RE = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")


def wireguard_key(value: str) -> str:
    value = value.strip()
    if not WG_KEY_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a WireGuard public key (44 characters of base64, "
                         "as `wg pubkey` prints it)")
    return value


class VpnPeer(_Strict):
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
        return _ip(value, 4)  # type: ignore[return-value]

    @field_validator("public_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        return None if value is None else wireguard_key(value)


class VpnSettings(_Strict):
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


class SshSettings(_Strict):
    vpn_only: bool = Field(
        False, description="sshd listens only on the host's VPN address, the firewall admits 22 "
                           "only on the VPN, and mailfleet connects over the VPN (needs "
                           "features.wireguard and this machine in [[vpn.peers]]).")


class HostSettings(_Strict):
    name: str = Field(description="Short name used on the command line (--limit NAME).")
    address: str = Field(description="Address or DNS name mailfleet connects to over SSH.")
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

    @field_validator("ipv4")
    @classmethod
    def _check_ipv4(cls, value: str | None) -> str | None:
        return _ip(value, 4)

    @field_validator("ipv6")
    @classmethod
    def _check_ipv6(cls, value: str | None) -> str | None:
        return _ip(value, 6)

    @field_validator("vpn_address")
    @classmethod
    def _check_vpn_address(cls, value: str | None) -> str | None:
        return _ip(value, 4)

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


LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


class AcmeSettings(_Strict):
    """Certificates from an ACME CA (Let's Encrypt by default) instead of the local CA."""

    enabled: bool = Field(False, description="Obtain and renew the host certificate by ACME.")
    directory: str = Field(LETSENCRYPT, description="The ACME server's directory URL.")
    staging: bool = Field(False, description="Use Let's Encrypt's staging server (for trials).")
    email: str | None = Field(None, description="Contact for expiry notices; default postmaster@DOMAIN.")
    challenge: Literal["http-01", "dns-01"] = Field(
        "http-01", description="How the CA checks the names: HTTP on port 80 through nginx, or "
                               "TXT records published with RFC 2136 in the [[dns.zones]].")
    dns_propagation_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        60, description="DNS-01: how long certbot waits for the TXT records to reach every "
                        "name server of the zone before the CA looks.")
    directory_ca_file: str | None = Field(
        None, description="A PEM file of the CA that signed a private ACME server's HTTPS "
                          "certificate (Pebble, step-ca); public CAs need none.")
    tsig_keys: dict[str, str] = Field(
        default_factory=dict,
        description="DNS-01: per host name, the TSIG key file certbot on that host signs its "
                    "challenge records with. Give each host its own key that the DNS server "
                    "lets update only the host's _acme-challenge TXT records; the zones' "
                    "keys (tsig_key_file) never leave this machine.")

    @field_validator("directory")
    @classmethod
    def _check_directory(cls, value: str) -> str:
        if not re.fullmatch(r"https://[^\s/]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an https:// URL")
        return value

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[a-z0-9.-]+\.[a-z]+", value.lower()):
            raise ValueError(f"{value!r} is not a mail address")
        return value

    @field_validator("directory_ca_file")
    @classmethod
    def _check_ca_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read {value} ({getattr(err, 'strerror', None) or err})") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{value} holds no PEM certificate")
        return str(path)

    @property
    def directory_url(self) -> str:
        return LETSENCRYPT_STAGING if self.staging else self.directory


class BackupSettings(_Strict):
    """Backups with restic (mail store, keys, secrets, PostgreSQL base backups and archived
    WAL) to a repository, encrypted with a password kept on this machine."""

    repository: str | None = Field(
        None, description="restic repository as the hosts reach it: a path on the host, "
                          "sftp:USER@HOST:/PATH, s3:https://HOST/BUCKET, rest:https://...; "
                          "unset: no backups.")
    password_file: str = Field(
        "~/.config/mailfleet/backup-password",
        description="The repository password, on this machine (made by the first deploy "
                    "if missing); without it no backup can be restored.")
    keep_daily: Annotated[int, Field(ge=1, le=366)] = 7
    keep_weekly: Annotated[int, Field(ge=0, le=104)] = 4
    keep_monthly: Annotated[int, Field(ge=0, le=120)] = 6
    max_age_hours: Annotated[int, Field(ge=1, le=24 * 31)] = Field(
        26, description="`backup verify` and `check` fail when the newest backup is older.")
    schedule: str = Field("*-*-* 03:17:00", description="When the timer runs (systemd OnCalendar).")

    @field_validator("repository")
    @classmethod
    def _check_repository(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"(/[^\s]+|(sftp|s3|rest|b2|azure|gs|swift|rclone):\S+)", value):
            raise ValueError(f"{value!r} is not a restic repository (an absolute path on the "
                             "host, or sftp:, s3:, rest:, ... with its address)")
        # restic runs `ssh HOST ...` for sftp: and `rclone REMOTE ...`: a host, user or remote
        # starting with "-" would be an option there (-oProxyCommand=... runs as root)
        scheme, _, rest = value.partition(":")
        target = rest.removeprefix("//") if scheme == "sftp" else rest
        if scheme in ("sftp", "rclone") and re.match(r"([^@/:]*@)?-|-", target):
            raise ValueError(f"{value!r} names a host or remote starting with '-', which ssh or "
                             "rclone would take for an option")
        return value

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        if not re.fullmatch(r"[\w*:,./~ -]+", value):
            raise ValueError(f"{value!r} is not a systemd calendar expression")
        return value


class Config(_Strict):
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


def config_path(path: Path | str | None) -> Path:
    """The config path from --config, else $MAILFLEET_CONFIG, else ./mailfleet.toml."""
    if path:
        return Path(path)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path: Path) -> Config:
    if not _present(path):
        raise ConfigError(
            f"Config file {path} does not exist.",
            hint="Create one with `mailfleet init`, or name another with -c PATH.",
        )
    return parse(read_text(path), path)


def _present(path: Path) -> bool:
    """Whether the path names something; an unsearchable directory on the way counts as
    present so that reading it reports the real reason (permission denied)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def read_text(path: Path) -> str:
    """The config's text; a file that cannot be read or is not UTF-8 is one sentence."""
    try:
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(f"Config file {path} is a directory, not a file.",
                          hint="Name the file itself with -c PATH.") from None
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: the config is not UTF-8 text "
                          f"(byte 0x{err.object[err.start]:02x}).",
                          hint="Save the file as UTF-8.") from None
    except OSError as err:
        raise ConfigError(f"Cannot read config file {path}: {err.strerror or err}.") from None


def save(path: Path, text: str) -> Config:
    """Write a config that mailfleet itself accepts, atomically, keeping the file's mode."""
    config = parse(text, path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        if path.exists():
            tmp.chmod(path.stat().st_mode & 0o7777)
        tmp.replace(path)
    except OSError as err:
        raise ConfigError(f"Cannot write config file {path}: {err.strerror or err}.",
                          hint="Check that its directory exists and is writable.") from None
    return config


def edit(path: Path, change: Callable[[tomlkit.TOMLDocument], None]) -> Config:
    """Change the file in place with tomlkit: the operator's comments and layout stay."""
    doc = tomlkit.parse(read_text(path))
    change(doc)
    return save(path, tomlkit.dumps(doc))


def parse(text: str, path: Path | str = "mailfleet.toml") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}.") from err
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, text, path)) from err


def _describe(err: ValidationError, text: str, path: Path | str) -> str:
    """First error as one sentence: file, line, dotted key, reason."""
    errors = err.errors()
    # a misspelt key also makes the real key "missing": name the misspelling first
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    key = _dotted(loc)
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        reason = "unknown key (check the spelling; `mailfleet init` writes every known key)"
    elif first["type"] == "missing":
        reason = "required key is missing"
    line = find_line(text, loc)
    where = f"{path}, line {line}" if line else str(path)
    subject = f"{key}: " if key else ""
    return f"{where}: {subject}{reason}."


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def find_line(text: str, loc: list[Any]) -> int | None:
    """Best-effort line number of a key path like ('hosts', 1, 'ssh_port') in TOML text.

    Handles the shapes mailfleet.toml uses: [table], [[array-of-tables]] and key = value.
    Falls back to the table header when the key itself is absent (a missing key).
    """
    table: list[Any] = []
    counts: dict[str, int] = {}
    header_line: dict[tuple[Any, ...], int] = {}
    key_line: dict[tuple[Any, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith('"') else raw.strip()
        if not line:
            continue
        if line.startswith("[["):
            name = line.strip("[] ")
            index = counts.get(name, 0)
            counts[name] = index + 1
            table = [*name.split("."), index]
            header_line[tuple(table)] = number
        elif line.startswith("["):
            table = line.strip("[] ").split(".")
            header_line[tuple(table)] = number
        elif "=" in line:
            key = line.split("=", 1)[0].strip().strip('"')
            key_line.setdefault(tuple([*table, *key.split(".")]), number)
    for end in range(len(loc), 0, -1):
        prefix = tuple(loc[:end])
        if prefix in key_line:
            return key_line[prefix]
        if prefix in header_line:
            return header_line[prefix]
    return None
