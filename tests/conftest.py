"""The run's timeline, printed at its end: when each test module started and ended on which
worker, and how long each worker was busy. It is what tests/lab/conftest.py's
MODULE_SECONDS order is tuned from (a worker idle while the other still runs is time lost)."""

from __future__ import annotations

import pytest

_SPANS: dict[tuple[str, str], list[float]] = {}  # (worker, module) -> [first start, last stop]


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    node = getattr(report, "node", None)  # (set on the controller for a worker's report)
    worker = getattr(getattr(node, "gateway", None), "id", None) or "main"
    module = report.nodeid.split("::", 1)[0]
    span = _SPANS.setdefault((worker, module), [report.start, report.stop])
    span[0], span[1] = min(span[0], report.start), max(span[1], report.stop)


def pytest_terminal_summary(terminalreporter) -> None:
    if not _SPANS:
        return
    begin = min(start for start, _ in _SPANS.values())
    write = terminalreporter.write_line
    terminalreporter.section("module timeline (seconds from the first test)")
    busy: dict[str, float] = {}
    for (worker, module), (start, stop) in sorted(_SPANS.items(), key=lambda i: i[1][0]):
        if "/lab/" in module or stop - start >= 10:
            write(f"{worker:5} {start - begin:7.0f} {stop - begin:7.0f} {stop - start:6.0f}  "
                  f"{module}")
        busy[worker] = busy.get(worker, 0.0) + stop - start
    for worker, seconds in sorted(busy.items()):
        ends = max(stop for (w, _), (_, stop) in _SPANS.items() if w == worker) - begin
        write(f"{worker}: busy {seconds:.0f} s, last test ended at {ends:.0f} s")
