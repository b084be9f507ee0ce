"""Lab tests: real Debian hosts booted with systemd-nspawn, driven through the real CLI.

They need root. Without it they fail (loudly), they never skip: a lab test that did not
run has proven nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab


@dataclass
class Cli:
    """`mailfleet` as a user runs it, bound to one lab name and one config file."""

    lab: str
    config: Path

    def __call__(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
        env = {**os.environ, "MAILFLEET_LAB": self.lab, "MAILFLEET_CONFIG": str(self.config)}
        result = subprocess.run(
            [sys.executable, "-m", "mailfleet", *args], capture_output=True, text=True, env=env,
            stdin=subprocess.DEVNULL, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"mailfleet {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "--json").stdout)

    def ssh(self, node: str, command: str) -> str:
        return self("lab", "ssh", node, "--", command).stdout.strip()

    def account(self, node: str, *args: str) -> None:
        """Create an account through mailfleet's database layer (see accounts_helper.py)."""
        result = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("accounts_helper.py")),
             str(self.config), node, *args],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
        )
        assert result.returncode == 0, result.stderr


class LabNet:
    """Runs client code inside the lab's own network (its bridge namespace), as a machine
    on the Internet would reach the hosts: a worker thread that entered the namespace
    with setns(2), which changes only the calling thread."""

    CLONE_NEWNET = 0x40000000

    def __init__(self, lab: str) -> None:
        from mailfleet.lab.paths import LabPaths

        path = f"/run/netns/{LabPaths(lab).bridge_ns}"
        self._pool = ThreadPoolExecutor(1, initializer=self._enter, initargs=(path,))

    @classmethod
    def _enter(cls, path: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(fd, cls.CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({path})")
        finally:
            os.close(fd)

    def run(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown()


def lab_leftovers(lab: str) -> dict[str, list[str]]:
    """Everything a lab named `lab` could leave behind: namespaces, processes, mounts."""
    from mailfleet.lab.paths import LabPaths
    from mailfleet.lab.system import cmdline, pids_mentioning

    paths = LabPaths(lab)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    marker = str(paths.state_dir) + "/"
    return {
        "namespaces": [l.split()[0] for l in namespaces.splitlines()
                       if l.startswith(paths.netns_prefix)],
        "processes": [f"{pid}: {cmdline(pid)}" for pid in pids_mentioning(marker)],
        "mounts": [l for l in Path("/proc/mounts").read_text().splitlines() if marker in l],
    }


@pytest.fixture(scope="session")
def two_release_lab(tmp_path_factory):
    """One Debian 12 node (n1) and one Debian 13 node (n2); always torn down."""
    cli = Cli("mft1", tmp_path_factory.mktemp("lab") / "mailfleet.toml")
    try:
        cli("lab", "up", "--release", "bookworm", "--release", "trixie", timeout=600)
        yield cli
    finally:
        down = cli("lab", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert lab_leftovers("mft1") == {"namespaces": [], "processes": [], "mounts": []}
