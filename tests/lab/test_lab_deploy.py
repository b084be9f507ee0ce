"""The chain end to end: boot Debian 12 and 13, deploy, check, redeploy with zero changes, tear down.

The first tests need hosts nothing was deployed to (`bare_two_release_lab`: the shared lab
when this module is the first to deploy it, else a lab of its own)."""

from __future__ import annotations

import os
import re
import signal

import tomlkit

from conftest import Cli, key_login, lab_leftovers, lab_name, password_login

from mailfleet.lab.boot import VPS_PASSWORD, VPS_USER

from mailfleet.config import load


def test_lab_status_lists_both_releases(bare_two_release_lab: Cli):
    status = bare_two_release_lab.json("lab", "status")
    assert status["running"] is True
    nodes = {n["name"]: n for n in status["nodes"]}
    assert (nodes["n1"]["release"], nodes["n1"]["address"]) == ("bookworm", "10.77.0.11")
    assert (nodes["n2"]["release"], nodes["n2"]["address"]) == ("trixie", "10.77.0.12")
    assert bare_two_release_lab.ssh("n1", "cut -d. -f1 /etc/debian_version") == "12"
    assert bare_two_release_lab.ssh("n2", "cat /etc/debian_version").startswith("13")
    assert bare_two_release_lab.ssh("n2", "systemctl is-system-running") == "running"


def test_nodes_reach_each_other_and_the_lab_network_reaches_them(bare_two_release_lab: Cli):
    probe = 'timeout 3 bash -c "echo > /dev/tcp/{}/22" && echo open'
    assert bare_two_release_lab.ssh("n1", probe.format("n2")) == "open"
    assert bare_two_release_lab.ssh("n2", probe.format("10.77.0.11")) == "open"
    banner = bare_two_release_lab(
        "lab", "exec", "--", "python3", "-c",
        "import socket; s = socket.create_connection(('10.77.0.12', 22), 3); print(s.recv(7).decode())",
    ).stdout
    assert banner.startswith("SSH-2.0")


def test_lab_hosts_are_written_to_the_config(bare_two_release_lab: Cli):
    cfg = load(bare_two_release_lab.config)
    lab = bare_two_release_lab.lab  # the shared lab (lab_name(1)) in the usual order
    assert [(h.name, h.lab) for h in cfg.hosts] == [("n1", lab), ("n2", lab)]


