"""Health check results: checking is separate from rendering (Rich table or JSON)."""

from __future__ import annotations

import shlex
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


def https_fetch(path: str, options: str = "") -> str:
    """A shell command fetching a page of the host over HTTPS by the host's own name, as a
    client would (curl `options` added, e.g. a method or -w)."""
    return ('n=$(hostname -f); curl -sk --max-time 10 --resolve "$n:443:127.0.0.1" '
            f'{options + " " if options else ""}"https://$n"{shlex.quote(path)}')


def https_count(path: str, pattern: str) -> str:
    """Count `pattern` in such a page (`grep -c`: 0 when absent; its exit status 1 then
    must not make the whole fact fail)."""
    return f"{https_fetch(path)} | grep -c {shlex.quote(pattern)} || true"
