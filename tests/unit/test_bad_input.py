"""Every command with bad input: exit 2, one sentence naming the file or field, no traceback.

One table: each config-file problem (not UTF-8, a directory, unreadable, a path through a
file) against every command that reads the config, then the bad inputs of single commands
(output paths, SSH keys, CSV files, host names, report addresses, VPN and backup options).
The table runs in this process through the CLI's own entry point (`run`, Typer in
standalone mode, as tests/unit/test_cli.py does); the cases where the real process matters
(gevent's greenlets, another user's permissions) also run as `python -m mailfleet`.
No case reaches a host: the config points at a closed local port.
"""

from __future__ import annotations

import base64
import os
import pathlib
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailfleet.cli.app import run

GOOD = """\
[mail]
domain = "example.org"
hostname = "mail.example.org"

[[hosts]]
name = "mx1"
address = "127.0.0.1"
ssh_port = 9
"""
PEER_KEY = base64.b64encode(os.urandom(32)).decode()  # a WireGuard public key's form

# every command that reads the config, with arguments that are fine by themselves
CONFIG_COMMANDS = [
    ["deploy"], ["check"],
    ["domain", "add", "example.net"], ["domain", "list"],
    ["domain", "remove", "example.net", "--yes"],
    ["user", "add", "a@example.org", "--generate"], ["user", "list"],
    ["user", "passwd", "a@example.org", "--generate"], ["user", "quota", "a@example.org", "1G"],
    ["user", "disable", "a@example.org"], ["user", "enable", "a@example.org"],
    ["user", "remove", "a@example.org", "--yes"], ["user", "import", "{dir}/users.csv"],
    ["alias", "add", "b@example.org", "a@example.org"], ["alias", "list"],
    ["alias", "remove", "b@example.org"],
    ["dns", "records"], ["dns", "check"], ["dns", "publish"],
    ["backup", "run"], ["backup", "list"], ["backup", "verify"], ["backup", "restore", "--yes"],
    ["vpn", "show"], ["vpn", "client", "laptop"],
    ["guide", "clients"], ["guide", "import"],
    ["lab", "up"],  # refused before any node boots
]
CONFIG_PROBLEMS = {
    "not-utf8": ("{dir}/latin.toml", "{dir}/latin.toml, line 2: the config is not UTF-8 text"),
    "directory": ("{dir}/conf.d", "Config file {dir}/conf.d is a directory, not a file."),
    "unreadable": ("{dir}/locked.toml",
                   "Cannot read config file {dir}/locked.toml: Permission denied."),
    "through-a-file": ("{dir}/good.toml/x.toml",
                       "Cannot read config file {dir}/good.toml/x.toml: Not a directory."),
}
SINGLE = [
    # (name, arguments, what the one sentence says)
    ("init-missing-dir", ["-c", "{dir}/missing/x.toml", "init"],
     "Cannot write {dir}/missing/x.toml: No such file or directory."),
    ("init-into-directory", ["-c", "{dir}/conf.d", "init", "--force"],
     "Cannot write {dir}/conf.d: Is a directory."),
    ("guide-clients-missing-dir", ["guide", "clients", "-o", "{dir}/missing/clients.md"],
     "--output: cannot write {dir}/missing/clients.md: No such file or directory."),
    ("guide-import-into-directory", ["guide", "import", "-o", "{dir}/conf.d"],
     "--output: cannot write {dir}/conf.d: Is a directory."),
    ("ssh-key-not-a-key-deploy", ["-c", "{dir}/badkey.toml", "deploy"],
     "hosts 'mx1': ssh_key {dir}/not-a-key is not a private key"),
    ("ssh-key-not-a-key-user-list", ["-c", "{dir}/badkey.toml", "user", "list"],
     "hosts 'mx1': ssh_key {dir}/not-a-key is not a private key"),
    ("ssh-key-public-half-check", ["-c", "{dir}/pubkey.toml", "check"],
     "hosts 'mx1': ssh_key {dir}/id_test.pub is not a private key"),
    ("ssh-key-passphrase-check", ["-c", "{dir}/passkey.toml", "check"],
     "hosts 'mx1': ssh_key {dir}/id_secret needs a passphrase"),
    ("ssh-key-passphrase-alias-list", ["-c", "{dir}/passkey.toml", "alias", "list"],
     "hosts 'mx1': ssh_key {dir}/id_secret needs a passphrase"),
    ("address-is-an-ssh-option", ["-c", "{dir}/dash.toml", "deploy"],
     "{dir}/dash.toml, line 7: hosts[0].address: '-oProxyCommand=touch {dir}/pwned' starts "
     "with '-'"),
    ("dmarc-rua-adds-tags", ["-c", "{dir}/rua.toml", "dns", "records"],
     "{dir}/rua.toml, line 11: dns.dmarc_rua: 'x; p=none; rua=mailto:a@example.org' is not a "
     "report address: ';' is not allowed"),
    ("csv-missing", ["user", "import", "{dir}/nosuch.csv"],
     "Cannot read {dir}/nosuch.csv: No such file or directory."),
    ("csv-directory", ["user", "import", "{dir}/conf.d"],
     "Cannot read {dir}/conf.d: Is a directory."),
    ("csv-not-utf8", ["user", "import", "{dir}/latin.csv"], "{dir}/latin.csv, line 2: not UTF-8"),
    ("passwords-out-missing-dir",
     ["user", "import", "{dir}/users.csv", "--passwords-out", "{dir}/missing/p.csv"],
     "--passwords-out {dir}/missing/p.csv: the directory {dir}/missing does not exist"),
    ("deploy-limit-unknown", ["deploy", "--limit", "nosuch"],
     "No host named 'nosuch' in {dir}/good.toml (hosts: mx1)."),
    ("check-limit-unknown", ["check", "--limit", "nosuch"], "No host named 'nosuch'"),
    ("user-list-host-unknown", ["user", "list", "--host", "nosuch"], "No host named 'nosuch'"),
    ("user-add-bad-address", ["user", "add", "not-an-address", "--generate"],
     "EMAIL: address 'not-an-address' is not an email address"),
    ("user-quota-bad-size", ["user", "quota", "a@example.org", "lots"], "SIZE: quota 'lots'"),
    ("vpn-client-output-missing-dir",
     ["-c", "{dir}/full.toml", "vpn", "client", "laptop", "-o", "{dir}/missing/laptop.conf"],
     "--output {dir}/missing/laptop.conf: the directory {dir}/missing does not exist."),
    ("vpn-client-output-directory",
     ["-c", "{dir}/full.toml", "vpn", "client", "laptop", "-o", "{dir}/conf.d"],
     "--output {dir}/conf.d: is a directory."),
    ("vpn-client-unknown-peer", ["-c", "{dir}/full.toml", "vpn", "client", "nosuch"],
     "no [[vpn.peers]] named 'nosuch'"),
    ("backup-restore-bad-time",
     ["-c", "{dir}/full.toml", "backup", "restore", "--to-time", "yesterday", "--yes"],
     "--to-time yesterday: not an ISO 8601 time"),
    ("backup-list-host-unknown", ["-c", "{dir}/full.toml", "backup", "list", "--host", "nosuch"],
     "No host named 'nosuch'"),
    ("tsig-key-not-utf8", ["-c", "{dir}/tsig.toml", "dns", "publish"],
     "{dir}/binary.key is not a TSIG key file"),
    ("lab-up-bad-release", ["lab", "--name", "h5-nolab", "up", "--release", "buster"],
     "Unknown release 'buster'"),
    # roles the services cannot deploy yet: refused before any host is reached
    ("roles-web-alone-deploy", ["-c", "{dir}/web.toml", "deploy"],
     "host 'mx1' has roles [\"web\"]: a web-only host needs exactly one host with roles "
     "\"mail\" and \"db\" to talk to, and the config has 0"),
    ("roles-web-alone-check", ["-c", "{dir}/web.toml", "check"],
     "host 'mx1' has roles [\"web\"]"),
    ("roles-mail-without-db-deploy-check", ["-c", "{dir}/mail.toml", "deploy", "--check"],
     "host 'mx1' has roles [\"mail\", \"web\"]"),
]
TABLE = [
    *((f"{problem}-{'-'.join(cmd[:2])}", ["-c", path, *cmd], message)
      for problem, (path, message) in CONFIG_PROBLEMS.items() for cmd in CONFIG_COMMANDS),
    *SINGLE,
]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bad (and good) files the table names, made once: no case changes them."""
    d = tmp_path_factory.mktemp("bad-input")
    (d / "good.toml").write_text(GOOD)
    (d / "latin.toml").write_bytes(GOOD.replace("\n", "\n# caf\xe9\n", 1).encode("latin-1"))
    (d / "conf.d").mkdir()
    (d / "locked.toml").write_text(GOOD)
    (d / "not-a-key").write_text("hello\n")
    key = Ed25519PrivateKey.generate()
    (d / "id_test.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    (d / "id_secret").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(b"a passphrase")))
    for name, key_file in (("badkey", "not-a-key"), ("pubkey", "id_test.pub"),
                           ("passkey", "id_secret")):
        (d / f"{name}.toml").write_text(GOOD + f'ssh_key = "{d}/{key_file}"\n')
    (d / "dash.toml").write_text(GOOD.replace('"127.0.0.1"', f'"-oProxyCommand=touch {d}/pwned"'))
    (d / "rua.toml").write_text(
        GOOD + '\n[dns]\ndmarc_rua = "x; p=none; rua=mailto:a@example.org"\n')
    (d / "keys" / "hosts").mkdir(parents=True)
    (d / "keys" / "hosts" / "mail.example.org.pub").write_text(PEER_KEY + "\n")
    (d / "full.toml").write_text(
        GOOD.replace("[[hosts]]", f'[features]\nwireguard = true\n\n[backup]\nrepository = '
                                  f'"/srv/restic"\n\n[vpn]\nkeys_dir = "{d}/keys"\n\n'
                                  f'[[vpn.peers]]\nname = "laptop"\naddress = "10.8.0.100"\n'
                                  f'public_key = "{PEER_KEY}"\n\n[[hosts]]'))
    (d / "binary.key").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (d / "tsig.toml").write_text(GOOD + f'\n[[dns.zones]]\nzone = "example.org"\n'
                                 f'server = "127.0.0.1"\ntsig_key_file = "{d}/binary.key"\n')
    (d / "web.toml").write_text(GOOD + 'roles = ["web"]\n')
    (d / "mail.toml").write_text(GOOD + 'roles = ["web", "mail"]\n')
    (d / "users.csv").write_text("email\na@example.org\n")
    (d / "latin.csv").write_bytes("email,name\nb@example.org,Ren\xe9\n".encode("latin-1"))
    return d


@pytest.fixture
def files(made: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`made`, as the current directory, with no config or lab named by the environment."""
    d = made
    monkeypatch.chdir(d)
    for name in ("MAILFLEET_CONFIG", "MAILFLEET_LAB", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MAILFLEET_CONFIG", str(d / "good.toml"))
    monkeypatch.setenv("COLUMNS", "500")  # the sentence on one line, whatever the terminal
    return d


def _deny(monkeypatch: pytest.MonkeyPatch, locked: Path) -> None:
    """Make one file unreadable here (root reads a mode 000 file): the way the OS refuses."""
    real = pathlib.Path.read_text

    def read_text(self: Path, *args, **kwargs) -> str:
        if Path(self) == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)


