"""Hardening: parsing what the host says, and the admin's keys (pure logic)."""

from __future__ import annotations

import pytest

from mailfleet.config import HostSettings, parse
from mailfleet.errors import ConfigError
from mailfleet.services import admin, fail2ban, firewall, hardening, plan_host, sshd
from mailfleet.templating import render_init

UFW = """Status: active
ufw allow 22/tcp comment 'mailfleet: ssh'
ufw allow 25/tcp
ufw allow 8080
DEFAULT_INPUT_POLICY="DROP"
DEFAULT_OUTPUT_POLICY="ACCEPT"
port 22
port 2222
"""


def test_firewall_state_and_wanted_ports():
    active, rules, policies, ssh_ports = firewall.parse(UFW)
    assert active and rules == ["allow 22/tcp", "allow 25/tcp", "allow 8080"]
    assert policies == {"DEFAULT_INPUT_POLICY": "DROP", "DEFAULT_OUTPUT_POLICY": "ACCEPT"}
    assert ssh_ports == {22, 2222}
    config = parse('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n')
    host = HostSettings(name="mx1", address="192.0.2.1")
    wanted = firewall.public_ports(plan_host(config, host), ssh_ports)
    assert set(wanted) == {22, 2222, 25, 465, 587, 143, 993, 4190, 80, 443}
    assert not {5432, 8891, 8893, 12340} & set(wanted)  # localhost-only services stay closed
    assert firewall.parse("Status: inactive\n") == (False, [], {}, {22})


def test_sshd_ports_from_sshd_t():
    """The firewall, fail2ban and ssh.vpn_only all take sshd's ports from these lines."""
    assert sshd.parse_ports("port 22\nPort 2222\naddressfamily any\n") == {22, 2222}
    assert sshd.parse_ports("") == {22}  # sshd -T failed: the default, never an empty set
    assert sshd.parse_ports("port x\n") == {22}
    assert sshd.PORTS in firewall._STATE  # check reads them in the same command


def test_fail2ban_jail_list():
    text = "Status\n|- Number of jail:\t3\n`- Jail list:\tdovecot, postfix, sshd\n"
    assert fail2ban.parse_jails(text) == ["dovecot", "postfix", "sshd"]
    assert fail2ban.parse_jails("ERROR   Failed to access socket path") == []


def test_effective_sshd_settings():
    text = ("permitrootlogin no\npasswordauthentication no\nkbdinteractiveauthentication no\n"
            "allowusers mfadmin\n")
    assert sshd.parse_effective(text) == {"permitrootlogin": "no", "passwordauthentication": "no",
                                          "kbdinteractiveauthentication": "no",
                                          "allowusers": "mfadmin"}


SSHD_T = ("permitrootlogin {root}\npasswordauthentication {password}\nkbdinteractiveauthentication no\n"
          "permitemptypasswords no\nauthenticationmethods publickey\nallowusers mfadmin\n"
          "listenaddress 0.0.0.0:22\n")


def test_sshd_answers_for_root_and_the_admin_are_judged_separately():
    good = SSHD_T.format(root="no", password="no")
    text = ("== user root\n" + good + "== user mfadmin\n" + SSHD_T.format(root="no", password="yes")
            + "== files\n/etc/ssh/sshd_config:12:Include /etc/ssh/sshd_config.d/*.conf\n"
            "/etc/ssh/sshd_config:20:KbdInteractiveAuthentication no\n"
            "/etc/ssh/sshd_config.d/99-evil.conf:1:Match User mfadmin\n"
            "/etc/ssh/sshd_config.d/99-evil.conf:2:    PasswordAuthentication=yes\n")
    sections = sshd.split_sections(text)
    root, admin = (sshd.parse_effective(sections[u]) for u in ("user root", "user mfadmin"))
    assert sshd.loosened(root, "mfadmin") == []
    assert sshd.loosened(admin, "mfadmin") == ["passwordauthentication yes"]
    assert sshd.suspects(sections["files"]) == [
        "/etc/ssh/sshd_config.d/99-evil.conf:1 (Match User mfadmin)",
        "/etc/ssh/sshd_config.d/99-evil.conf:2 (PasswordAuthentication yes)"]
    loose = sshd.parse_effective(SSHD_T.format(root="yes", password="yes") + "allowusers root\n")
    assert sshd.loosened(loose, "mfadmin") == [
        "permitrootlogin yes", "passwordauthentication yes", "allowusers mfadmin root"]
    # sshd -T failed (no answer at all): nothing is taken for granted
    assert "permitrootlogin (not set)" in sshd.loosened({}, "mfadmin")


