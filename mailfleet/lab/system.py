"""Small wrappers around the machine: commands, owned processes, free ports, machine packages."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from mailfleet.errors import LabError


# command -> Debian package that provides it on the operator's machine
MACHINE_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "systemd-nspawn": "systemd-container",
    "socat": "socat",
    "tinyproxy": "tinyproxy",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "nsenter": "util-linux",
    # the operator's end of a lab VPN (the machine's kernel has no WireGuard module)
    "wg": "wireguard-tools",
    "wireguard-go": "wireguard-go",
}


def run(cmd: Sequence[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a local command; a failure becomes a LabError quoting its stderr."""
    result = subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LabError(
            f"`{' '.join(cmd)}` failed (exit {result.returncode}): "
            f"{detail[-1] if detail else 'no output'}."
        )
    return result


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "The lab needs root: it creates network namespaces and boots containers.",
            hint="Run it again with sudo.",
        )


def _missing_machine_packages() -> list[str]:
    return sorted({pkg for tool, pkg in MACHINE_TOOLS.items() if not shutil.which(tool)})


def ensure_machine_tools(lock_dir: Path, log=print) -> None:
    """Install the Debian packages the lab needs on this machine, once. Two labs starting at
    once (two test workers) would run apt-get together, and the second would fail on dpkg's
    lock: they take turns on a lock file in `lock_dir`, and the second finds the tools there."""
    if not _missing_machine_packages():
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".machine-tools.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = _missing_machine_packages()
        if missing:
            _install_machine_packages(missing, log)


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
# each booted Debian (systemd and its services) holds about 11 inotify instances, all of them
# root's; the kernel's default of 128 per user runs out at about ten nodes at once (two test
# workers' labs plus a browser), and systemd in a node then fails in odd ways
INOTIFY_WANTED = 1024


def ensure_inotify_instances(log=print) -> None:
    """Raise the machine's per-user inotify instance limit for the nodes, if lower."""
    try:
        current = int(INOTIFY_INSTANCES.read_text())
        if current < INOTIFY_WANTED:
            INOTIFY_INSTANCES.write_text(f"{INOTIFY_WANTED}\n")
            log(f"raised fs.inotify.max_user_instances from {current} to {INOTIFY_WANTED} "
                "(booted nodes hold about 11 each)")
    except (OSError, ValueError):
        pass  # not ours to change (a container): the nodes still boot, fewer at once


def _install_machine_packages(missing: list[str], log) -> None:
    log(f"installing on this machine: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        run(["apt-get", "update"], env=env)
        run(install, env=env)


def spawn(cmd: Sequence[str], log_file: Path, env: dict[str, str] | None = None) -> int:
    """Start a long-running helper detached from this CLI process; returns its pid."""
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return proc.pid


def cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line names `marker` (our state directory): ours, and only ours."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            line = cmdline(int(entry.name))
            if line and marker in line:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0); reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and _state(pid) != "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def stop_pids(pids: Iterable[int], timeout: float) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL what is left."""
    pids = [p for p in pids if alive(p)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if alive(p)]
        time.sleep(0.1)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if alive(p)]
        time.sleep(0.05)


def kill_pid(pid: int) -> None:
    """SIGKILL, now (a node's PID 1: the node crashes)."""
    _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def unmount(path: str) -> None:
    """Unmount `path`; lazily when it is still busy (a node's last processes exiting)."""
    if run(["umount", path], check=False).returncode != 0:
        run(["umount", "-l", path], check=False)


def wait_for_ssh_banner(port: int, timeout: float) -> bool:
    """True once something on 127.0.0.1:port speaks SSH (a forward alone accepts and closes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.settimeout(2)
                if sock.recv(8).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False
