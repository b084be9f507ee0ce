"""Are the services running and listening where they should? One fact per host for all
units, one for all listening sockets."""

from __future__ import annotations

from pyinfra.facts.server import Command

from mailfleet.engine import Engine
from mailfleet.services import dovecot, nginx, postfix
from mailfleet.services.checks import CheckResult

# unit -> {port: what listens there}; loopback-only services are checked on 127.0.0.1
UNITS: dict[str, dict[int, str]] = {
    "postgresql": {5432: "PostgreSQL (localhost)"},
    "postfix": {port: f"Postfix {name}" for port, name in postfix.PORTS.items()},
    "dovecot": {**{port: f"Dovecot {name}" for port, name in dovecot.PORTS.items()},
                postfix.QUOTA_STATUS_PORT: "Dovecot quota-status (localhost)"},
    "opendkim": {postfix.OPENDKIM_PORT: "OpenDKIM milter (localhost)"},
    "opendmarc": {postfix.OPENDMARC_PORT: "OpenDMARC milter (localhost)"},
    "nginx": nginx.PORTS,
}
LOCAL_ONLY = {5432, postfix.QUOTA_STATUS_PORT, postfix.OPENDKIM_PORT, postfix.OPENDMARC_PORT}
_COMMAND = f"systemctl is-active {' '.join(UNITS)}; echo ==; ss -Hltn"


def parse(text: str) -> tuple[dict[str, str], dict[int, set[str]]]:
    """({unit: state}, {port: listening addresses}) from `_COMMAND`'s output."""
    states_text, _, sockets_text = text.partition("==")
    states = dict(zip(UNITS, states_text.split()))
    listening: dict[int, set[str]] = {}
    for line in sockets_text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and ":" in parts[3]:
            address, _, port = parts[3].rpartition(":")
            if port.isdigit():
                listening.setdefault(int(port), set()).add(address.strip("[]"))
    return states, listening


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, text in engine.facts(Command, command=_COMMAND).items():
        states, listening = parse(text or "")
        for unit, ports in UNITS.items():
            state = states.get(unit, "unknown")
            label = unit
            if state != "active":
                results.append(CheckResult(name, f"{label} running", "fail", state,
                                           f"see `journalctl -u {unit}` on the host"))
                continue
            results.append(CheckResult(name, f"{label} running", "ok", "active"))
            for port, what in ports.items():
                addresses = listening.get(port, set())
                if not addresses:
                    results.append(CheckResult(name, f"port {port}", "fail", f"{what} is not listening",
                                               f"see `journalctl -u {unit}` on the host"))
                elif port in LOCAL_ONLY and addresses - {"127.0.0.1", "::1"}:
                    results.append(CheckResult(name, f"port {port}", "fail",
                                               f"{what} listens on {', '.join(sorted(addresses))}",
                                               "it must listen on localhost only: run `mailfleet deploy`"))
                else:
                    results.append(CheckResult(name, f"port {port}", "ok", what))
    return results
