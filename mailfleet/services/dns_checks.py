"""DNS as part of `mailfleet check`: the records of every domain, looked up as the world sees
them. A required record that is missing or wrong fails the check; the others warn.

A service-layer check (it reads the hosts' DKIM keys): dns/ builds, looks up and compares
records and knows no service."""

from __future__ import annotations

from mailfleet.config import Config
from mailfleet.dns import records as records_mod
from mailfleet.dns.check import Finding, check
from mailfleet.dns.lookup import DnsUnreachable, ResolverLookup
from mailfleet.engine import Engine
from mailfleet.services import opendkim
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service

HOST = "dns"


def dkim_from(keys_by_host: dict[str, dict[str, str | None]], config: Config) -> dict[str, str | None]:
    """The key each domain's record must hold: the first mail host's (hosts sharing a domain
    must share its key; the cluster issue makes them)."""
    for host in config.hosts_with("mail"):
        if host.name in keys_by_host:
            return keys_by_host[host.name]
    return {}


def as_check(finding: Finding) -> CheckResult:
    status = "ok" if not finding.problem else ("fail" if finding.level == "required" else "warn")
    return CheckResult(HOST, f"{finding.kind} {finding.name}", status,
                       finding.message, finding.fix)


def checks(engine: Engine) -> list[CheckResult]:
    config = engine.config
    if not config.dns.check:
        return []
    node = config.lab_without_dns()
    if node:
        return [CheckResult(HOST, "DNS records", "warn",
                            "no DNS server in this lab: the records cannot be looked up",
                            f"mailfleet lab dns {node}")]
    try:
        wanted = records_mod.generate(config, dkim_from(opendkim.public_keys(engine), config))
    except records_mod.MissingAddress as err:
        return [CheckResult(HOST, "DNS records", "fail", str(err))]
    try:
        findings = check(wanted, ResolverLookup(config.dns.resolvers, config.dns.tcp))
    except DnsUnreachable as err:
        return [CheckResult(HOST, "DNS resolver", "fail", err.message, err.hint)]
    return [as_check(f) for f in findings]


SERVICE = Service("dns", checks=checks,
                  reads=lambda engine, plan: [opendkim.print_keys_command(engine.config)]
                  if engine.config.dns.check else [])
