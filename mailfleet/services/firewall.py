"""The host firewall (UFW): incoming traffic denied except the ports the deployed services
listen on publicly, derived from the ports its services declare (the host plan), plus the port
sshd really listens on; a `private` port (PostgreSQL for web-only hosts) is opened to those
hosts' addresses alone. Rules mailfleet did not ask for are removed, so what is open is
exactly what `check` expects.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command

from mailfleet.config import Config
from mailfleet.engine import Engine, HostContext
from mailfleet.services import ssh_vpn, sshd
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import HostPlan, Service
from mailfleet.services.wireguard import INTERFACE

PACKAGES = ["ufw"]
_UFW = ("ufw status 2>/dev/null | head -n 1; ufw show added 2>/dev/null | grep '^ufw '; "
        "grep -E '^DEFAULT_(INPUT|OUTPUT)_POLICY=' /etc/default/ufw 2>/dev/null")
SNAPSHOT = {"firewall": _UFW}  # (deploy reads sshd's ports from sshd's own section)
_STATE = f"{_UFW}; {sshd.PORTS}"
# the exposures opened on the VPN to some of the cluster's other members: the plan's list
CLUSTER_PEERS = {"cluster": "cluster_peers", "mail cluster": "mail_peers",
                 "web cluster": "web_peers"}


def public_ports(plan: HostPlan, ssh_ports: set[int]) -> dict[int, str]:
    """{port: what} the host's services need reachable from outside."""
    wanted = {port: "ssh" for port in ssh_ports}
    for port in plan.ports:
        if port.exposure == "public":
            wanted[port.number] = port.what
    return dict(sorted(wanted.items()))


def wanted_rules(config: Config, plan: HostPlan, ssh_ports: set[int],
                 ssh_on_vpn: bool) -> dict[str, str]:
    """{ufw rule as `ufw show added` prints it: what it is for}."""
    rules = {}
    for port, what in public_ports(plan, ssh_ports).items():
        if what == "ssh" and ssh_on_vpn:
            rules[vpn_rule(port)] = "ssh over the VPN"
        else:
            rules[rule(port)] = what
    for port in plan.ports:  # what only the fleet's other hosts use: to them alone
        if port.exposure == "private":
            for peer in plan.database_peers:
                rules[private_rule(peer, port.number)] = f"{port.what} for {peer}"
        elif port.exposure in CLUSTER_PEERS:  # others, over the VPN only
            peers = getattr(plan, CLUSTER_PEERS[port.exposure])
            for peer in peers:
                rules[cluster_rule(peer, port.number)] = f"{port.what} for {peer}"
    if config.features.wireguard:
        rules[f"allow {config.vpn.port}/udp"] = "wireguard"
    return rules


def private_rule(source: str, port: int) -> str:
    return f"allow from {source} to any port {port} proto tcp"


def cluster_rule(source: str, port: int) -> str:
    return f"allow in on {INTERFACE} from {source} to any port {port} proto tcp"


def vpn_rule(port: int) -> str:
    return f"allow in on {INTERFACE} to any port {port} proto tcp"


def _port_list(rules: Iterable[str]) -> str:
    return ", ".join(r.removeprefix("allow ").replace(" to any port ", " ")
                     .replace(" proto tcp", "/tcp").replace("from ", "") for r in rules)


def parse(text: str) -> tuple[bool, list[str], dict[str, str], set[int]]:
    """(active, added rules like "allow 25/tcp", default policies, sshd ports (22 when the
    text has none))."""
    active = False
    rules: list[str] = []
    policies: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Status:"):
            active = line.split()[-1] == "active"
        elif line.startswith("ufw "):
            rules.append(line[4:].split(" comment ")[0].strip())
        elif line.startswith("DEFAULT_"):
            key, _, value = line.partition("=")
            policies[key] = value.strip('"')
    return active, rules, policies, sshd.parse_ports(text)


def rule(port: int) -> str:
    return f"allow {port}/tcp"


@operation()
def firewall(wanted: dict[str, str], active: bool, rules: list[str], policies: dict[str, str]):
    """Allow the wanted ports first (never lock out SSH), drop other rules, deny the rest."""
    commands = [f"ufw {allow} comment {shlex.quote(f'mailfleet: {what}')}"
                for allow, what in wanted.items() if allow not in rules]
    commands += [f"ufw --force delete {extra}" for extra in rules if extra not in wanted]
    if policies.get("DEFAULT_INPUT_POLICY") != "DROP":
        commands.append("ufw default deny incoming")
    if policies.get("DEFAULT_OUTPUT_POLICY") != "ACCEPT":
        commands.append("ufw default allow outgoing")
    if not active:
        commands.append("ufw --force enable")
    if not commands:
        host.noop("the firewall allows exactly the services' ports")
        return
    yield from commands


def deploy(ctx: HostContext) -> None:
    active, rules, policies, _ = parse(ctx.snapshot("firewall"))
    # SSH stays open from everywhere until ssh_vpn.restrict_ssh has proven the VPN path
    wanted = wanted_rules(ctx.config, ctx.plan, sshd.ports(ctx), ssh_vpn.ssh_on_vpn_now(ctx))
    ctx.op(firewall, name=f"Allow only the services' ports in the firewall ({_port_list(wanted)})",
           wanted=wanted, active=active, rules=rules, policies=policies)


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, text in engine.facts(Command, command=_STATE).items():
        active, rules, policies, ssh_ports = parse(text or "")
        wanted = set(wanted_rules(engine.config, engine.plans[name], ssh_ports,
                                  ssh_vpn.vpn_only(engine.config)))
        fix = "run `mailfleet deploy`"
        if not active:
            results.append(CheckResult(name, "firewall", "fail", "UFW is not active", fix))
            continue
        extra, missing = set(rules) - wanted, wanted - set(rules)
        deny = policies.get("DEFAULT_INPUT_POLICY") == "DROP"
        ok = not extra and not missing and deny
        ports = _port_list(sorted(wanted, key=lambda r: int(re.findall(r"(\d+)(?:/| proto)", r)[0])))
        results.append(CheckResult(
            name, "firewall", "ok" if ok else "fail",
            f"active, incoming denied except {ports}" if ok else
            f"extra rules: {sorted(extra) or 'none'}, missing: {sorted(missing) or 'none'}, "
            f"incoming policy {policies.get('DEFAULT_INPUT_POLICY', 'unknown')}", fix))
    return results


SERVICE = Service("firewall", applies=lambda plan: plan.firewall, packages=tuple(PACKAGES),
                  deploy=deploy, checks=checks, reads=(_STATE,), snapshot=SNAPSHOT)
