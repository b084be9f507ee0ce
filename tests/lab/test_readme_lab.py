"""The README's lab rehearsal, line by line as a new user types it: `init` first, then `lab up`
on Debian 12 and 13, `deploy`, `check` (exit 0), `lab down` (the config as `init` wrote it)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import Cli, lab_leftovers, lab_name

from mailfleet.lab.network import GATEWAY

LAB = lab_name(8)
README = Path(__file__).resolve().parents[2] / "README.md"


def rehearsal() -> list[list[str]]:
    """The command lines of the README's rehearsal block, comments stripped."""
    block = re.search(r"<!-- lab-rehearsal -->\s*```sh\n(.*?)```", README.read_text(), re.S)
    assert block, "the README lost its lab rehearsal block"
    return [shlex.split(line, comments=True) for line in block[1].splitlines() if line.strip()]


def test_the_readme_lab_rehearsal_ends_green_and_leaves_the_config_as_init_wrote_it(tmp_path):
    lines = rehearsal()
    assert [line[:3] for line in lines] == [
        ["mailfleet", "init", "--domain"], ["mailfleet", "lab", "up"], ["mailfleet", "deploy"],
        ["mailfleet", "check"], ["mailfleet", "lab", "down"]]
    env = {k: v for k, v in os.environ.items() if k != "MAILFLEET_CONFIG"}
    env["MAILFLEET_LAB"] = LAB  # the README's default lab name, made the test's own

    def run(line: list[str]) -> subprocess.CompletedProcess:
        assert line[0] == "mailfleet"
        return subprocess.run([sys.executable, "-m", "mailfleet", *line[1:]], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=1200,
                              stdin=subprocess.DEVNULL)

    cli = Cli(LAB, tmp_path / "mailfleet.toml")  # the same file, for the extra looks below
    try:
        init, up, deploy, check, down = lines
        assert run(init).returncode == 0
        as_init_wrote_it = cli.config.read_text()
        booted = run(up)
        assert booted.returncode == 0, booted.stderr
        assert "added n1, n2 to" in booted.stderr and "nothing else" in booted.stderr
        deployed = run(deploy)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        checked = run(check)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        # what made it green: the missing DNS is one warning saying what to run
        results = cli.json("check")["checks"]
        dns = [c for c in results if c["host"] == "dns"]
        assert [(c["status"], c["fix"]) for c in dns] == [("warn", "mailfleet lab dns n1")], dns
        assert not [c for c in results if c["status"] == "fail"]
        for node in ("n1", "n2"):
            jail = cli.ssh(node, "grep ^ignoreip /etc/fail2ban/jail.d/mailfleet.local")
            assert GATEWAY in jail.split(), jail
        assert cli.json("deploy")["changes"] == 0

        stopped = run(down)
        assert stopped.returncode == 0, stopped.stderr
        assert "took n1, n2 out of" in stopped.stderr
        assert cli.config.read_text() == as_init_wrote_it
    finally:
        cli("lab", "down", check=False)
    assert lab_leftovers(LAB) == {"namespaces": [], "processes": [], "mounts": []}
