"""SSH port forwards from this machine to services that listen only on the host.

`mailfleet check` talks SMTP, IMAP and ManageSieve to the host as a client would, and the
accounts commands reach PostgreSQL on 127.0.0.1:5432; both go through the same SSH access
the deploy uses (OpenSSH's `ssh -L`, with the host's key and known_hosts settings), each
forward ending in a Unix socket in a private directory, never in a local TCP port.
`ssh_run` is the same access for the few single commands that need no pyinfra session
(reading the database password, moving a removed mailbox aside).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mailfleet.config import HostSettings
from mailfleet.engine.sshkey import checked_key
from mailfleet.errors import DeployError
from mailfleet.netutil import wait_until

CONNECT_SECONDS = 20.0


def ssh_base(settings: HostSettings) -> list[str]:
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
           "-o", "ServerAliveInterval=15", "-p", str(settings.ssh_port), "-l", settings.ssh_user]
    key = checked_key(settings)  # a bad key is one sentence, not ssh's "permission denied"
    if key:
        cmd += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    if settings.ssh_known_hosts:
        cmd += ["-o", f"UserKnownHostsFile={Path(settings.ssh_known_hosts).expanduser()}",
                "-o", "StrictHostKeyChecking=yes"]
    return cmd


def ssh_run(settings: HostSettings, command: str, timeout: float = 120) -> str:
    """Run one shell command on the host (through sudo for a non-root SSH user) and
    return its output; a failure is one sentence naming the host."""
    if settings.sudo:
        command = f"sudo -n sh -c {shlex.quote(command)}"
    try:
        done = subprocess.run([*ssh_base(settings), settings.address, command], text=True,
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise DeployError(f"{settings.name} did not answer within {timeout:.0f} s.") from err
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise DeployError(f"A command failed on {settings.name}: {detail.rstrip('.')}.")
    return done.stdout


@dataclass(frozen=True)
class Tunnel:
    """An open tunnel: one Unix socket per forwarded port, in a directory only this user can
    enter, each listened on by the ssh process `pid` (and nothing else could have made it)."""

    directory: Path
    pid: int
    ports: tuple[int, ...]

    def socket(self, port: int) -> str:
        """The socket that reaches `port` on the host's 127.0.0.1."""
        if port not in self.ports:
            raise KeyError(port)
        return str(self.directory / socket_name(port))


def socket_name(port: int) -> str:
    """libpq's name for a server's socket (`host=DIR port=5432` opens DIR/.s.PGSQL.5432);
    the same scheme for every port keeps one rule."""
    return f".s.PGSQL.{port}"


READY = "ready"  # a last forward nobody connects to: see _open
SUN_PATH_MAX = 100  # sockaddr_un holds 104 (BSD, macOS) or 108 (Linux) bytes


@contextmanager
def tunnel(settings: HostSettings, remote_ports: list[int]) -> Iterator[Tunnel]:
    """Forward each remote port (on the host's 127.0.0.1) to a Unix socket of this machine.

    Not to a local TCP port: any local user could use that while it is open (a forwarded
    port 25 arrives at the host from 127.0.0.1, inside Postfix's mynetworks), and a program
    that took the port first would receive what we send, the database password included.
    The sockets live in a new 0700 directory of this user, so only ssh started here can
    have made them and only this user can connect; the directory and ssh go at the end,
    also on errors."""
    directory = _private_dir()
    proc: subprocess.Popen | None = None
    try:
        proc = _open(settings, directory, remote_ports)
        yield Tunnel(directory, proc.pid, tuple(remote_ports))
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(directory, ignore_errors=True)


def _private_dir() -> Path:
    """A new directory only this user can enter (mkdtemp: mode 0700, never an existing one);
    under /tmp when $TMPDIR is too long for a socket address or has a ':' (ssh -L's separator)."""
    temp = tempfile.gettempdir()
    longest = len(f"/{socket_name(65535)}")
    base = None if len(temp) + 30 + longest < SUN_PATH_MAX and ":" not in temp else "/tmp"
    directory = Path(tempfile.mkdtemp(prefix="mailfleet-tunnel-", dir=base))
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        shutil.rmtree(directory, ignore_errors=True)
        raise DeployError(f"{directory} is not a private directory of this user.")
    return directory


def _ours(path: Path) -> bool:
    """A socket of this user (our ssh's; the directory lets no one else create it)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid()


def _open(settings: HostSettings, directory: Path, remote_ports: list[int]) -> subprocess.Popen:
    """The running ssh once every socket listens, or a DeployError saying why not.

    ssh sets its forwards up in order, each with socket(), bind() and listen() before the
    next: once the extra READY socket exists, all the real ones accept connections, without
    a test connection to the host's services."""
    cmd = [*ssh_base(settings), "-N", "-o", "ExitOnForwardFailure=yes",
           "-o", "StreamLocalBindUnlink=yes", "-o", "StreamLocalBindMask=0177"]
    for remote in remote_ports:
        cmd += ["-L", f"{directory / socket_name(remote)}:127.0.0.1:{remote}"]
    cmd += ["-L", f"{directory / READY}:127.0.0.1:{remote_ports[0]}"]
    proc = subprocess.Popen([*cmd, settings.address], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        up = wait_until(lambda: proc.poll() is not None or _ours(directory / READY),
                        CONNECT_SECONDS)
    except BaseException:  # Ctrl-C while waiting: no ssh left behind
        _stop(proc)
        raise
    if up and proc.poll() is None and all(_ours(directory / socket_name(p)) for p in remote_ports):
        return proc
    error = "" if proc.poll() is None else proc.stderr.read().decode(errors="replace").strip()
    _stop(proc)
    detail = (error.splitlines()[-1].rstrip(".") if error
              else f"no answer within {CONNECT_SECONDS:.0f} s")
    raise DeployError(f"Could not open an SSH tunnel to {settings.name}: {detail}.")


def _stop(proc: subprocess.Popen) -> None:
    """End our ssh (by its pid, as Popen does) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()
