"""The policy-rc.d a first install runs with (templates/system/policy-rc.d.j2), run by `sh`
as invoke-rc.d and deb-systemd-invoke call it: only starts of mailfleet's units are refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mailfleet.engine.operations import POLICY_MARK
from mailfleet.templating import render

UNITS = ["postfix", "postgresql", "php8.4-fpm", "certbot"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy-rc.d"
    path.write_text(render("system/policy-rc.d.j2", units=UNITS))
    return path


@pytest.mark.parametrize(("args", "status"), [
    (["postfix.service", "start"], 101),
    (["postfix@-.service", "start"], 101),
    (["--quiet", "postgresql", "start"], 101),
    (["postgresql@17-main.service", "start"], 101),
    (["php8.4-fpm", "start"], 101),
    (["certbot.timer", "start"], 101),
    (["php8.4-fpm", "restart"], 101),  # PHP's extension triggers restart it
    (["postfix.service", "stop"], 0),
    (["postfix.service", "reload"], 0),
    (["ssh.service", "start"], 0),
    (["postfixadmin", "start"], 0),
    (["php8.2-fpm", "start"], 0),
])
def test_only_starts_of_mailfleets_units_are_refused(policy: Path, args: list[str], status: int):
    assert subprocess.run(["sh", str(policy), *args]).returncode == status


def test_it_carries_the_mark_a_deploy_knows_it_by(policy: Path):
    assert policy.read_text().splitlines()[1].startswith(POLICY_MARK)
