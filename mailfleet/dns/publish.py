"""Publishing records with RFC 2136 dynamic updates signed with TSIG.

Only differences are sent, so a second `dns publish` sends nothing. mailfleet owns the
record sets it generates (MX, the hosts' A/AAAA, CNAME, SRV, PTR are replaced whole), but
shares TXT and CAA with whoever else uses the zone: at a name only the TXT records of the same
kind (SPF, DKIM, DMARC, ...) are replaced, other TXT records and other CAs stay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update

from mailfleet.config import DnsZone
from mailfleet.dns.lookup import Answer, DnsUnreachable, ServerLookup, TIMEOUT, Lookup
from mailfleet.dns.records import Record, normalise, quote_txt, txt_kind
from mailfleet.errors import ConfigError, MailfleetError

ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha384": dns.tsig.HMAC_SHA384, "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha1": dns.tsig.HMAC_SHA1, "hmac-md5": dns.tsig.HMAC_MD5,
}


@dataclass(frozen=True)
class Change:
    action: str  # "add" or "delete" (a replace is a delete of the set, then adds)
    name: str
    type: str
    rdata: str | None  # None: the whole record set
    ttl: int = 0

    def __str__(self) -> str:
        sign = "+" if self.action == "add" else "-"
        value = self.rdata if self.rdata is not None else "(all)"
        ttl = f" {self.ttl}" if self.action == "add" else ""
        return f"{sign} {self.name}.{ttl} {self.type} {value}"


@dataclass
class ZonePlan:
    zone: DnsZone
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str


def read_key(path: str) -> TsigKey:
    """A key file as BIND's tsig-keygen writes it: key "NAME" { algorithm A; secret "S"; };"""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"Cannot read the TSIG key file {file}: {err.strerror}.") from err
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not a TSIG key file (not UTF-8 text).") from None
    match = re.search(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', text, re.S)
    algorithm = re.search(r"algorithm\s+([\w-]+)\s*;", match.group(2)) if match else None
    secret = re.search(r'secret\s+"([^"]+)"\s*;', match.group(2)) if match else None
    if not (match and algorithm and secret):
        raise ConfigError(f"{file} is not a TSIG key file (key \"NAME\" {{ algorithm ...; "
                          "secret \"...\"; }; as tsig-keygen writes it).")
    if algorithm.group(1).lower() not in ALGORITHMS:
        raise ConfigError(f"{file}: unknown TSIG algorithm {algorithm.group(1)!r} "
                          f"(use {', '.join(ALGORITHMS)}).")
    name, value = match.group(1), secret.group(1)
    # both land in certbot's INI file and dnspython's keyring: a DNS name and base64, nothing
    # that could start another setting
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,253}", name) or \
            not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", value):
        raise ConfigError(f"{file} is not a TSIG key file (its key name must be a DNS name and "
                          "its secret base64).")
    return TsigKey(name, algorithm.group(1).lower(), value)


def zone_of(name: str, zones: list[DnsZone]) -> DnsZone | None:
    """The most specific configured zone holding `name`."""
    owner = dns.name.from_text(name)
    candidates = [z for z in zones if owner.is_subdomain(dns.name.from_text(z.zone))]
    return max(candidates, key=lambda z: len(z.zone), default=None)


def plan(records: list[Record], zones: list[DnsZone],
         lookup_for: dict[str, Lookup] | None = None) -> tuple[list[ZonePlan], list[Record]]:
    """(the changes per zone, the records no configured zone holds)."""
    plans: dict[str, ZonePlan] = {}
    uncovered: list[Record] = []
    groups: dict[tuple[str, str], list[Record]] = {}
    for record in records:
        zone = zone_of(record.name, zones)
        if zone is None:
            uncovered.append(record)
            continue
        plans.setdefault(zone.zone, ZonePlan(zone))
        groups.setdefault((record.name, record.type), []).append(record)
    lookups = lookup_for or {}
    for (name, type_), wanted in groups.items():
        zone = zone_of(name, zones)
        assert zone is not None
        lookup = lookups.get(zone.zone) or ServerLookup(zone.server, zone.port, zone.zone)
        lookups[zone.zone] = lookup
        answer = lookup(name, type_) or Answer()
        if type_ == "CNAME" and not answer.rdatas:
            # a CNAME cannot share its name (RFC 1034 §3.6.2): the server would ignore the
            # add and every publish would send it again; clear address records first
            plans[zone.zone].changes += [
                Change("delete", name, other, None) for other in ("A", "AAAA")
                if (lookup(name, other) or Answer()).rdatas]
        plans[zone.zone].changes += _changes(wanted, answer)
    return [p for p in plans.values()], uncovered


def _changes(wanted: list[Record], answer: Answer) -> list[Change]:
    name, type_, ttl = wanted[0].name, wanted[0].type, wanted[0].ttl
    found = list(zip(answer.values, (r.to_text() for r in answer.rdatas)))
    if type_ == "TXT":
        changes = []
        for record in wanted:
            same_kind = [(v, text) for v, text in found if txt_kind(v) == record.kind]
            changes += [Change("delete", name, type_, text)
                        for v, text in same_kind if v != record.value]
            if record.value not in [v for v, _ in same_kind]:
                changes.append(Change("add", name, type_, quote_txt(record.value), ttl))
        return changes
    have = {normalise(v) for v, _ in found}
    if type_ == "CAA":
        return [Change("add", name, type_, r.value, ttl) for r in wanted if normalise(r.value) not in have]
    if have == {normalise(r.value) for r in wanted}:
        return []
    clear = [Change("delete", name, type_, None)] if found else []
    return clear + [Change("add", name, type_, r.value, ttl) for r in wanted]


class PublishError(MailfleetError):
    exit_code = 1


def send(zone_plan: ZonePlan) -> None:
    """One signed UPDATE per zone holding all its changes: applied whole or not at all."""
    zone = zone_plan.zone
    key = read_key(zone.tsig_key_file)
    keyring = dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret)})
    update = dns.update.UpdateMessage(zone.zone, keyring=keyring, keyname=key.name,
                                      keyalgorithm=ALGORITHMS[key.algorithm])
    for change in zone_plan.changes:
        if change.action == "delete":
            if change.rdata is None:
                update.delete(change.name + ".", change.type)
            else:
                update.delete(change.name + ".", change.type, change.rdata)
        else:
            update.add(change.name + ".", change.ttl, change.type, change.rdata)
    try:
        response = dns.query.tcp(update, zone.server, port=zone.port, timeout=TIMEOUT)
    except dns.tsig.PeerError as err:
        raise PublishError(f"{zone.server} refused the TSIG key {key.name!r} for zone "
                           f"{zone.zone} ({type(err).__name__}): check {zone.tsig_key_file}.") from err
    except (OSError, dns.exception.DNSException) as err:
        raise DnsUnreachable(f"The primary server {zone.server}:{zone.port} of zone {zone.zone} "
                             f"did not take the update: {err}.") from err
    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        hint = {dns.rcode.REFUSED: "is the key allowed to update this zone (update-policy)?",
                dns.rcode.NOTAUTH: "the server is not the zone's primary, or the key is unknown"}
        raise PublishError(f"{zone.server} answered {dns.rcode.to_text(rcode)} to the update of "
                           f"zone {zone.zone}.", hint=hint.get(rcode))