def test_deploy_check_then_deploy_then_zero_changes(bare_two_release_lab: Cli):
    cli = bare_two_release_lab
    dry = cli.json("deploy", "--check")
    assert dry["check"] is True and dry["changes"] > 0
    assert "Set the host name" in dry["hosts"]["n1"]["changed"]
    assert cli.ssh("n1", "hostname") == "n1", "--check must not change anything"

    # a fresh VPS: root logs in with a key or a password, and so does the provider's user
    for name in ("n1", "n2"):
        assert key_login(cli, name, "root").returncode == 0
        assert password_login(cli, name, "root", VPS_PASSWORD)
        assert password_login(cli, name, VPS_USER, VPS_PASSWORD)

    first = cli.json("deploy")
    assert first["ok"] is True, first
    # one login left: the admin user, with its key; mailfleet itself now logs in as it
    assert {h.name: h.ssh_user for h in load(cli.config).hosts} == {"n1": "mfadmin", "n2": "mfadmin"}
    for name in ("n1", "n2"):
        refused = key_login(cli, name, "root")
        assert refused.returncode != 0 and "Permission denied (publickey)" in refused.stderr
        for user in ("root", VPS_USER, "mfadmin"):
            assert not password_login(cli, name, user, VPS_PASSWORD), f"{user} logged in with a password"
        admin = key_login(cli, name, "mfadmin", "sudo -n true && id -un && id -u")
        assert admin.returncode == 0 and admin.stdout.split() == ["mfadmin", "1000"], admin
        assert cli.ssh(name, f"getent passwd {VPS_USER} || echo gone") == "gone"
        assert cli.ssh(name, "ls /home") == "mfadmin"
    for name in ("n1", "n2"):
        assert first["hosts"][name]["changes"] > 0
        assert first["hosts"][name]["failed"] == []
        # each service started once, configured: not by its package, then restarted (the
        # install's policy-rc.d, gone once it ended)
        restarts = [op for op in first["hosts"][name]["changed"]
                    if re.fullmatch(r"Restart [\w.@-]+", op)]
        assert restarts == [], restarts
        assert cli.ssh(name, "ls /usr/sbin/policy-rc.d 2>/dev/null || echo none") == "none"
        fqdn = f"{name}.example.internal"
        assert cli.ssh(name, "hostname") == fqdn
        assert cli.ssh(name, "cat /etc/mailname") == fqdn
        assert cli.ssh(name, "getent hosts 127.0.1.1").split()[1:] == [fqdn, name]
        for package in ("curl", "postfix", "dovecot-core", "postgresql", "opendkim"):
            assert cli.ssh(name, f"dpkg-query -W -f '${{Status}}' {package}") == "install ok installed"

    second = cli.json("deploy")
    assert second["ok"] is True
    assert second["changes"] == 0, second
    assert all(h["changes"] == 0 and h["operations"] >= 5 for h in second["hosts"].values())
    # decided from one snapshot per host: every pyinfra fact answered from it (issue 23)
    assert all(h["commands"] <= 3 and h["fact_misses"] == [] for h in second["hosts"].values()), \
        {n: (h["commands"], h["fact_misses"]) for n, h in second["hosts"].items()}

    assert cli.json("deploy", "--check")["changes"] == 0
    # mailfleet's policy-rc.d left by an install killed midway is removed; a host's own stays
    cli.ssh("n1", "printf '#!/bin/sh\\n# mailfleet: left\\nexit 101\\n' > /usr/sbin/policy-rc.d")
    cli.ssh("n2", "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d")
    cleaned = cli.json("deploy")
    assert cleaned["hosts"]["n1"]["changed"] == ["Remove the policy-rc.d an interrupted install left"]
    assert cleaned["hosts"]["n2"]["changed"] == []
    assert cli.ssh("n1", "ls /usr/sbin/policy-rc.d 2>/dev/null || echo none") == "none"
    assert cli.ssh("n2", "cat /usr/sbin/policy-rc.d; rm /usr/sbin/policy-rc.d") == "#!/bin/sh\nexit 101"
    checks = cli.json("check")
    assert checks["ok"] is True
    assert {(c["host"], c["name"]) for c in checks["checks"]} >= {("n1", "host name"), ("n2", "mail name")}


def test_check_fails_when_a_host_drifts(bare_two_release_lab: Cli):
    cli = bare_two_release_lab
    cli.json("deploy", "--limit", "n2")
    cli.ssh("n2", "echo wrong.example > /etc/mailname")
    result = cli("check", "--limit", "n2", check=False)
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "mail name" in result.stdout
    assert "n1" not in result.stdout
    again = cli.json("deploy", "--limit", "n2")
    assert again["hosts"]["n2"]["changed"] == ["Write /etc/mailname"]
    assert cli("check", "--limit", "n2").returncode == 0


def test_diff_shows_the_file_change(bare_two_release_lab: Cli):
    cli = bare_two_release_lab
    cli.ssh("n1", "echo other.example > /etc/mailname")
    shown = cli("deploy", "--check", "--diff", "--limit", "n1")
    assert "-other.example" in shown.stdout + shown.stderr
    assert "+n1.example.internal" in shown.stdout + shown.stderr
    assert cli.ssh("n1", "cat /etc/mailname") == "other.example"
    cli("deploy", "--limit", "n1")
    assert cli.ssh("n1", "cat /etc/mailname") == "n1.example.internal"


