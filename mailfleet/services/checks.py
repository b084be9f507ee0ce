"""Health check results: checking is separate from rendering (Rich table or JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class CheckResult:
    host: str
    name: str
    status: Status
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def expect(host: str, name: str, actual: object, wanted: object, fix: str) -> CheckResult:
    """ok when `actual == wanted`, else a failure that says what was found and what to do."""
    if actual == wanted:
        return CheckResult(host, name, "ok", f"{wanted}")
    return CheckResult(host, name, "fail", f"is {actual!r}, expected {wanted!r}", fix)


def all_passed(results: list[CheckResult]) -> bool:
    """True when no check failed (warnings do not fail `mailfleet check`)."""
    return all(r.status != "fail" for r in results)


def score(results: list[CheckResult]) -> tuple[int, int]:
    """(checks that did not fail, all checks): the seed's "Health Score 9/9"."""
    return sum(r.status != "fail" for r in results), len(results)
