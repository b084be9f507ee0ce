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


def test_lab_up_then_down_gives_back_the_file_init_wrote(tmp_path):
    """Into an existing file only the [[hosts]] go, and taking them out restores it byte for byte."""
    path = tmp_path / "mailfleet.toml"
    text = render_init("example.test", "mail.example.test")
    path.write_text(text)
    assert write_hosts(path, "t1", [LAB_HOST, {**LAB_HOST, "name": "n2"}]) == []
    assert load(path).fail2ban.ignore == [] and load(path).dns.check is True
    assert write_hosts(path, "t1", [LAB_HOST]) == ["n1", "n2"]  # a second `lab up`
    assert remove_hosts(path, "t1") == ["n1"]
    assert path.read_text() == text


def test_a_lab_without_dns_is_told_apart_from_real_hosts(tmp_path):
    from mailfleet.services.fail2ban import ignored

    path = tmp_path / "mailfleet.toml"
    path.write_text(render_init("example.test", "mail.example.test"))
    write_hosts(path, "t1", [LAB_HOST])
    cfg = load(path)
    assert cfg.lab_without_dns() == "n1"
    assert ignored(cfg, cfg.hosts[0]) == ["10.77.0.1"]
    # real hosts in the same file: their DNS is checked for real, their fail2ban unchanged
    path.write_text(render_init("example.test", "mail.example.test",
                                [{"name": "prod", "address": "203.0.113.5"}]))
    write_hosts(path, "t1", [LAB_HOST])
    cfg = load(path)
    assert cfg.lab_without_dns() is None
    assert ignored(cfg, cfg.hosts[0]) == [] and ignored(cfg, cfg.hosts[1]) == ["10.77.0.1"]


def test_init_force_after_lab_up_keeps_the_lab_hosts(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "mailfleet.toml"
    write_hosts(path, "t1", [LAB_HOST])
    run = [sys.executable, "-m", "mailfleet", "-c", str(path), "init", "--domain", "other.test"]
    refused = subprocess.run(run, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "lab's [[hosts]] in it are kept" in refused.stderr
    done = subprocess.run([*run, "--force"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    cfg = load(path)
    assert cfg.mail.domain == "other.test" and [h.name for h in cfg.hosts] == ["n1"]
