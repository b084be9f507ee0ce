"""What a deploy did, per host: the operations it ran, changed and failed (read by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class HostReport:
    name: str
    operations: int = 0
    changed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str | None = None
    # SSH commands and uploads sent to the host (fact reads included), and the pyinfra facts
    # read live that the snapshot could have answered before any change (engine/facts.py)
    commands: int = 0
    fact_misses: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "changes": len(self.changed),
            "changed": self.changed,
            "failed": self.failed,
            "error": self.error,
            "commands": self.commands,
            "fact_misses": self.fact_misses,
        }


@dataclass
class DeployReport:
    check: bool
    hosts: dict[str, HostReport]

    @property
    def ok(self) -> bool:
        return all(not h.failed and not h.error for h in self.hosts.values())

    @property
    def changes(self) -> int:
        return sum(len(h.changed) for h in self.hosts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "ok": self.ok,
            "changes": self.changes,
            "hosts": {n: h.as_dict() for n, h in self.hosts.items()},
        }


def merged(reports: list[DeployReport]) -> DeployReport:
    """One report of a deploy that ran in phases (each host is in one of them)."""
    hosts: dict[str, HostReport] = {}
    for report in reports:
        hosts.update(report.hosts)
    return DeployReport(check=bool(reports) and reports[0].check, hosts=hosts)
