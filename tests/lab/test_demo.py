"""The README's first command: `mailfleet demo` boots a Debian 13 host, deploys, checks."""

from __future__ import annotations

from conftest import Cli, lab_leftovers


def test_demo_deploys_and_checks_then_cleans_up(tmp_path):
    cli = Cli("demo", tmp_path / "unused.toml")
    result = cli("demo", "--down", timeout=600)
    assert "n1:" in result.stdout and "changed" in result.stdout
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["ok", "n1", "host", "name", "mail.example.test"] in lines
    assert ["ok", "n1", "mail", "name", "mail.example.test"] in lines
    assert lab_leftovers("demo") == {"namespaces": [], "processes": [], "mounts": []}
