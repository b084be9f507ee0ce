"""`lab up` writes its hosts into an existing config without losing the user's edits."""

from __future__ import annotations

from mailfleet.config import load
from mailfleet.lab.inventory import remove_hosts, write_hosts
from mailfleet.templating import render_init

LAB_HOST = {"name": "n1", "address": "127.0.0.1", "ssh_port": 40000, "ssh_user": "root",
            "ssh_key": "/k", "ssh_known_hosts": "/kh", "roles": ["mail"], "lab": "t1"}


def test_creates_a_config_when_missing(tmp_path):
    path = tmp_path / "mailfleet.toml"
    write_hosts(path, "t1", [LAB_HOST])
    cfg = load(path)
    assert [(h.name, h.ssh_port, h.lab) for h in cfg.hosts] == [("n1", 40000, "t1")]


def test_replaces_only_its_own_hosts_and_keeps_comments(tmp_path):
    path = tmp_path / "mailfleet.toml"
    text = render_init("example.org", "mail.example.org", [{"name": "prod", "address": "203.0.113.5"}])
    path.write_text(text.replace('domain = "example.org"', 'domain = "example.org"  # my domain'))
    write_hosts(path, "t1", [LAB_HOST])
    write_hosts(path, "t1", [{**LAB_HOST, "ssh_port": 40001}])
    write_hosts(path, "other", [{**LAB_HOST, "name": "o1", "lab": "other", "ssh_port": 40002}])
    cfg = load(path)
    assert [(h.name, h.ssh_port) for h in cfg.hosts] == [("prod", 22), ("n1", 40001), ("o1", 40002)]
    assert "# my domain" in path.read_text()
    remove_hosts(path, "t1")
    assert [h.name for h in load(path).hosts] == ["prod", "o1"]
