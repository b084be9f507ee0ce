"""Asking DNS what is published: through a resolver (what the world sees), a zone's primary
server (what `dns publish` changes), or a zone file (checked before it is loaded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.zone

from mailfleet.config import resolver_address
from mailfleet.errors import ConfigError, MailfleetError

TIMEOUT = 5.0


class DnsUnreachable(MailfleetError):
    exit_code = 1


@dataclass
class Answer:
    """The records found at a name for a type; `error` when the server would not say."""

    rdatas: list[dns.rdata.Rdata] = field(default_factory=list)
    error: str | None = None

    @property
    def values(self) -> list[str]:
        return [presentation(r) for r in self.rdatas]


def presentation(rdata: dns.rdata.Rdata) -> str:
    """A record's value as records.Record holds it: TXT as its joined text, names absolute."""
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode(errors="replace")
    return rdata.to_text()


class Lookup(Protocol):
    def __call__(self, name: str, rdtype: str) -> Answer | None:
        """None: the name is outside what this source can speak for."""


class ResolverLookup:
    """Recursive lookups with dnspython, against the configured resolvers or the system's."""

    def __init__(self, resolvers: list[str], tcp: bool = False) -> None:
        self.resolver = dns.resolver.Resolver(configure=not resolvers)
        if resolvers:
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*resolver_address(r)) for r in resolvers]
        self.resolver.lifetime = TIMEOUT
        self.tcp = tcp
        self.where = ", ".join(resolvers) or "this machine's resolver"

    def __call__(self, name: str, rdtype: str) -> Answer:
        try:
            answer = self.resolver.resolve(name, rdtype, tcp=self.tcp, search=False,
                                           raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer()
        except dns.resolver.NoNameservers as err:
            return Answer(error=f"no server answered ({_short(err)})")
        except dns.exception.Timeout as err:
            raise DnsUnreachable(f"No answer from {self.where} within {TIMEOUT:.0f} s.",
                                 hint="Set [dns] resolvers in mailfleet.toml to a resolver "
                                      "you can reach.") from err
        rrset = answer.rrset
        return Answer(list(rrset) if rrset is not None and rrset.rdtype == _type(rdtype) else [])


class ServerLookup:
    """Straight questions to one authoritative server, the way `dns publish` sees a zone."""

    def __init__(self, server: str, port: int, zone: str) -> None:
        self.server, self.port, self.zone = server, port, zone

    def __call__(self, name: str, rdtype: str) -> Answer:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD  # the server's own data only
        try:
            response = dns.query.tcp(query, self.server, port=self.port, timeout=TIMEOUT)
        except (OSError, dns.exception.DNSException) as err:
            raise DnsUnreachable(
                f"The primary server {self.server}:{self.port} of zone {self.zone} did not "
                f"answer: {_short(err)}.") from err
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return Answer()
        if rcode != dns.rcode.NOERROR:
            raise DnsUnreachable(
                f"The server {self.server}:{self.port} answered {dns.rcode.to_text(rcode)} for "
                f"{name} {rdtype}: does it serve zone {self.zone}?")
        wanted = dns.name.from_text(name)
        for rrset in response.answer:
            if rrset.name == wanted and rrset.rdtype == _type(rdtype):
                return Answer(list(rrset))
        return Answer()


class ZoneFileLookup:
    """A zone file read with dnspython: mistakes are found before the file is loaded."""

    def __init__(self, path: Path, origin: str) -> None:
        try:
            self.zone = dns.zone.from_text(path.read_text(encoding="utf-8"), origin=origin,
                                           relativize=False, check_origin=False)
        except OSError as err:
            raise ConfigError(f"Cannot read zone file {path}: {err.strerror}.") from err
        except dns.exception.DNSException as err:
            raise ConfigError(f"{path}: not a valid zone file for {origin}: {err}.") from err
        self.origin = dns.name.from_text(origin)

    def __call__(self, name: str, rdtype: str) -> Answer | None:
        owner = dns.name.from_text(name)
        if not owner.is_subdomain(self.origin):
            return None
        node = self.zone.get_node(owner)
        if node is None:
            return Answer()
        rdataset = node.get_rdataset(dns.rdataclass.IN, _type(rdtype))
        return Answer(list(rdataset) if rdataset else [])


def _type(rdtype: str) -> dns.rdatatype.RdataType:
    return dns.rdatatype.from_text(rdtype)


def _short(err: BaseException) -> str:
    return (str(err) or type(err).__name__).splitlines()[0].rstrip(".")
