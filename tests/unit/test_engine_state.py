"""The engine's own state (operation names, failure reasons) belongs to one Engine: two
engines in one process (the CLI's deploy then check, a test driving two labs) keep theirs apart."""

from __future__ import annotations

import pytest
from pyinfra.context import ctx_state
from pyinfra.operations import server

from mailfleet.config import parse
from mailfleet.engine import Engine, HostContext
from mailfleet.engine.runner import explain_failure

CONFIG = parse("""
[mail]
domain = "example.org"
hostname = "mx1.example.org"

[[hosts]]
name = "mx1"
address = "192.0.2.10"
""")


def engine() -> Engine:
    # check mode: operations are planned, never run; nothing connects
    return Engine(CONFIG, list(CONFIG.hosts), check=True)


def test_a_failure_reason_goes_to_the_engine_that_runs_the_operation():
    first, second = engine(), engine()
    with ctx_state.use(first.state):  # as pyinfra sets it while first's operations run
        explain_failure("mx1", "The admin could not log in.")
    assert second._report().hosts["mx1"].error is None
    assert first._report().hosts["mx1"].error == "The admin could not log in."
    assert first._report().hosts["mx1"].error is None  # reported once


def test_explain_failure_outside_an_engine_is_a_programming_error():
    with pytest.raises(RuntimeError):
        explain_failure("mx1", "why")


def _step(name: str):
    def step(ctx: HostContext) -> None:
        ctx.op(server.shell, name=name, commands=["true"])
    return step


def test_each_engine_reports_its_own_operation_names():
    first, second = engine(), engine()
    first.deploy([_step("Say yes on the first engine")])
    second.deploy([_step("Say yes on the second engine")])
    assert first._report().hosts["mx1"].changed == ["Say yes on the first engine"]
    assert second._report().hosts["mx1"].changed == ["Say yes on the second engine"]
