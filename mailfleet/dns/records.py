"""The DNS records a mail domain needs, derived from mailfleet.toml and the hosts' DKIM keys.

Each record carries a level (required / recommended / optional) and one line saying why, so
`dns records` doubles as the explanation an operator would otherwise look up.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import asdict, dataclass
from typing import Literal

from mailfleet.config import Config

Level = Literal["required", "recommended", "optional"]
LEVELS: tuple[Level, ...] = ("required", "recommended", "optional")

# TXT records are recognised among the others at the same name by their first tag
TXT_KINDS = {
    "v=spf1": "SPF",
    "v=dkim1": "DKIM",
    "v=dmarc1": "DMARC",
    "v=stsv1": "MTA-STS",
    "v=tlsrptv1": "TLS-RPT",
}
MTA_STS_MAX_AGE = 604800  # one week, as RFC 8461 suggests for a start
TXT_CHUNK = 255


@dataclass(frozen=True)
class Record:
    domain: str   # the mail domain it belongs to
    name: str     # owner name, absolute, without the final dot
    type: str     # MX, A, AAAA, TXT, CNAME, SRV, CAA, PTR
    value: str    # presentation form; for TXT the text itself (not yet split or quoted)
    level: Level
    reason: str
    ttl: int = 3600

    @property
    def kind(self) -> str:
        """What the record is, for people: SPF, DKIM, MX, ..."""
        return (txt_kind(self.value) or "TXT") if self.type == "TXT" else self.type

    @property
    def rdata(self) -> str:
        """The value as a zone file (and dnspython) writes it."""
        return quote_txt(self.value) if self.type == "TXT" else self.value

    def zone_line(self) -> str:
        return f"{self.name}. {self.ttl} IN {self.type} {self.rdata}"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "kind": self.kind}


def txt_kind(text: str) -> str | None:
    head = text.split(";", 1)[0].split(" ", 1)[0].strip().lower()
    return TXT_KINDS.get(head)


def normalise(value: str) -> str:
    """A record value as compared: case and spacing do not matter."""
    return " ".join(value.lower().split())


def quote_txt(text: str) -> str:
    """A TXT value as quoted strings of at most 255 bytes each (RFC 1035 character-strings);
    a 2048-bit DKIM key does not fit in one."""
    data = text.encode()
    pieces = [data[i:i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)] or [b""]
    return " ".join('"' + p.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for p in pieces)


def reverse_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def mta_sts_policy(mode: str, mx_hosts: list[str]) -> str:
    """The policy file served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt."""
    lines = ["version: STSv1", f"mode: {mode}", *[f"mx: {mx}" for mx in mx_hosts],
             f"max_age: {MTA_STS_MAX_AGE}"]
    return "\r\n".join(lines) + "\r\n"


def mta_sts_id(policy: str) -> str:
    """Changes exactly when the policy does, as RFC 8461 requires of the TXT record's id."""
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


class MissingAddress(ValueError):
    """A mail host whose public address mailfleet cannot know."""


@dataclass(frozen=True)
class MailHost:
    name: str
    fqdn: str
    ipv4: str | None
    ipv6: str | None


def mail_hosts(config: Config) -> list[MailHost]:
    hosts: list[MailHost] = []
    for host in config.hosts_with("mail"):
        entry = MailHost(host.name, config.host_fqdn(host), host.public_address(4),
                         host.public_address(6))
        if not entry.ipv4 and not entry.ipv6:
            raise MissingAddress(
                f"hosts[{config.hosts.index(host)}] ({host.name}): no public address is known "
                f"for the DNS records; set ipv4 = \"...\" (and ipv6) in its [[hosts]] table")
        hosts.append(entry)
    return hosts