def _assert_one_sentence(code: int | None, out: str, err: str, expected: str) -> None:
    assert "Traceback" not in out + err, out + err
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, err  # sentence + hint
    assert expected in lines[0], (expected, err)


@pytest.mark.parametrize(("args", "expected"), [(a, e) for _, a, e in TABLE],
                         ids=[name for name, _, _ in TABLE])
def test_bad_input_is_one_sentence_and_exit_2(args, expected, files, capsys, monkeypatch):
    _deny(monkeypatch, files / "locked.toml")
    args = [a.format(dir=files) for a in args]
    try:
        code = run(args)
        crash = ""
    except BaseException:  # noqa: BLE001 - what a user would have seen as a traceback
        code, crash = None, traceback.format_exc()
    captured = capsys.readouterr()
    _assert_one_sentence(code, captured.out, captured.err + crash, expected.format(dir=files))
    assert not (files / "pwned").exists()


def _as_process(args: list[str], cwd: Path,
                user: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "500"}
    env.pop("MAILFLEET_CONFIG", None)
    return subprocess.run([*(user or []), sys.executable, "-m", "mailfleet", *args], cwd=cwd,
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          timeout=120)


def test_a_key_with_a_passphrase_is_refused_before_any_greenlet(files):
    """The installed entry point (gevent): pyinfra's greenlet used to print a traceback here."""
    result = _as_process(["-c", str(files / "passkey.toml"), "deploy"], files)
    _assert_one_sentence(result.returncode, result.stdout, result.stderr,
                         f"hosts 'mx1': ssh_key {files}/id_secret needs a passphrase")


def test_a_config_another_user_cannot_read(tmp_path):
    """A real permission error: as root, read the config as nobody (root reads mode 000)."""
    locked = tmp_path / "private"
    locked.mkdir(mode=0o700)
    config = locked / "mailfleet.toml"
    config.write_text(GOOD)
    config.chmod(0o600)
    user = None
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root for this test"
        user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    else:
        config.chmod(0)
    result = _as_process(["-c", str(config), "check"], Path("/"), user)
    _assert_one_sentence(result.returncode, result.stdout, result.stderr,
                         f"Cannot read config file {config}: Permission denied.")
