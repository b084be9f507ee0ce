"""Comparing what DNS publishes with what the records should be: missing, wrong or extra,
each with the change that fixes it."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from mailfleet.dns.lookup import Answer, Lookup
from mailfleet.dns.records import Record, normalise, txt_kind

Status = Literal["ok", "missing", "wrong", "extra", "error"]


@dataclass(frozen=True)
class Finding:
    name: str
    type: str
    kind: str
    level: str
    status: Status
    message: str
    fix: str | None = None

    @property
    def problem(self) -> bool:
        return self.status != "ok"

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "type": self.type, "kind": self.kind, "level": self.level,
                "status": self.status, "message": self.message, "fix": self.fix}


def check(records: list[Record], lookup: Lookup) -> list[Finding]:
    """One finding per record group (name, type and, for TXT, its kind)."""
    groups: dict[tuple[str, str, str], list[Record]] = {}
    for record in records:
        groups.setdefault((record.name, record.type, record.kind), []).append(record)
    findings = []
    for (name, type_, kind), wanted in groups.items():
        answer = lookup(name, type_)
        if answer is None:
            continue
        level = wanted[0].level
        if answer.error:
            findings.append(Finding(name, type_, kind, level, "error",
                                    f"could not be looked up: {answer.error}"))
            continue
        found = answer.values
        if type_ == "TXT":
            found = [v for v in found if txt_kind(v) == kind]
            finding = _txt(wanted[0], found)
        elif type_ == "CAA":
            finding = _caa(wanted, found)
        elif type_ == "CNAME" and not found:
            finding = _cname_or_address(wanted[0], lookup)
        else:
            finding = _exact(wanted, found)
        findings.append(Finding(name, type_, kind, level, *finding))
    return findings


Result = tuple[Status, str, str | None]


def _add(records: list[Record]) -> str:
    return "add " + "; ".join(_line(r) for r in records)


def _line(record: Record) -> str:
    return f"{record.name}. {record.type} {record.rdata}"


def _exact(wanted: list[Record], found: list[str]) -> Result:
    expected = {normalise(r.value) for r in wanted}
    have = {normalise(v) for v in found}
    if not have:
        return "missing", "not published", _add(wanted)
    if have == expected:
        return "ok", ", ".join(sorted(found)), None
    if expected <= have:
        extra = sorted(have - expected)
        return "extra", f"also has {', '.join(extra)}", (
            f"remove {', '.join(extra)} (it is not one of this install's hosts)")
    return "wrong", f"is {', '.join(sorted(found))}, should be {', '.join(r.value for r in wanted)}", (
        "replace it by: " + "; ".join(_line(r) for r in wanted))


def _caa(wanted: list[Record], found: list[str]) -> Result:
    if not found:
        return "missing", "not published (any CA may issue certificates)", _add(wanted)
    issuers = {_caa_issuer(v) for v in found if _caa_tag(v) == "issue"}
    lacking = [r for r in wanted if _caa_issuer(r.value) not in issuers]
    if not lacking:
        return "ok", ", ".join(sorted(found)), None
    return "wrong", (f"allows {', '.join(sorted(issuers)) or 'no CA'} but not "
                     f"{', '.join(_caa_issuer(r.value) for r in lacking)}: certificates for the "
                     "mail host cannot be renewed"), _add(lacking)


def _caa_tag(value: str) -> str:
    parts = value.split(None, 2)
    return parts[1].lower() if len(parts) > 1 else ""


def _caa_issuer(value: str) -> str:
    parts = value.split(None, 2)
    return parts[2].strip('"').split(";")[0].strip().lower() if len(parts) > 2 else ""


def _cname_or_address(wanted: Record, lookup: Lookup) -> Result:
    """An A record straight to the host does the same job as the CNAME."""
    target = wanted.value.rstrip(".")
    target_addresses = set((lookup(target, "A") or Answer()).values)
    have = (lookup(wanted.name, "A") or Answer()).values
    if have and set(have) <= target_addresses:
        return "ok", f"A {', '.join(have)} (the address of {target})", None
    if have:
        return "wrong", f"points to {', '.join(have)}, not to {target}", (
            f"replace it by: {_line(wanted)}")
    return "missing", "not published", _add([wanted])


def _txt(wanted: Record, found: list[str]) -> Result:
    kind = wanted.kind
    if not found:
        return "missing", "not published", _add([wanted])
    if len(found) > 1:
        return "wrong", (f"{len(found)} {kind} records at this name: receivers treat that as an "
                         "error and ignore them all"), f"keep only one: {_line(wanted)}"
    value = found[0]
    if _norm_txt(value) == _norm_txt(wanted.value):
        return "ok", _short(value), None
    problem = {"SPF": _spf_problem, "DKIM": _dkim_problem, "DMARC": _dmarc_problem,
               "MTA-STS": _exact_problem, "TLS-RPT": _tlsrpt_problem}.get(kind, _exact_problem)(
        value, wanted.value)
    if problem is None:
        return "ok", _short(value), None
    return "wrong", f"{problem}: {_short(value)}", f"replace it by: {_line(wanted)}"


def _short(value: str, limit: int = 70) -> str:
    return value if len(value) <= limit else value[:limit - 1] + "…"


def _norm_txt(value: str) -> str:
    return re.sub(r"\s*;\s*", "; ", " ".join(value.split())).strip("; ").lower()


def _tags(value: str) -> dict[str, str]:
    tags = {}
    for part in value.split(";"):
        key, _, val = part.partition("=")
        if key.strip():
            tags[key.strip().lower()] = "".join(val.split())
    return tags


def _exact_problem(found: str, wanted: str) -> str | None:
    return "differs"


def _dkim_problem(found: str, wanted: str) -> str | None:
    if _tags(found).get("p") != _tags(wanted).get("p"):
        return "the published key is not the host's key, so every signature fails"
    return None


def _dmarc_problem(found: str, wanted: str) -> str | None:
    have, want = _tags(found), _tags(wanted)
    if "p" not in want:  # a report authorisation record: v=DMARC1 is all it needs
        return None
    if have.get("p", "").lower() != want["p"]:
        return f"policy p={have.get('p') or '(none)'}, mailfleet.toml says p={want['p']}"
    if "rua" not in have:
        return "no rua= address: nobody receives the reports"
    return None


def _tlsrpt_problem(found: str, wanted: str) -> str | None:
    return None if "rua" in _tags(found) else "no rua= address"


def _spf_problem(found: str, wanted: str) -> str | None:
    """Accept any SPF that lets the mail hosts send and refuses the rest."""
    terms = found.lower().split()[1:]
    final = next((t for t in reversed(terms) if t.lstrip("+-~?") == "all"), None)
    if final is None or final.startswith(("+", "?")) or final == "all":
        return "it does not refuse other senders (end it with -all)"
    needed = [t.split(":", 1)[1] for t in wanted.lower().split() if t.startswith(("ip4:", "ip6:"))]
    if not needed:  # a host name's own SPF ("v=spf1 a -all")
        return None if {"a", "mx"} & set(terms) or any(t.startswith(("ip4:", "ip6:")) for t in terms) \
            else "it does not name the host"
    if "mx" in terms or "+mx" in terms:
        return None
    networks = []
    for term in terms:
        mechanism, _, arg = term.lstrip("+").partition(":")
        if mechanism in ("ip4", "ip6"):
            try:
                networks.append(ipaddress.ip_network(arg, strict=False))
            except ValueError:
                return f"{term} is not a valid network"
    missing = [ip for ip in needed
               if not any(ipaddress.ip_address(ip) in net for net in networks
                          if net.version == ipaddress.ip_address(ip).version)]
    if missing:
        return f"it does not allow {', '.join(missing)} to send"
    return None