def test_the_sshd_question_quotes_the_admin_and_asks_from_outside():
    command = sshd.effective_command("mf-admin")
    assert "-C user=root,host=203.0.113.1,addr=203.0.113.1" in command
    assert "-C user=mf-admin,host=203.0.113.1,addr=203.0.113.1" in command


def test_sysctl_and_status_lines():
    live, status = hardening.parse_status(
        "net.ipv4.tcp_syncookies 1\nkernel.kptr_restrict 0\n==\nvirt systemd-nspawn\n"
        'upgrade APT::Periodic::Unattended-Upgrade "1";\ntimer enabled\nntp \n')
    assert live == {"net.ipv4.tcp_syncookies": "1", "kernel.kptr_restrict": "0"}
    assert status["virt"] == "systemd-nspawn" and status["timer"] == "enabled"
    assert status["ntp"] == ""


def test_users_from_getent():
    users = admin.parse_users("root:0:/bin/bash\nlinuxuser:1000:/bin/bash\nbroken\n")
    assert users == {"root": (0, "/bin/bash"), "linuxuser": (1000, "/bin/bash")}


def _config(extra: str = ""):
    return parse(render_init("example.org", "mail.example.org").replace(
        'remove_users = ["linuxuser"]', 'remove_users = ["linuxuser"]\n' + extra))


def test_admin_keys_always_include_the_deploy_key(tmp_path):
    key = tmp_path / "id_ed25519"
    key.with_name("id_ed25519.pub").write_text("ssh-ed25519 AAAAdeploy operator\n")
    config = _config('ssh_key = "ssh-ed25519 AAAAextra laptop"')
    settings = HostSettings(name="mx", address="192.0.2.1", ssh_key=str(key))
    assert admin.public_keys(config, settings) == ["ssh-ed25519 AAAAextra laptop",
                                                   "ssh-ed25519 AAAAdeploy operator"]
    with pytest.raises(ConfigError, match="cannot be read"):
        admin.public_keys(_config(), HostSettings(name="mx", address="x", ssh_key=str(tmp_path / "nokey")))
    with pytest.raises(ConfigError, match="admin.ssh_key is not set"):
        admin.public_keys(_config(), HostSettings(name="mx", address="x"))


@pytest.mark.parametrize("old, new, message", [
    ("sshd_settings = []", 'sshd_settings = ["Port"]', "not one sshd_config line"),
    ("sshd_settings = []", 'sshd_settings = ["A b\\nC d"]', "not one sshd_config line"),
    ('user = "mfadmin"', 'user = "root"', "not a usable admin user"),
])
def test_bad_admin_settings_are_refused(old, new, message):
    text = render_init("example.org", "mail.example.org")
    assert old in text
    with pytest.raises(ConfigError, match=message):
        parse(text.replace(old, new))


def test_the_admin_cannot_be_in_remove_users():
    text = render_init("example.org", "mail.example.org").replace(
        'remove_users = ["linuxuser"]', 'remove_users = ["linuxuser", "mfadmin"]')
    with pytest.raises(ConfigError, match="admin user 'mfadmin' itself"):
        parse(text)


def test_fail2ban_settings_are_checked():
    text = render_init("example.org", "mail.example.org")
    with pytest.raises(ConfigError, match="not an IP address"):
        parse(text.replace("ignore = []", 'ignore = ["office"]'))
    with pytest.raises(ConfigError, match="not a duration"):
        parse(text.replace('bantime = "1h"', 'bantime = "forever"'))
    assert parse(text.replace("ignore = []", 'ignore = ["203.0.113.0/24"]')).fail2ban.ignore


def test_a_login_closed_during_sshds_reload_is_asked_again_a_refused_key_is_not():
    """`systemctl reload ssh` returns before the re-executed sshd listens again."""
    assert sshd.transient(255, "Connection closed by 127.0.0.1 port 40097")
    assert sshd.transient(255, "ssh: connect to host 10.77.0.11 port 22: Connection refused")
    assert not sshd.transient(255, "mfadmin@10.77.0.11: Permission denied (publickey).")
    assert not sshd.transient(1, "sudo: a password is required")
