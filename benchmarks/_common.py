"""Shared by the benchmark scripts: `mailfleet` bound to one lab name and a scratch config."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class Mailfleet:
    def __init__(self, lab: str) -> None:
        self.config = Path(tempfile.mkdtemp()) / "mailfleet.toml"
        self.env = {**os.environ, "MAILFLEET_LAB": lab, "MAILFLEET_CONFIG": str(self.config)}

    def __call__(self, *argv: str, input: str | None = None
                 ) -> tuple[float, subprocess.CompletedProcess]:
        """Run `mailfleet ARGV` (with `input` on its standard input, else none); (seconds,
        result). A failure ends the benchmark."""
        started = time.perf_counter()
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        done = subprocess.run([sys.executable, "-m", "mailfleet", *argv], env=self.env,
                              capture_output=True, text=True, **stdin)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"mailfleet {' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
        return elapsed, done

    def ssh(self, node: str, command: str) -> tuple[float, str]:
        elapsed, done = self("lab", "ssh", node, "--", command)
        return elapsed, done.stdout.strip()

    def down(self) -> None:
        subprocess.run([sys.executable, "-m", "mailfleet", "lab", "down"], env=self.env,
                       capture_output=True)


# CPU seconds per systemd unit: its cgroup's count includes the processes that already
# ended (a login process per connection, an imap process per session), which ps misses.
# Lab nodes on a Debian 12 machine see cgroup v2 under unified/ (the host's hybrid layout).
CPU = ("for f in /sys/fs/cgroup/unified/system.slice/*/cpu.stat "
       "/sys/fs/cgroup/system.slice/*/cpu.stat; do [ -e \"$f\" ] || continue; "
       "u=${f%/cpu.stat}; awk -v u=\"${u##*/}\" '$1 == \"usage_usec\" {print u, $2 / 1e6}' "
       "\"$f\"; done")


def cpu(mailfleet: Mailfleet, node: str) -> dict[str, float]:
    """CPU seconds used so far by each systemd service on `node`."""
    _, out = mailfleet.ssh(node, CPU)
    return {unit.removesuffix(".service"): float(seconds)
            for unit, seconds in (l.split() for l in out.splitlines())}


def cpu_used(before: dict[str, float], after: dict[str, float], top: int = 8
             ) -> list[tuple[str, float]]:
    """The services that used the most CPU seconds between two `cpu` readings (a service
    restarted in between counts from its restart)."""
    used = sorted(((after[u] - before.get(u, 0) if after[u] >= before.get(u, 0) else after[u], u)
                   for u in after), reverse=True)
    return [(u, s) for s, u in used[:top] if s >= 0.5]


def lab_filesystem() -> str:
    """What the lab hosts write to. On ext4 without a journal (the root disk of some VMs) every
    new inode is chosen past the inodes deleted in the last seconds to minutes, each looked up
    in the buffer cache: mail, which creates and deletes several files per message, then
    costs Dovecot about a quarter more CPU, more with every run (measured with perf:
    recently_deleted/find_inode_bit). Point MAILFLEET_LAB_STATE at a journaled filesystem."""
    state = os.environ.get("MAILFLEET_LAB_STATE", "/var/lib/mailfleet/lab")
    os.makedirs(state, exist_ok=True)
    found = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", state],
                           capture_output=True, text=True).stdout.split()
    if len(found) != 2:
        return f"{state}: unknown"
    source, fstype = found
    if fstype != "ext4":
        return f"{state}: {fstype}"
    device = os.path.basename(os.path.realpath(source))
    journals = os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []
    if any(j.rpartition("-")[0] == device for j in journals):
        return f"{state}: ext4 with a journal"
    return (f"{state}: ext4 WITHOUT a journal (Dovecot's CPU is inflated and drifts up run "
            "after run; set MAILFLEET_LAB_STATE to a directory on a journaled filesystem)")
