"""engine/tunnel.py: a forward ends in a Unix socket in a private directory, never in a local
TCP port that any local user could use or that another program could hold first.

`ssh` here is a small stand-in put first in PATH (no SSH server in a unit test): it parses
the `-L` arguments the way OpenSSH does and forwards each one to a loopback port standing for
the host's service (FAKE_SSH_PORTS="5432=PORT"); with a command it prints FAKE_SSH_OUTPUT.
The lab tests (tests/lab/test_mail_accounts.py) run the same code with real OpenSSH."""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from mailfleet.accounts import db
from mailfleet.config import HostSettings
from mailfleet.engine import tunnel as tunnel_mod
from mailfleet.engine.tunnel import tunnel
from mailfleet.errors import DeployError

SECRET = "the-mailfleet-admin-password-x7"

FAKE_SSH = r'''
import os, signal, socket, sys, threading

args, forwards, rest, i = sys.argv[1:], [], [], 0
while i < len(args):
    if args[i] in ("-o", "-p", "-l", "-i", "-L"):
        if args[i] == "-L":
            forwards.append(args[i + 1])
        i += 2
    elif args[i] == "-N":
        i += 1
    else:
        rest.append(args[i])
        i += 1
if len(rest) > 1:  # ssh HOST COMMAND
    sys.stdout.write(os.environ.get("FAKE_SSH_OUTPUT", ""))
    sys.exit(0)
if os.environ.get("FAKE_SSH_FAIL"):
    print(os.environ["FAKE_SSH_FAIL"], file=sys.stderr)
    sys.exit(255)
remote = dict(kv.split("=") for kv in os.environ["FAKE_SSH_PORTS"].split(","))

def pump(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def serve(listener, port):
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", port))
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()

for spec in forwards:  # LOCAL:127.0.0.1:REMOTE, LOCAL = /path or 127.0.0.1:PORT
    local, _, rport = spec.rsplit(":", 2)
    if local.startswith("/"):
        listener = socket.socket(socket.AF_UNIX)
        if os.path.exists(local):
            os.unlink(local)  # StreamLocalBindUnlink=yes
        listener.bind(local)
    else:
        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", int(local.rsplit(":", 1)[1])))
        except OSError:
            print(f"bind [127.0.0.1]:{local}: Address already in use", file=sys.stderr)
            print("Could not request local forwarding.", file=sys.stderr)
            sys.exit(255)
    listener.listen()
    threading.Thread(target=serve, args=(listener, int(remote[rport])), daemon=True).start()
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    signal.pause()
'''


class FakePostgres:
    """A loopback listener that speaks just enough of PostgreSQL's protocol to be sent a
    password in the clear (what a squatter would do), and records what it received."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                try:
                    self._session(conn)
                except OSError:
                    pass

    def _session(self, conn: socket.socket) -> None:
        while True:  # SSLRequest / GSSENCRequest are refused ("N"), then the startup packet
            length = struct.unpack("!I", self._read(conn, 4))[0]
            body = self._read(conn, length - 4)
            if struct.unpack("!I", body[:4])[0] in (80877103, 80877104):
                conn.sendall(b"N")
                continue
            break
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        kind = self._read(conn, 1)
        length = struct.unpack("!I", self._read(conn, 4))[0]
        self._read(conn, length - 4)
        assert kind == b"p"

    def _read(self, conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
            self.received += chunk
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ssh = bindir / "ssh"
    ssh.write_text(f"#!{sys.executable}\n" + textwrap.dedent(FAKE_SSH))
    ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_OUTPUT", SECRET)
    return ssh


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    """The host's PostgreSQL, as the stand-in ssh reaches it."""
    pg = FakePostgres()
    monkeypatch.setenv("FAKE_SSH_PORTS", f"5432={pg.port},25={pg.port}")
    yield pg
    pg.close()


HOST = HostSettings(name="mx", address="192.0.2.1")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_tunnel_is_a_socket_in_a_private_directory_removed_afterwards(fake_ssh, server):
    with tunnel(HOST, [5432, 25]) as forward:
        directory = Path(forward.directory)
        info = directory.lstat()
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.geteuid()
        path = Path(forward.socket(5432))
        assert path.parent == directory and path.name == ".s.PGSQL.5432"
        assert stat.S_ISSOCK(path.lstat().st_mode) and path.lstat().st_uid == os.geteuid()
        assert _alive(forward.pid)
        with socket.socket(socket.AF_UNIX) as client:  # it reaches the host's service
            client.connect(forward.socket(25))
            client.sendall(struct.pack("!II", 8, 80877103))
            assert client.recv(1) == b"N"
    assert not directory.exists(), "the tunnel directory outlived the tunnel"
    assert not _alive(forward.pid), "ssh outlived the tunnel"


def test_the_tunnel_is_closed_and_removed_when_its_user_fails(fake_ssh, server):
    with pytest.raises(RuntimeError):
        with tunnel(HOST, [5432]) as forward:
            raise RuntimeError("boom")
    assert not Path(forward.directory).exists() and not _alive(forward.pid)


def test_an_ssh_that_fails_is_one_sentence_and_leaves_nothing(fake_ssh, server, monkeypatch,
                                                               tmp_path):
    monkeypatch.setenv("FAKE_SSH_FAIL", "mx: Permission denied (publickey).")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with pytest.raises(DeployError) as err:
        with tunnel(HOST, [5432]):
            pass
    assert err.value.message == ("Could not open an SSH tunnel to mx: "
                                 "mx: Permission denied (publickey).")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_squatter_on_a_loopback_port_gets_no_connection_and_no_password(fake_ssh, server,
                                                                         monkeypatch):
    """Another local program listens on a loopback port (here: the one the old code would
    have picked). The database password goes through our socket to the host, never to it."""
    squatter = FakePostgres()
    monkeypatch.setattr(tunnel_mod, "free_port", lambda: squatter.port, raising=False)
    seen: list[dict] = []
    real_connect = db.psycopg.connect

    def connect(**kwargs):
        seen.append(kwargs)
        return real_connect(**kwargs)

    monkeypatch.setattr(db.psycopg, "connect", connect)
    try:
        with pytest.raises(DeployError):  # the stand-in server hangs up after the password
            with db.connect(HOST):
                pass
    finally:
        squatter.close()
    assert SECRET.encode() not in squatter.received, "a squatter on loopback got the password"
    assert squatter.connections == 0, "mailfleet connected to a port another program holds"
    assert SECRET.encode() in server.received, "the password did not reach the host's server"
    assert seen and seen[0]["host"].startswith("/") and seen[0]["port"] == 5432
    assert not Path(seen[0]["host"]).exists(), "the tunnel directory outlived the connection"
