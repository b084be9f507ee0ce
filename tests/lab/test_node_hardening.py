"""The hardened host on Debian 12 and 13, seen from another lab host: the firewall lets
through exactly the services' ports, fail2ban bans a host that keeps failing SMTP AUTH, and a
deploy with an SSH setting that would lock the admin out is rolled back."""

from __future__ import annotations

import base64
import json
import time

import pytest
from conftest import NODES, Cli, edited_config, key_login

from mailfleet import services
from mailfleet.config import HostSettings, parse
from mailfleet.services import firewall
from mailfleet.services.plan import full_plan

OTHER = {"n1": "n2", "n2": "n1"}  # the lab host that plays the outside world
# what the lab's hosts (every role, default features) open to the world
OPEN = set(firewall.public_ports(services.plan_host(
    parse('[mail]\ndomain = "example.internal"\nhostname = "mail.example.internal"\n'),
    HostSettings(name="n1", address="10.0.0.1")), {22}))
PROBE = "for p in {ports}; do timeout 3 bash -c \"echo > /dev/tcp/{address}/$p\" 2>/dev/null " \
        "&& echo \"$p open\" || echo \"$p closed\"; done"


@pytest.fixture(scope="module", params=list(NODES), ids=[f"{n}-debian{12 if n == 'n1' else 13}" for n in NODES])
def target(request, deployed: Cli) -> str:
    return request.param


def probe(cli: Cli, source: str, address: str, ports: list[int]) -> dict[int, bool]:
    out = cli.ssh(source, PROBE.format(ports=" ".join(map(str, ports)), address=address))
    return {int(p): state == "open" for p, state in (line.split() for line in out.splitlines())}


def test_only_the_services_ports_are_open_from_another_host(deployed: Cli, target: str):
    address = NODES[target][0]
    assert OPEN == {22, 25, 80, 143, 443, 465, 587, 993, 4190}
    # something listening on every address, but not a service mailfleet opened
    deployed.ssh(target, "systemd-run --unit=mftest-listen python3 -m http.server 8080 "
                         "--bind 0.0.0.0 >/dev/null 2>&1")
    try:
        assert deployed.ssh(target, "timeout 10 bash -c 'until echo > /dev/tcp/127.0.0.1/8080; "
                                    "do sleep 0.2; done' 2>/dev/null && echo up") == "up"
        seen = probe(deployed, OTHER[target], address,
                     sorted(OPEN | {8080, 5432, 8891, 8893, 12340, 110, 995, 2000, 9000}))
    finally:
        deployed.ssh(target, "systemctl stop mftest-listen")
    assert {p for p, is_open in seen.items() if is_open} == OPEN, seen
    status = deployed.ssh(target, "ufw status verbose")
    assert "Status: active" in status and "deny (incoming)" in status
    exposed = {exposure: {port.number for s in services.SERVICES
                          for u in s.units_for(full_plan())
                          for port in u.ports if port.exposure == exposure}
               for exposure in ("local", "private")}
    # private: PostgreSQL, opened to web-only hosts alone (none here: 5432 stayed closed)
    assert exposed == {"local": {8891, 8893, 12340}, "private": {5432}}
    assert OPEN.isdisjoint(exposed["local"] | exposed["private"])


def test_repeated_failed_smtp_auth_gets_the_host_banned_then_unbanned(deployed: Cli, target: str):
    source, address = OTHER[target], NODES[target][0]
    source_address = NODES[source][0]
    attack = (
        "import smtplib, ssl\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
        "for i in range(8):\n"
        "    try:\n"
        f"        s = smtplib.SMTP('{address}', 587, timeout=10); s.starttls(context=ctx); s.ehlo()\n"
        "        s.login('nobody@example.internal', 'wrong-%d' % i)\n"
        "    except smtplib.SMTPAuthenticationError:\n"
        "        print('refused')\n"
        "    except OSError as e:\n"
        "        print('blocked', type(e).__name__)\n"
        "        break\n"
    )
    try:
        script = base64.b64encode(attack.encode()).decode()
        out = deployed.ssh(source, f"echo {script} | base64 -d | python3")
        # smtplib tries every offered mechanism (PLAIN, then LOGIN): each attempt is two
        # failures, so maxretry = 5 bans by the third attempt at the latest (sooner when this
        # host's port probes, counted by the aggressive postfix filter, came first)
        assert 1 <= out.count("refused") <= 3 and "blocked" in out, out
        banned = False
        for _ in range(30):
            answer = deployed.ssh(source, f"timeout 5 bash -c 'echo > /dev/tcp/{address}/587' "
                                          "2>&1 && echo open || true")
            if "Connection refused" in answer:
                banned = True
                break
            time.sleep(1)
        assert banned, f"{source} was not banned: {answer}"
        jail = deployed.ssh(target, "fail2ban-client status postfix")
        banned_list = jail.rpartition("Banned IP list:")[2].split()
        assert source_address in banned_list, jail
        # the lab's own address (the operator, in [fail2ban] ignore) is never banned
        assert "10.77.0.1" not in banned_list
    finally:
        deployed.ssh(target, f"fail2ban-client unban {source_address} >/dev/null 2>&1 || true")
    assert deployed.ssh(source, f"timeout 5 bash -c 'echo > /dev/tcp/{address}/587' && echo open") == "open"


