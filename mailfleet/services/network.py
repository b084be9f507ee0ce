"""The host's network as the mail system needs it: checks only (the provider configures it).

Interfaces up, a default route, a resolver that answers and gives the host's own name the
address the world uses for it (asked through DNS only: /etc/hosts maps the name to 127.0.1.1
for Postfix), and IPv6 as it really is: a host that has IPv6 which the config does not name
sends mail over it without SPF or PTR for it.
"""

from __future__ import annotations

from pyinfra.facts.server import Command

from mailfleet.config import HostSettings
from mailfleet.engine import Engine
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service
from mailfleet.services.wireguard import INTERFACE

_MARK = "@@"
_STATE = "; ".join([
    f"echo '{_MARK}links'; ip -br link show | grep -v '^lo '",
    f"echo '{_MARK}route4'; ip -4 route show default",
    f"echo '{_MARK}route6'; ip -6 route show default",
    f"echo '{_MARK}addr6'; ip -6 -br addr show scope global | awk '{{$1=$2=\"\"; print}}'",
    f"echo '{_MARK}resolvers'; awk '/^nameserver/ {{print $2}}' /etc/resolv.conf",
    f"echo '{_MARK}name'; hostname",
    f"echo '{_MARK}lookup'; timeout 8 getent -s dns ahostsv4 \"$(hostname)\" | awk '{{print $1}}' | sort -u",
    "true",
])


def parse(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(_MARK):
            current = line[len(_MARK):].strip()
            sections[current] = []
        elif current and line.strip():
            sections[current].append(line.strip())
    return sections


def interfaces(links: list[str]) -> dict[str, str]:
    """{name: state} from `ip -br link` ("wg0 UNKNOWN ...": a tunnel has no carrier state)."""
    found = {}
    for line in links:
        parts = line.split()
        if len(parts) >= 2:
            found[parts[0].split("@")[0]] = parts[1]
    return found


def route_device(route: list[str]) -> str | None:
    words = route[0].split() if route else []
    return words[words.index("dev") + 1] if "dev" in words[:-1] else None


def host_checks(name: str, settings: HostSettings, state: dict[str, list[str]],
                dns_checked: bool, vpn_interface: str | None,
                lab_without_dns: bool = False) -> list[CheckResult]:
    results = []
    links = interfaces(state.get("links", []))
    default = route_device(state.get("route4", []))
    needed = [d for d in (default, vpn_interface) if d]
    down = [d for d in needed if links.get(d) not in ("UP", "UNKNOWN")]
    shown = ", ".join(f"{d} {links.get(d, 'missing')}" for d in needed) or "none"
    results.append(CheckResult(name, "network interfaces", "fail" if down or not links else "ok",
                               shown if not down else f"not up: {shown}",
                               "ip link; journalctl -b -u systemd-networkd -u networking"))
    if default:
        results.append(CheckResult(name, "default route", "ok", state["route4"][0]))
    else:
        results.append(CheckResult(name, "default route", "fail",
                                   "no IPv4 default route: no mail can leave the host",
                                   "ip route add default via GATEWAY (and in the network config)"))
    resolvers = state.get("resolvers", [])
    fqdn = (state.get("name") or ["?"])[0]
    answers = state.get("lookup", [])
    wanted = settings.public_address(4)
    fix = "check /etc/resolv.conf on the host and the A record (`mailfleet dns check`)"
    if not resolvers:
        results.append(CheckResult(name, "name resolution", "fail", "no nameserver in /etc/resolv.conf",
                                   fix))
    elif not answers and lab_without_dns:
        results.append(CheckResult(
            name, "name resolution", "warn",
            f"{', '.join(resolvers)} gave no address for {fqdn}: no DNS server in this lab",
            f"mailfleet lab dns {name}"))
    elif not answers:
        results.append(CheckResult(
            name, "name resolution", "fail" if dns_checked else "warn",
            f"{', '.join(resolvers)} gave no address for {fqdn}"
            + ("" if dns_checked else " ([dns] check = false: no public DNS expected yet)"), fix))
    elif wanted and wanted not in answers:
        results.append(CheckResult(name, "name resolution", "fail",
                                   f"{fqdn} resolves to {', '.join(answers)}, not {wanted}", fix))
    else:
        results.append(CheckResult(name, "name resolution", "ok",
                                   f"{fqdn} → {', '.join(answers)} (through {', '.join(resolvers)})"))
    results.append(ipv6_check(name, settings, state))
    return results


def ipv6_check(name: str, settings: HostSettings, state: dict[str, list[str]]) -> CheckResult:
    addresses = [a.split("/")[0] for line in state.get("addr6", []) for a in line.split()]
    routed = bool(state.get("route6"))
    configured = settings.ipv6
    if configured and (configured not in addresses or not routed):
        return CheckResult(name, "IPv6", "fail",
                           f"the config names {configured}, but the host has "
                           f"{', '.join(addresses) or 'no global IPv6 address'}"
                           f"{'' if routed else ' and no IPv6 default route'}",
                           "fix the host's IPv6, or remove ipv6 from its [[hosts]] entry")
    if configured:
        return CheckResult(name, "IPv6", "ok", f"{configured}, routed (AAAA and SPF name it)")
    if addresses and routed:
        return CheckResult(name, "IPv6", "warn",
                           f"the host has {', '.join(addresses)} but the config names no ipv6: "
                           "mail sent over IPv6 has no SPF or PTR for it",
                           "set ipv6 in its [[hosts]] entry and publish the records")
    return CheckResult(name, "IPv6", "ok", "none: mail goes over IPv4 only (no AAAA published)")


def checks(engine: Engine) -> list[CheckResult]:
    vpn = INTERFACE if engine.config.features.wireguard else None
    return [result for name, text in engine.facts(Command, command=_STATE).items()
            for result in host_checks(name, engine.settings[name], parse(text or ""),
                                      engine.config.dns.check, vpn,
                                      engine.config.lab_without_dns() is not None)]


SERVICE = Service("network", checks=checks, reads=(_STATE,))