def test_lab_down_leaves_nothing_behind(tmp_path):
    """A separate lab: also proves `down` works without its state file (a killed run)."""
    cli = Cli(lab_name(2), tmp_path / "mailfleet.toml")
    try:
        cli("lab", "up", "--nodes", "2")
        assert len(cli.json("lab", "status")["nodes"]) == 2
        left = lab_leftovers(lab_name(2))
        assert len(left["namespaces"]) == 3 and len(left["mounts"]) >= 2 and left["processes"]
        # simulate a run killed midway: the state file is gone, one helper is dead
        from mailfleet.lab.paths import LabPaths

        LabPaths(lab_name(2)).state_file.unlink()
        os.kill(int(left["processes"][0].split(":")[0]), signal.SIGKILL)
        up_again = cli("lab", "up")  # clears its own leftovers first
        assert len(cli.json("lab", "status")["nodes"]) == 1
        assert "n1" in up_again.stderr
    finally:
        cli("lab", "down", check=False)
    assert lab_leftovers(lab_name(2)) == {"namespaces": [], "processes": [], "mounts": []}
    assert load(cli.config).hosts == []


def _installed(cli: Cli, package: str) -> bool:
    return cli.ssh("n1", f"dpkg-query -W -f '${{Status}}' {package} 2>/dev/null || true") \
        == "install ok installed"


def test_preinstalled_image_skips_installation_then_a_mail_and_db_host_sheds_the_web_tier(tmp_path):
    """Debian 13 from the preinstalled image (every role's packages): the deploy installs
    nothing. Then the host gets roles ["mail", "db"]: the web tier goes (nginx, PHP,
    Roundcube), 80/443 close, the mail system stays and `check` passes."""
    cli = Cli(lab_name(3), tmp_path / "mailfleet.toml")
    try:
        cli("lab", "up", "--preinstall")
        assert _installed(cli, "curl")
        report = cli.json("deploy")
        assert report["ok"], report
        changed = report["hosts"]["n1"]["changed"]
        assert "Install the mail system's packages" not in changed
        assert "Set the host name" in changed
        assert cli.ssh("n1", "hostname") == "mail.example.internal"
        assert cli.json("deploy")["changes"] == 0

        doc = tomlkit.parse(cli.config.read_text())
        doc["hosts"][0]["roles"] = ["mail", "db"]
        cli.config.write_text(tomlkit.dumps(doc))
        shed = cli.json("deploy")
        assert shed["ok"], shed
        changed = shed["hosts"]["n1"]["changed"]
        assert {"Remove Roundcube (webmail is not roundcube)",
                "Remove nginx (this host has no web role)"} <= set(changed), changed
        for package in ("nginx", "roundcube-core", "php-fpm"):
            assert not _installed(cli, package), f"{package} is still installed"
        for package in ("postfix", "dovecot-core", "postgresql", "opendkim"):
            assert _installed(cli, package), f"{package} went too"
        rules = cli.ssh("n1", "ufw show added")
        assert "allow 25/tcp" in rules and "allow 993/tcp" in rules
        assert "80/tcp" not in rules and "443/tcp" not in rules, rules
        assert cli.json("deploy")["changes"] == 0
        health = cli.json("check")
        names = {c["name"] for c in health["checks"]}
        assert "nginx running" not in names and "webmail login page" not in names, names
        assert health["ok"], [c for c in health["checks"] if c["status"] != "ok"]
    finally:
        cli("lab", "down", check=False)
    assert lab_leftovers(lab_name(3)) == {"namespaces": [], "processes": [], "mounts": []}


def test_lab_up_that_cannot_write_its_hosts_stops_again(tmp_path):
    """A config already holding a (non-lab) host named n1: exit 2, no lab left running."""
    config = tmp_path / "mailfleet.toml"
    config.write_text('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n\n'
                      '[[hosts]]\nname = "n1"\naddress = "192.0.2.1"\n')
    cli = Cli(lab_name(4), config)
    result = cli("lab", "up", check=False)
    try:
        assert result.returncode == 2, result.stderr
        assert "used twice" in result.stderr and "stopped again" in result.stderr
        assert lab_leftovers(lab_name(4)) == {"namespaces": [], "processes": [], "mounts": []}
        assert [h.name for h in load(config).hosts] == ["n1"]
    finally:
        cli("lab", "down", check=False)
