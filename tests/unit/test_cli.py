"""The command line's contract: exit codes and one-sentence errors, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailfleet.cli.app import run


def mailfleet(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed entry point, as a user runs it (gevent patching included)."""
    return subprocess.run(
        [sys.executable, "-m", "mailfleet", *args], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL, timeout=60,
    )


def test_missing_config_is_one_sentence_and_exit_2(tmp_path):
    result = mailfleet("deploy", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: Config file mailfleet.toml does not exist.")
    assert "mailfleet init" in result.stderr


def test_config_from_environment_variable(tmp_path):
    result = mailfleet("check", cwd=tmp_path, env={"MAILFLEET_CONFIG": str(tmp_path / "x.toml")})
    assert result.returncode == 2
    assert "x.toml does not exist" in result.stderr


def test_init_then_unknown_host_is_exit_2(tmp_path):
    assert mailfleet("init", "--domain", "example.com", cwd=tmp_path).returncode == 0
    text = (tmp_path / "mailfleet.toml").read_text()
    assert 'hostname = "mail.example.com"' in text
    again = mailfleet("init", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    with open(tmp_path / "mailfleet.toml", "a") as f:
        f.write('\n[[hosts]]\nname = "mx1"\naddress = "127.0.0.1"\n')
    result = mailfleet("deploy", "--limit", "nosuch", cwd=tmp_path)
    assert result.returncode == 2
    assert "No host named 'nosuch' in mailfleet.toml (hosts: mx1)." in result.stderr
    assert "Traceback" not in result.stderr


def test_no_hosts_is_exit_2(tmp_path):
    mailfleet("init", cwd=tmp_path)
    result = mailfleet("deploy", cwd=tmp_path)
    assert result.returncode == 2 and "lists no [[hosts]]" in result.stderr


def test_bad_config_names_line_and_key(tmp_path):
    (tmp_path / "mailfleet.toml").write_text('[mail]\ndomain = "example.org"\nhostnme = "x"\n')
    result = mailfleet("deploy", "--check", cwd=tmp_path)
    assert result.returncode == 2
    assert "mailfleet.toml, line 3: mail.hostnme: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_ssh_key_file_is_named(tmp_path):
    (tmp_path / "mailfleet.toml").write_text(
        '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
        '[[hosts]]\nname = "mx1"\naddress = "127.0.0.1"\nssh_key = "/nonexistent/key"\n'
    )
    result = mailfleet("deploy", cwd=tmp_path)
    assert result.returncode == 2
    assert "hosts 'mx1': ssh_key /nonexistent/key does not exist" in result.stderr


def test_unknown_lab_node_and_bad_release(tmp_path):
    result = mailfleet("lab", "--name", "nolab", "ssh", "n1", cwd=tmp_path)
    assert result.returncode == 2 and "Lab 'nolab' is not running." in result.stderr
    bad = mailfleet("lab", "--name", "nolab", "up", "--release", "buster", cwd=tmp_path)
    assert bad.returncode == 2 and "Unknown release 'buster'" in bad.stderr


@pytest.mark.parametrize("args", [["--help"], ["deploy", "--help"], ["lab", "up", "--help"],
                                  ["lab", "status", "--help"], ["check", "--help"],
                                  ["init", "--help"], ["lab", "exec", "--help"]])
def test_help_is_available_everywhere(args, capsys):
    assert run(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: mailfleet")


def test_unknown_command_is_usage_error(capsys):
    assert run(["frobnicate"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_version(capsys):
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.startswith("mailfleet ")


def test_unreachable_host_is_one_sentence_and_exit_1(tmp_path):
    (tmp_path / "mailfleet.toml").write_text(
        '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
        '[[hosts]]\nname = "mx1"\naddress = "127.0.0.1"\nssh_port = 1\n'
    )
    for command in ("deploy", "check"):
        result = mailfleet(command, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith(
            "error: Could not connect over SSH to mx1 (127.0.0.1:1): Unable to connect to port 1"
        ), result.stderr
        assert "Traceback" not in result.stderr


DNS_CONFIG = """\
[mail]
domain = "example.org"
hostname = "mail.example.org"

[[hosts]]
name = "mx1"
address = "{address}"
ssh_port = 1
"""


@pytest.mark.parametrize("args, address, message", [
    (("dns", "records", "--format", "xml"), "203.0.113.10", "--format must be zone, json or table"),
    (("dns", "check", "--zone-file", "x.zone"), "203.0.113.10", "--zone-file and --zone go together"),
    (("dns", "check", "--zone-file", "x.zone", "--zone", "example.org"), "203.0.113.10",
     "Cannot read zone file x.zone"),
    (("dns", "publish"), "203.0.113.10", "mailfleet.toml has no [[dns.zones]]"),
    (("dns", "records"), "127.0.0.1",
     "mailfleet.toml: hosts[0] (mx1): no public address is known for the DNS records"),
])
def test_dns_bad_input_is_exit_2_before_any_host_is_asked(tmp_path, args, address, message):
    (tmp_path / "mailfleet.toml").write_text(DNS_CONFIG.format(address=address))
    result = mailfleet(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not result.stdout


def test_dns_publish_names_an_unreadable_key_file(tmp_path):
    (tmp_path / "mailfleet.toml").write_text(
        DNS_CONFIG.format(address="203.0.113.10")
        + '\n[[dns.zones]]\nzone = "example.org"\nserver = "192.0.2.53"\ntsig_key_file = "nope.key"\n')
    result = mailfleet("dns", "publish", cwd=tmp_path)
    assert result.returncode == 2
    assert "Cannot read the TSIG key file nope.key" in result.stderr


@pytest.mark.parametrize("tables, message", [
    ("[ssh]\nvpn_only = true\n", "ssh.vpn_only = true needs features.wireguard = true"),
    ("[features]\nwireguard = true\n[vpn]\nnetwork = \"10.8.0.0/30\"\n",
     "vpn.network: '10.8.0.0/30' must be a private IPv4 network of at least 8 addresses"),
])
def test_vpn_settings_are_refused_before_any_host(tmp_path, tables, message):
    (tmp_path / "mailfleet.toml").write_text(
        DNS_CONFIG.format(address="203.0.113.10").replace("[[hosts]]", f"{tables}\n[[hosts]]"))
    result = mailfleet("deploy", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_backup_commands_say_when_no_backups_are_set_up(tmp_path):
    (tmp_path / "mailfleet.toml").write_text(DNS_CONFIG.format(address="203.0.113.10"))
    result = mailfleet("backup", "verify", cwd=tmp_path)
    assert result.returncode == 2
    assert "no backups are set up: set [backup] repository" in result.stderr
    assert "Traceback" not in result.stderr


def test_vpn_commands_name_what_is_missing(tmp_path):
    (tmp_path / "mailfleet.toml").write_text(DNS_CONFIG.format(address="127.0.0.1"))
    off = mailfleet("vpn", "client", "laptop", cwd=tmp_path)
    assert off.returncode == 2 and "features.wireguard is false" in off.stderr
    (tmp_path / "mailfleet.toml").write_text(
        DNS_CONFIG.format(address="127.0.0.1").replace(
            "[[hosts]]", f'[features]\nwireguard = true\n[vpn]\nkeys_dir = "{tmp_path}/k"\n'
                         '[[vpn.peers]]\nname = "laptop"\naddress = "10.8.0.100"\n\n[[hosts]]'))
    unknown = mailfleet("vpn", "client", "phone", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "no [[vpn.peers]] named 'phone' (peers: laptop)" in unknown.stderr
    # the host was never deployed (nothing answers on 127.0.0.1:1): its key is unknown
    early = mailfleet("vpn", "client", "laptop", cwd=tmp_path)
    assert early.returncode == 1 and "The WireGuard keys of mx1 are not known yet" in early.stderr
    assert "Traceback" not in early.stderr + unknown.stderr + off.stderr
    assert not early.stdout  # no half config printed
