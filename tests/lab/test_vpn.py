"""The private admin network (issue 11): a Debian 12 and a Debian 13 host joined by WireGuard,
the operator's laptop as a network namespace of its own on the lab network (its tunnel is
the config `mailfleet vpn client` writes, run by wireguard-go), and mailfleet run from that
laptop, as an operator would: SSH moves onto the VPN only once a login over it is proven.
"""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomlkit

from conftest import Cli, LabNet, lab_leftovers, lab_name
from mailfleet.lab.lab import Lab
from mailfleet.services import ssh_vpn, vpn_keys, wireguard

LAB = lab_name(7)
ADMIN = "mfadmin"
PUBLIC = {"n1": "10.77.0.11", "n2": "10.77.0.12"}
VPN = {"n1": "10.8.0.1", "n2": "10.8.0.2"}
OPERATOR_VPN = "10.8.0.100"


@dataclass
class Vpn:
    cli: Cli
    lab: Lab
    tmp: Path
    net: LabNet  # code run here is on the operator's laptop

    def operator(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """mailfleet run on the operator's laptop (inside its namespace)."""
        env = {**os.environ, "MAILFLEET_LAB": self.cli.lab, "MAILFLEET_CONFIG": str(self.cli.config)}
        done = subprocess.run(self.lab.operator_command([sys.executable, "-m", "mailfleet", *args]),
                              capture_output=True, text=True, env=env, timeout=900,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"mailfleet {' '.join(args)} exited {done.returncode}\n"
                                 f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done

    def edit(self, change) -> None:
        doc = tomlkit.parse(self.cli.config.read_text())
        change(doc)
        self.cli.config.write_text(tomlkit.dumps(doc))

    def hosts(self) -> dict[str, dict]:
        doc = tomlkit.parse(self.cli.config.read_text())
        return {h["name"]: dict(h) for h in doc["hosts"]}

    def ssh(self, address: str, command: str = "sudo -n true") -> subprocess.CompletedProcess:
        """A new SSH login as the admin user from the laptop."""
        known = self.hosts()["n1"]["ssh_known_hosts"]
        return subprocess.run(self.lab.operator_command([
            "ssh", "-i", str(self.lab.paths.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5", f"{ADMIN}@{address}", command]),
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)

    def reaches(self, address: str, port: int) -> bool:
        """A TCP connection from the laptop (5 s)."""
        def connect() -> bool:
            try:
                socket.create_connection((address, port), timeout=5).close()
                return True
            except OSError:
                return False

        return self.net.run(connect)

    def on(self, node: str, command: str, check: bool = True) -> str:
        """Root on the node without SSH."""
        return self.lab.exec(node, command, check=check).stdout.strip()


@pytest.fixture(scope="module")
def vpn(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vpn")
    cli = Cli(LAB, tmp / "mailfleet.toml")
    lab = Lab(LAB)
    net = None
    try:
        cli("lab", "up", "--release", "bookworm", "--release", "trixie", "--preinstall", timeout=900)
        namespace = lab.add_operator()
        net = LabNet(LAB, namespace)
        known = tmp / "known_hosts"  # the laptop reaches the hosts at their public addresses
        lines = []
        for line in lab.paths.known_hosts.read_text().splitlines():
            where, rest = line.split(" ", 1)
            port = int(where.rpartition(":")[2])
            node = next(n for n in lab.state().nodes if n.ssh_port == port)
            lines.append(f"{node.address} {rest}")
        known.write_text("\n".join(lines) + "\n")
        vpn = Vpn(cli, lab, tmp, net)

        def operator_view(doc) -> None:
            doc["features"]["webmail"] = "none"
            doc["features"]["wireguard"] = True
            doc["fail2ban"]["ignore"] = ["10.77.0.1", "10.77.0.2", "10.8.0.0/24"]
            doc["vpn"] = {"keys_dir": str(tmp / "vpn-keys"),
                          "peers": [{"name": "laptop", "address": OPERATOR_VPN}]}
            for host in doc["hosts"]:
                host["address"] = host["ipv4"]
                host["ssh_port"] = 22
                host["ssh_known_hosts"] = str(known)

        vpn.edit(operator_view)
        yield vpn
    finally:
        if net:
            net.close()
        down = cli("lab", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert lab_leftovers(LAB) == {"namespaces": [], "processes": [], "mounts": []}


def test_hosts_join_the_vpn_and_reach_each_other_over_it(vpn: Vpn):
    report = vpn.operator("deploy", "--json")
    shown = vpn.operator("vpn", "show", "--json")
    import json

    report, shown = json.loads(report.stdout), json.loads(shown.stdout)
    assert report["ok"], report
    hosts = {h["name"]: h for h in shown["hosts"]}
    for name in ("n1", "n2"):
        assert hosts[name]["address"] == VPN[name]
        assert hosts[name]["endpoint"] == f"{PUBLIC[name]}:51820"
        # made on the host, the private key never left it
        assert vpn.on(name, "wg show wg0 public-key") == hosts[name]["public_key"]
        assert vpn.on(name, f"stat -c %a {wireguard.KEY}") == "600"
        private = vpn.on(name, f"cat {wireguard.KEY}")
        assert private not in vpn.on(name, f"cat {wireguard.CONF}")
        assert not any(private in p.read_text() for p in vpn.tmp.rglob("*") if p.is_file())
        # no kernel module here: wg-quick fell back to wireguard-go by itself
        assert "tun" in vpn.on(name, "ip -d link show wg0")
    # the hosts reach each other through the tunnel (keepalives keep the handshakes fresh)
    assert vpn.on("n1", "timeout 5 bash -c '</dev/tcp/10.8.0.2/22' && echo open") == "open"
    assert vpn.on("n2", "timeout 5 bash -c '</dev/tcp/10.8.0.1/22' && echo open") == "open"
    again = json.loads(vpn.operator("deploy", "--json").stdout)
    assert again["ok"] and again["changes"] == 0, again


def test_a_misconfigured_peer_cannot_lock_the_operator_out(vpn: Vpn):
    conf = vpn.tmp / "laptop.conf"
    vpn.operator("vpn", "client", "laptop", "--output", str(conf))
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert "PrivateKey = " in conf.read_text() and "Endpoint = 10.77.0.11:51820" in conf.read_text()
    vpn.lab.operator_tunnel(conf)
    # the hosts are told a key that is not the laptop's: its tunnel cannot come up
    wrong = vpn_keys.public_key_of(vpn_keys.generate_private_key())

    def break_peer(doc) -> None:
        doc["vpn"]["peers"][0]["public_key"] = wrong
        doc["ssh"] = {"vpn_only": True}

    vpn.edit(break_peer)
    import json

    preview = json.loads(vpn.operator("deploy", "--check", "--json").stdout)
    for name in ("n1", "n2"):  # what would change, touching nothing
        changes = preview["hosts"][name]["changed"]
        assert f"Let sshd listen only on the VPN ({ssh_vpn.LISTEN_DROPIN})" in changes, changes
        assert "Admit SSH (22) only over the VPN in the firewall" in changes, changes
        assert vpn.on(name, f"test -e {ssh_vpn.LISTEN_DROPIN} && echo there || echo absent") == "absent"
    failed = vpn.operator("deploy", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    said = " ".join((failed.stdout + failed.stderr).split())
    assert f"SSH over the VPN to {ADMIN}@10.8.0.1 does not work" in said, said
    assert "stays open at 10.77.0.11" in said, said
    # the old access is kept: the config, sshd, the firewall, a new login at the public address
    assert vpn.hosts()["n1"]["address"] == PUBLIC["n1"]
    for name in ("n1", "n2"):
        assert vpn.on(name, f"test -e {ssh_vpn.LISTEN_DROPIN} && echo there || echo absent") == "absent"
        assert "22/tcp" in vpn.on(name, "ufw status | grep -v wg0")
        assert vpn.ssh(PUBLIC[name]).returncode == 0


def test_ssh_moves_onto_the_vpn_and_mail_stays_public(vpn: Vpn):
    def fix_peer(doc) -> None:
        del doc["vpn"]["peers"][0]["public_key"]

    vpn.edit(fix_peer)
    vpn.operator("deploy")
    hosts = vpn.hosts()
    assert {n: hosts[n]["address"] for n in VPN} == VPN  # mailfleet connects over the VPN now
    assert {n: hosts[n]["ipv4"] for n in VPN} == PUBLIC  # DNS still names the public address
    for name in ("n1", "n2"):
        assert vpn.ssh(VPN[name]).returncode == 0
        direct = vpn.ssh(PUBLIC[name], "true")
        assert direct.returncode == 255, direct
        assert not vpn.reaches(PUBLIC[name], 22)  # refused or timed out
        listening = vpn.on(name, "ss -Hltnp | grep sshd | awk '{print $4}'")
        assert listening.split() == [f"{VPN[name]}:22"]
        ssh_rules = vpn.on(name, "ufw status | grep '^22/tcp'").splitlines()
        assert ssh_rules and all(" on wg0 " in rule for rule in ssh_rules), ssh_rules
        # mail stays on the public address
        for port in (25, 587, 993):
            assert vpn.reaches(PUBLIC[name], port), (name, port)

        def ehlo(address: str) -> int:
            with smtplib.SMTP(address, 25, timeout=20) as smtp:
                return smtp.ehlo("laptop.example.internal")[0]

        assert vpn.net.run(ehlo, PUBLIC[name]) == 250
    # the hosts still reach each other's SSH over the tunnel
    assert vpn.on("n1", "timeout 5 bash -c '</dev/tcp/10.8.0.2/22' && echo open") == "open"
    again = vpn.operator("deploy", "--json")
    import json

    report = json.loads(again.stdout)
    assert report["ok"] and report["changes"] == 0, report
    checks = json.loads(vpn.operator("check", "--json", check=False).stdout)
    by = {(c["host"], c["name"]): c for c in checks["checks"]}
    assert checks["ok"], [c for c in checks["checks"] if c["status"] == "fail"]
    for name in ("n1", "n2"):
        assert by[(name, "SSH only over the VPN")]["status"] == "ok"
        assert by[(name, "VPN")]["status"] == "ok"
        assert by[(name, "default route")]["status"] == "ok"
        assert by[(name, "network interfaces")]["message"].endswith("wg0 UNKNOWN")
        assert by[(name, "IPv6")]["status"] == "ok"


def test_a_reboot_brings_the_tunnel_back_before_sshd(vpn: Vpn):
    for name in ("n1", "n2"):
        vpn.lab.restart(name)
    for name in ("n1", "n2"):
        deadline = time.monotonic() + 60
        while vpn.ssh(VPN[name]).returncode != 0:
            assert time.monotonic() < deadline, (
                f"no SSH over the VPN to {name} after the reboot:\n" + vpn.on(
                    name, f"systemctl --no-pager status {wireguard.UNIT} ssh; journalctl -b "
                          f"--no-pager -u {wireguard.UNIT} -u ssh | tail -n 40; ip -br a; "
                          "wg show; ufw status", check=False))
            time.sleep(2)
        assert f"{wireguard.UNIT}.service" in vpn.on(name, "systemctl show -p After --value ssh")
        tunnel = int(vpn.on(name, f"systemctl show -p ActiveEnterTimestampMonotonic --value {wireguard.UNIT}"))
        sshd = int(vpn.on(name, "systemctl show -p ExecMainStartTimestampMonotonic --value ssh"))
        assert 0 < tunnel <= sshd
        # the firewall came back from the host's own boot (the namespace was flushed)
        assert not vpn.reaches(PUBLIC[name], 22)
        assert vpn.reaches(PUBLIC[name], 25)


def test_a_tunnel_change_that_cuts_the_operator_off_is_undone_by_the_host(vpn: Vpn):
    """Over the VPN already, the hosts are told a wrong key for the laptop: the deploy cannot
    log in again over the changed tunnel, and each host puts its previous config back."""
    wrong = vpn_keys.public_key_of(vpn_keys.generate_private_key())
    vpn.edit(lambda doc: doc["vpn"]["peers"][0].__setitem__("public_key", wrong))
    started = time.monotonic()
    failed = vpn.operator("deploy", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    said = " ".join((failed.stdout + failed.stderr).split())
    assert "stopped working with the new VPN settings" in said, said
    assert "puts the previous ones back by itself" in said, said
    for name in ("n1", "n2"):
        while vpn.ssh(VPN[name]).returncode != 0:
            assert time.monotonic() - started < wireguard.ROLLBACK_SECONDS + 90, \
                f"{name} did not roll its VPN settings back"
            time.sleep(3)
        assert wrong not in vpn.on(name, f"wg show {wireguard.INTERFACE} peers")
        assert vpn.on(name, f"test -e {wireguard.PREVIOUS} && echo left || echo gone") == "gone"
    vpn.edit(lambda doc: doc["vpn"]["peers"][0].pop("public_key"))
    import json

    again = json.loads(vpn.operator("deploy", "--json").stdout)
    assert again["ok"] and again["changes"] == 0, again


def test_turning_the_vpn_off_reopens_ssh_then_removes_the_tunnel(vpn: Vpn):
    import json

    # still reached over the VPN: turning WireGuard off would cut this very connection
    def all_off(doc) -> None:
        doc["features"]["wireguard"] = False
        doc["ssh"]["vpn_only"] = False

    vpn.edit(all_off)
    refused = vpn.operator("deploy", check=False)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2, said
    assert "features.wireguard is off, but mailfleet reaches n1 over the VPN (10.8.0.1)" in said, said
    for name in ("n1", "n2"):  # nothing was done
        assert vpn.on(name, f"systemctl is-active {wireguard.UNIT}") == "active"
        assert vpn.on(name, f"test -e {ssh_vpn.LISTEN_DROPIN} && echo there || echo absent") == "there"
    # step 1, over the tunnel: SSH everywhere again
    vpn.edit(lambda doc: doc["features"].__setitem__("wireguard", True))
    vpn.operator("deploy")
    for name in ("n1", "n2"):
        assert vpn.ssh(PUBLIC[name]).returncode == 0
        assert vpn.on(name, f"ls {ssh_vpn.LISTEN_DROPIN} {ssh_vpn.ORDER_DROPIN} 2>/dev/null; true") == ""
        assert "22/tcp on wg0" not in vpn.on(name, "ufw status")
    # step 2, at the public addresses: WireGuard off
    def public(doc) -> None:
        doc["features"]["wireguard"] = False
        for host in doc["hosts"]:
            host["address"] = host["ipv4"]

    vpn.edit(public)
    report = json.loads(vpn.operator("deploy", "--json").stdout)
    assert report["ok"], report
    for name in ("n1", "n2"):
        assert vpn.on(name, f"systemctl is-active {wireguard.UNIT}", check=False) != "active"
        assert vpn.on(name, "ip link show wg0 >/dev/null 2>&1 && echo up || echo gone") == "gone"
        assert vpn.on(name, "dpkg-query -W -f '${Status}' wireguard-tools wireguard-go 2>&1 | "
                            "grep -c 'install ok installed'; true") == "0"
        assert vpn.on(name, f"ls {wireguard.CONF} {wireguard.APPLY} 2>/dev/null; true") == ""
        assert vpn.on(name, f"test -s {wireguard.KEY} && echo kept") == "kept"  # same key if on again
        assert "51820" not in vpn.on(name, "ufw status")
    again = json.loads(vpn.operator("deploy", "--json").stdout)
    assert again["ok"] and again["changes"] == 0, again
    checks = json.loads(vpn.operator("check", "--json", check=False).stdout)
    assert checks["ok"], [c for c in checks["checks"] if c["status"] == "fail"]
    assert not [c for c in checks["checks"] if c["name"] == "VPN"]
