"""The README's first command: `mailfleet demo` boots a Debian 13 host, deploys the full
stack, sends and reads a real mail, prints the health check, and (with --down) cleans up."""

from __future__ import annotations

import re

from conftest import Cli, lab_leftovers, lab_name

# its own lab name per test run and xdist worker: two runs (or a user's own demo) never meet
LAB = lab_name("demo")


def test_demo_deploys_sends_reads_and_checks_then_cleans_up(tmp_path):
    cli = Cli(LAB, tmp_path / "unused.toml")
    result = cli("demo", "--down", "--name", LAB, timeout=900)
    out = result.stdout
    assert "n1:" in out and "changed" in out
    assert "sent on 587 and read over IMAP: Hello from mailfleet demo" in out
    assert "DKIM signature verifies" in out
    assert re.search(r"webmail https://127\.0\.0\.1:\d+/ answers with Roundcube's login page", out)
    lines = [line.split() for line in out.splitlines()]
    assert ["ok", "n1", "host", "name", "mail.example.internal"] in lines
    for check in (["delivery"], ["DKIM", "signature"], ["submission", "587"], ["TLS", "on", "993"]):
        assert any(l[:2] == ["ok", "n1"] and l[2:2 + len(check)] == check for l in lines), check
    score = re.search(r"score (\d+)/(\d+)", out)
    assert score and score[1] == score[2] and int(score[2]) >= 30, out[-2000:]
    assert lab_leftovers(LAB) == {"namespaces": [], "processes": [], "mounts": []}
