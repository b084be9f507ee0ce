"""`mailfleet provision` with the lab as the provider, on Debian 12 and 13: each server is a
lab node whose first boot runs Debian's real cloud-init from a NoCloud seed holding the same
user-data a cloud provider gets. The first SSH login checks the host key mailfleet made,
strictly; a node answering with another key is refused; deploy and check pass; provisioning
again makes nothing; `destroy --yes` removes the node and its [[hosts]] entry."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import Cli, lab_leftovers, lab_name

from mailfleet.config import load
from mailfleet.lab.lab import Lab

LAB = lab_name(13)
HOSTS = {"mx12": "debian-12", "mx13": "debian-13"}


def _config(base, key) -> str:
    hosts = "".join(
        f'\n# provisioned by the test\n[[hosts]]\nname = "{name}"\nfqdn = "{name}.example.internal"\n'
        f'ssh_key = "{key}"\nssh_known_hosts = "{base / "known_hosts"}"\n\n'
        f'[hosts.provider]\nprovider = "lab"\nplan = "preinstalled"  # quick: not about apt\n'
        f'image = "{image}"\n'
        for name, image in HOSTS.items())
    return ('[mail]\ndomain = "example.internal"\nhostname = "mail.example.internal"\n\n'
            '[dns]\ncheck = false\n\n[fail2ban]\nignore = ["10.77.0.1"]\n' + hosts)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    base = tmp_path_factory.mktemp("provision")
    key = base / "deploy_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cli = Cli(LAB, base / "mailfleet.toml")
    cli.config.write_text(_config(base, key))
    cli("lab", "down")  # (a killed run's leftovers)
    try:
        yield cli
    finally:
        down = cli("lab", "down", check=False)
        assert down.returncode == 0, down.stderr
        assert lab_leftovers(LAB) == {"namespaces": [], "processes": [], "mounts": []}


def _host(cli: Cli, name: str):
    return next(h for h in load(cli.config).hosts if h.name == name)


def _strict_ssh(cli: Cli, name: str, command: str) -> subprocess.CompletedProcess:
    host = _host(cli, name)
    return subprocess.run(
        ["ssh", "-i", host.ssh_key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={host.ssh_known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-p", str(host.ssh_port), "-l", host.ssh_user, host.address, command],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


def test_provision_boots_cloud_init_nodes_whose_first_login_is_verified(fleet: Cli):
    dry = fleet.json("provision", "mx12", "--dry-run")
    assert dry["exists"] is False and dry["would_create"]["image"] == "debian-12", dry
    assert Lab(LAB).state() is None  # a dry run boots nothing
    for name in HOSTS:
        made = fleet.json("provision", name)
        assert made["created"] is True and made["cloud_init"] == "done", made
    lab = Lab(LAB)
    known = (fleet.config.parent / "known_hosts").read_text().splitlines()
    assert len(known) == 2, known
    for name, image in HOSTS.items():
        host = _host(fleet, name)
        assert host.address == "127.0.0.1" and host.ssh_port > 1024 and host.ipv4
        line = next(l for l in known if l.startswith(f"[127.0.0.1]:{host.ssh_port} "))
        # the node's only host key is the one mailfleet made and put into the user-data
        keys = lab.exec(name, "cat /etc/ssh/ssh_host_*_key.pub").stdout.split("\n")
        assert [k.split()[:2] for k in keys if k] == [line.split()[1:3]], keys
        # cloud-init made the node: its name, root's only key, no default user
        facts = _strict_ssh(fleet, name, "hostname; cat /root/.ssh/authorized_keys; "
                                         ". /etc/os-release; echo $VERSION_ID; "
                                         "getent passwd debian || echo no-debian; "
                                         "test -e /etc/cloud/cloud-init.disabled || echo enabled")
        assert facts.returncode == 0, facts.stderr
        lines = facts.stdout.split("\n")
        deploy_key = (fleet.config.parent / "deploy_key.pub").read_text().split()[:2]
        assert lines[0] == name and lines[1].split()[:2] == deploy_key, facts.stdout
        assert lines[2] == image.removeprefix("debian-") and lines[3:5] == ["no-debian", "enabled"]
    # provisioning again finds both and makes nothing
    again = fleet.json("provision", "mx12")
    assert again["created"] is False and len(lab.state().nodes) == 2


def test_a_node_answering_with_another_host_key_is_refused(fleet: Cli):
    if _host(fleet, "mx13").ssh_user != "root":
        pytest.fail("this test runs before deploy (it swaps the host key root logs in to)")
    lab = Lab(LAB)
    lab.exec("mx13", "cp -a /etc/ssh /root/ssh.made && rm /etc/ssh/ssh_host_* && "
                     "ssh-keygen -q -A && systemctl restart ssh")
    try:
        refused = fleet("provision", "mx13", check=False)
        assert refused.returncode == 1, refused.stderr
        (sentence,) = [l for l in refused.stderr.splitlines() if l.startswith("error: ")]
        assert "answers with another SSH host key than the one mailfleet made for it" in sentence
        deploy = fleet("check", "--limit", "mx13", check=False)
        assert deploy.returncode == 1 and "Host key" in deploy.stderr, deploy.stderr
        assert "known_hosts" in deploy.stderr and "Traceback" not in deploy.stderr
    finally:
        lab.exec("mx13", "rm -rf /etc/ssh && mv /root/ssh.made /etc/ssh && systemctl restart ssh")
    assert _strict_ssh(fleet, "mx13", "true").returncode == 0


def test_deploy_and_check_pass_then_destroy_removes_node_and_entry(fleet: Cli):
    first = fleet.json("deploy")
    assert first["ok"] and first["changes"] > 0
    second = fleet.json("deploy")
    assert second["ok"] and second["changes"] == 0, second
    checks = json.loads(fleet("check", "--json", check=False).stdout)
    failed = [c for c in checks["checks"] if c["status"] == "fail"]
    assert checks["ok"] and not failed, failed
    assert {c["host"] for c in checks["checks"]} == set(HOSTS)
    # destroy: asked for without a terminal, refused; with --yes, gone
    unasked = fleet("destroy", "mx12", check=False)
    assert unasked.returncode == 2 and "no terminal to ask" in unasked.stderr
    assert fleet.json("destroy", "mx12", "--yes")["server"] == "mx12"
    assert [h.name for h in load(fleet.config).hosts] == ["mx13"]
    assert [n.name for n in Lab(LAB).state().nodes] == ["mx13"]
    assert fleet.json("destroy", "mx13", "--yes")["server"] == "mx13"
    assert load(fleet.config).hosts == [] and Lab(LAB).state() is None
    assert (fleet.config.parent / "known_hosts").read_text() == ""
    assert lab_leftovers(LAB) == {"namespaces": [], "processes": [], "mounts": []}
