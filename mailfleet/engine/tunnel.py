"""SSH port forwards from this machine to services that listen only on the host.

`mailfleet check` talks SMTP, IMAP and ManageSieve to the host as a client would, and the
accounts commands reach PostgreSQL on 127.0.0.1:5432; both go through the same SSH access
the deploy uses (OpenSSH's `ssh -L`, with the host's key and known_hosts settings).
`ssh_run` is the same access for the few single commands that need no pyinfra session
(reading the database password, moving a removed mailbox aside).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailfleet.config import HostSettings
from mailfleet.engine.sshkey import checked_key
from mailfleet.errors import DeployError
from mailfleet.netutil import free_port, port_open, wait_until

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


ATTEMPTS = 3


@contextmanager
def tunnel(settings: HostSettings, remote_ports: list[int]) -> Iterator[dict[int, int]]:
    """Forward each remote port (on the host's 127.0.0.1) to a local one: {remote: local}.

    A free local port can be taken by another program before ssh binds it (tests and
    several mailfleet commands run side by side): then it tries again with new ports."""
    for attempt in range(1, ATTEMPTS + 1):
        local = {port: free_port() for port in remote_ports}
        proc, error = _open(settings, local)
        if proc is not None:
            break
        if "Address already in use" not in error or attempt == ATTEMPTS:
            raise DeployError(f"Could not open an SSH tunnel to {settings.name}: "
                              f"{error or 'no answer'}.")
    try:
        yield local
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _open(settings: HostSettings, local: dict[int, int]) -> tuple[subprocess.Popen | None, str]:
    """The running ssh, or None and why it ended."""
    cmd = [*ssh_base(settings), "-N", "-o", "ExitOnForwardFailure=yes"]
    for remote, mine in local.items():
        cmd += ["-L", f"127.0.0.1:{mine}:127.0.0.1:{remote}"]
    proc = subprocess.Popen([*cmd, settings.address], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    probe = next(iter(local.values()))
    up = wait_until(lambda: proc.poll() is not None or port_open(probe), CONNECT_SECONDS)
    if up and proc.poll() is None:
        return proc, ""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        return None, ""
    return None, proc.stderr.read().decode(errors="replace").strip()
