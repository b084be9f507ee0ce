"""The engine's helpers on real hosts: a rejected config never replaces a working one,
debconf answers stick, and a service is reloaded only when its config changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import Cli

PROBE = Path(__file__).with_name("engine_probe.py")
DROPIN = "/etc/ssh/sshd_config.d/50-probe.conf"


def probe(cli: Cli, scenario: str, check: bool = False) -> dict:
    result = subprocess.run([sys.executable, str(PROBE), str(cli.config), scenario,
                             *(["check"] if check else [])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_validated_write_debconf_and_reload_on_change(two_release_lab: Cli):
    cli = two_release_lab
    first = probe(cli, "good")
    assert first["ok"], first
    for host in ("n1", "n2"):
        assert set(first["hosts"][host]["changed"]) >= {"sshd drop-in", "preseed", "Reload ssh"}
        assert cli.ssh(host, f"stat -c %a {DROPIN}") == "600"
        assert "tzdata/Zones/Europe: Berlin" in cli.ssh(host, "debconf-show tzdata")

    again = probe(cli, "good")
    assert again["changes"] == 0, again  # no reload without a change

    predicted = probe(cli, "other", check=True)
    assert predicted["hosts"]["n1"]["changed"] == ["sshd drop-in", "Reload ssh"]
    assert "MaxAuthTries" not in cli.ssh("n1", f"cat {DROPIN}")

    bad = probe(cli, "bad")
    assert bad["ok"] is False
    assert bad["hosts"]["n2"]["failed"] == ["sshd drop-in"]
    for host in ("n1", "n2"):
        assert "prohibit-password" in cli.ssh(host, f"cat {DROPIN}"), "old file must stay"
        assert cli.ssh(host, f"ls {DROPIN}.mailfleet-new 2>/dev/null || echo none") == "none"
        assert cli.ssh(host, "systemctl is-active ssh") == "active"
    cli.ssh("n1", f"rm -f {DROPIN}")
    cli.ssh("n2", f"rm -f {DROPIN}")
