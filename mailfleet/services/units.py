"""Are the services running and listening where they should? One fact per host for all
units, one for all listening sockets; which units and ports, each host's plan says (the
units its services declare)."""

from __future__ import annotations

import shlex

from pyinfra.facts.server import Command

from mailfleet.engine import Engine
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service, Unit

LOCALHOST = {"127.0.0.1", "::1"}
# the exposures whose ports listen on the host's private (VPN) address too
PRIVATE = ("private", "cluster", "mail cluster", "web cluster")


def parse(text: str, units: list[str]) -> tuple[dict[str, str], dict[int, set[str]]]:
    """({unit: state}, {port: listening addresses}) from `_command(units)`'s output."""
    states_text, _, sockets_text = text.partition("==")
    states = dict(zip(units, states_text.split()))
    listening: dict[int, set[str]] = {}
    for line in sockets_text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and ":" in parts[3]:
            address, _, port = parts[3].rpartition(":")
            if port.isdigit():
                listening.setdefault(int(port), set()).add(address.strip("[]"))
    return states, listening


def _command(units: list[str]) -> str:
    return f"systemctl is-active {' '.join(shlex.quote(u) for u in units)}; echo ==; ss -Hltn"


def host_checks(name: str, units: list[Unit], text: str,
                private: frozenset[str] = frozenset()) -> list[CheckResult]:
    """Each unit running, each port listening: a `local` port on localhost only, a
    `private` one also on `private` (the host's address for the fleet) and nowhere else."""
    states, listening = parse(text, [u.name for u in units])
    results = []
    for unit in units:
        state = states.get(unit.name, "unknown")
        if state != "active":
            results.append(CheckResult(name, f"{unit.name} running", "fail", state,
                                       f"see `journalctl -u {unit.name}` on the host"))
            continue
        results.append(CheckResult(name, f"{unit.name} running", "ok", "active"))
        for port in unit.ports:
            addresses = listening.get(port.number, set())
            if not addresses:
                results.append(CheckResult(name, f"port {port.number}", "fail",
                                           f"{port.what} is not listening",
                                           f"see `journalctl -u {unit.name}` on the host"))
            elif port.exposure != "public" and addresses - LOCALHOST - (
                    private if port.exposure in PRIVATE else frozenset()):
                where = " and ".join(["localhost", *(sorted(private) if port.exposure in PRIVATE
                                                     else [])])
                results.append(CheckResult(name, f"port {port.number}", "fail",
                                           f"{port.what} listens on {', '.join(sorted(addresses))}",
                                           f"it must listen on {where} only: run `mailfleet deploy`"))
            else:
                results.append(CheckResult(name, f"port {port.number}", "ok", port.what))
    return results


def checks(engine: Engine) -> list[CheckResult]:
    wanted = {name: units for name, plan in engine.plans.items()
              if (units := [u for u in plan.units if u.checked])}
    commands = {name: _command([u.name for u in units]) for name, units in wanted.items()}
    # one read for all hosts with the same units (every host, on a one-shape fleet)
    found = {command: engine.facts(Command, command=command,
                                   hosts=[n for n, c in commands.items() if c == command])
             for command in set(commands.values())}
    return [result for name, units in wanted.items()
            for result in host_checks(name, units, found[commands[name]].get(name) or "",
                                      frozenset({engine.plans[name].private_address} - {""}))]


def _reads(engine: Engine, plan) -> list[str]:
    units = [u.name for u in plan.units if u.checked]
    return [_command(units)] if units else []


SERVICE = Service("units", checks=checks, reads=_reads)