def _sshd_settings(cli: Cli, lines: list[str]):
    """[admin] sshd_settings set to `lines` inside the with block, the file as it was after."""
    return edited_config(cli, lambda doc: doc["admin"].__setitem__("sshd_settings", lines))


@pytest.mark.parametrize("setting, why", [
    ("DenyUsers mfadmin", "could not log in over SSH with the new settings"),
    ("NoSuchOption yes", "Bad configuration option"),
])
def test_a_deploy_that_would_lock_the_admin_out_is_rolled_back(deployed: Cli, target: str,
                                                               setting: str, why: str):
    dropin = "/etc/ssh/sshd_config.d/00-mailfleet.conf"
    before = deployed.ssh(target, f"sha1sum {dropin}")
    with _sshd_settings(deployed, [setting]):
        result = deployed("deploy", "--limit", target, check=False)
        assert result.returncode == 1, result.stdout
        assert why in result.stdout + result.stderr, result.stdout + result.stderr
        assert "SSH" in result.stdout
        # still reachable as the admin, with the old settings in place
        assert key_login(deployed, target, "mfadmin", "sudo -n true").returncode == 0
        assert deployed.ssh(target, f"sha1sum {dropin}") == before
        assert setting.split()[0] not in deployed.ssh(target, f"cat {dropin}")
    again = deployed.json("deploy", "--limit", target)
    assert again["ok"] and again["changes"] == 0, again


DROPIN = "/etc/ssh/sshd_config.d/00-mailfleet.conf"
LOOSENING = ["Match all", "PasswordAuthentication yes", "PermitRootLogin yes", "AllowUsers root"]


def test_sshd_settings_that_would_loosen_ssh_are_refused_before_any_host_is_touched(deployed: Cli):
    before = {name: deployed.ssh(name, f"sha1sum {DROPIN}") for name in NODES}
    with _sshd_settings(deployed, LOOSENING):
        result = deployed("deploy", check=False)
        out = result.stdout + result.stderr
        assert result.returncode == 2, out
        assert "admin.sshd_settings" in out and "'Match all'" in out and "line" in out, out
        assert "Traceback" not in out and "Deploy" not in out, out
    assert {name: deployed.ssh(name, f"sha1sum {DROPIN}") for name in NODES} == before
    for name in NODES:
        assert "PasswordAuthentication yes" not in deployed.ssh(name, f"cat {DROPIN}")


def test_check_fails_on_a_drop_in_added_by_hand_that_loosens_ssh(deployed: Cli, target: str):
    # the admin may log in with a password: only a question about the admin (not root) shows it
    evil = "/etc/ssh/sshd_config.d/99-evil.conf"
    deployed.ssh(target, f"printf 'Match User mfadmin\\n    PasswordAuthentication yes\\n' > {evil}")
    try:
        assert deployed.ssh(target, "sshd -t && echo valid") == "valid"
        result = deployed("check", "--limit", target, "--json", check=False)
    finally:
        deployed.ssh(target, f"rm -f {evil}")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"] if c["host"] == target}
    ssh = checks["SSH settings"]
    assert ssh["status"] == "fail", ssh
    assert "mfadmin" in ssh["message"] and "passwordauthentication yes" in ssh["message"], ssh
    assert evil in ssh["message"], ssh
    again = deployed("check", "--limit", target, "--json", check=False)
    after = {c["name"]: c for c in json.loads(again.stdout)["checks"] if c["host"] == target}
    assert after["SSH settings"]["status"] == "ok", after["SSH settings"]


def test_check_reports_the_hardening(deployed: Cli):
    checks = {(c["host"], c["name"]): c for c in deployed.json("check")["checks"]}
    for host in NODES:
        for name in ("admin user", "provider users", "SSH settings", "root login refused",
                     "firewall", "fail2ban jails", "security updates"):
            assert checks[(host, name)]["status"] == "ok", checks[(host, name)]
        assert checks[(host, "kernel settings")]["status"] in ("ok", "warn")


def test_apache_is_removed_when_present(deployed: Cli, target: str):
    # a provider image with Apache on port 80 (nginx, which deploy runs there, stopped first)
    deployed.ssh(target, "systemctl stop nginx; DEBIAN_FRONTEND=noninteractive apt-get install "
                         "-y -q apache2 >/tmp/apache-install.log 2>&1")
    assert deployed.ssh(target, "systemctl is-active apache2") == "active"
    report = deployed.json("deploy", "--limit", target)
    assert report["ok"] and "Remove Apache" in report["hosts"][target]["changed"], report
    assert deployed.ssh(target, "systemctl is-active nginx") == "active"
    assert deployed.ssh(target, "dpkg-query -W -f '${Status}' apache2 2>/dev/null || echo gone") \
        in ("gone", "deinstall ok config-files", "unknown ok not-installed")
    assert deployed.json("deploy", "--limit", target)["changes"] == 0