def generate(config: Config, dkim: dict[str, str | None]) -> list[Record]:
    """Every record for every domain of the config. `dkim` maps a domain to the TXT value of
    its key (None when the host has none yet: then there is no DKIM record to give)."""
    dns = config.dns
    hosts = mail_hosts(config)
    main = hosts[0].fqdn if hosts else config.mail.hostname
    web = [config.host_fqdn(h) for h in config.hosts_with("web")] or [main]
    primary = config.mail.domain
    records: list[Record] = []

    def add(domain: str, name: str, type_: str, value: str, level: Level, reason: str) -> None:
        records.append(Record(domain, name, type_, value, level, reason, dns.ttl))

    # the hosts themselves: once, not per domain
    for host in hosts:
        for type_, address in (("A", host.ipv4), ("AAAA", host.ipv6)):
            if address:
                add(primary, host.fqdn, type_, address, "required",
                    f"the address of mail host {host.name}: MX records and clients find it here")
        if host.fqdn not in config.mail.all_domains:  # one SPF record per name
            add(primary, host.fqdn, "TXT", "v=spf1 a -all", "recommended",
                "SPF for the host name itself: bounces (empty sender) are checked against it")
        for address in (host.ipv4, host.ipv6):
            if address:
                add(primary, reverse_name(address), "PTR", f"{host.fqdn}.", "required",
                    f"reverse DNS of {address}: receivers distrust a sender whose address does "
                    "not name it; usually set in your provider's control panel")

    spf = "v=spf1 " + " ".join(
        [f"ip4:{h.ipv4}" for h in hosts if h.ipv4] + [f"ip6:{h.ipv6}" for h in hosts if h.ipv6]
    ) + " -all"
    dmarc_rua = dns.dmarc_rua or f"postmaster@{primary}"
    tlsrpt_rua = dns.tlsrpt_rua or f"postmaster@{primary}"
    policy = mta_sts_policy(dns.mta_sts_mode, [h.fqdn for h in hosts])
    for domain in config.mail.all_domains:
        for place, host in enumerate(hosts, start=1):
            # a cluster's mail hosts are equals (each proxies to a mailbox's home): one
            # priority, senders spread over them; otherwise the first is the main MX
            priority = 10 if config.cluster.enabled else place * 10
            add(domain, domain, "MX", f"{priority} {host.fqdn}.", "required",
                f"mail for @{domain} is delivered to {host.fqdn}")
        add(domain, domain, "TXT", spf, "required",
            "SPF: only the mail hosts may send as @" + domain + "; receivers reject the rest")
        key = dkim.get(domain)
        if key:
            add(domain, f"{config.mail.dkim_selector}._domainkey.{domain}", "TXT", key, "required",
                "DKIM: the public key receivers check the host's signatures with")
        add(domain, f"_dmarc.{domain}", "TXT",
            f"v=DMARC1; p={dns.dmarc_policy}; rua=mailto:{dmarc_rua}", "required",
            f"DMARC: what receivers do with mail that fails SPF and DKIM (p={dns.dmarc_policy}), "
            "and where they report")
        rua_domain = dmarc_rua.rpartition("@")[2].lower()
        if rua_domain != domain:
            add(domain, f"{domain}._report._dmarc.{rua_domain}", "TXT", "v=DMARC1", "recommended",
                f"lets {rua_domain} receive the DMARC reports of {domain} (RFC 7489 §7.1)")
        if dns.mta_sts_mode != "none":
            add(domain, f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={mta_sts_id(policy)}",
                "recommended", f"MTA-STS ({dns.mta_sts_mode}): senders must use TLS to the MX; "
                "the id changes whenever the policy does")
            add(domain, f"mta-sts.{domain}", "CNAME", f"{web[0]}.", "recommended",
                "where senders fetch the MTA-STS policy over HTTPS")
        add(domain, f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:{tlsrpt_rua}",
            "recommended", "TLS-RPT: senders report TLS failures delivering to you")
        for issuer in dns.caa_issuers:
            add(domain, domain, "CAA", f'0 issue "{issuer}"', "recommended",
                f"only {issuer} may issue certificates for {domain}")
        add(domain, f"autoconfig.{domain}", "CNAME", f"{web[0]}.", "optional",
            "Thunderbird finds the server settings here")
        add(domain, f"autodiscover.{domain}", "CNAME", f"{web[0]}.", "optional",
            "Outlook finds the server settings here")
        for service, priority, port, host_name, source in (
            ("_submissions._tcp", 0, 465, main, "RFC 6186/8314"),
            ("_submission._tcp", 10, 587, main, "RFC 6186"),
            ("_imaps._tcp", 0, 993, main, "RFC 6186/8314"),
            ("_imap._tcp", 10, 143, main, "RFC 6186"),
            ("_sieve._tcp", 0, 4190, main, "ManageSieve, RFC 5804"),
            ("_autodiscover._tcp", 0, 443, web[0], "Outlook"),
        ):
            add(domain, f"{service}.{domain}", "SRV", f"{priority} 1 {port} {host_name}.",
                "optional", f"clients find {service.split('.')[0][1:]} on {host_name}:{port} "
                f"({source})")
    return _unique(records)


def _unique(records: list[Record]) -> list[Record]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for record in records:
        key = (record.name, record.type, record.value)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out
