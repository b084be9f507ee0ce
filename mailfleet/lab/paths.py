"""Where the lab keeps its cache and its running state, and how it names what it owns.

Everything the lab creates carries the lab's own prefix or lives under its own state
directory, so that cleanup can find leftovers without ever touching anything else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mailfleet.errors import UsageError

RELEASES = {"bookworm": "12", "trixie": "13"}
DEFAULT_RELEASE = "trixie"
LAB_ID_RE = re.compile(r"^[a-z0-9]{1,8}$")


def cache_root() -> Path:
    """Root filesystems and the shared apt archive; survives `lab down`."""
    return Path(os.environ.get("MAILFLEET_LAB_CACHE", "/var/cache/mailfleet/lab"))


def state_root() -> Path:
    return Path(os.environ.get("MAILFLEET_LAB_STATE", "/var/lib/mailfleet/lab"))


def lab_id() -> str:
    value = os.environ.get("MAILFLEET_LAB", "mf")
    if not LAB_ID_RE.fullmatch(value):
        raise UsageError(
            f"MAILFLEET_LAB={value!r} is not a valid lab name (1-8 lower case letters or digits)."
        )
    return value


@dataclass(frozen=True)
class LabPaths:
    """Names and paths of one lab (one bridge network and its nodes)."""

    id: str

    @property
    def state_dir(self) -> Path:
        return state_root() / self.id

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def netns_prefix(self) -> str:
        return f"mflab-{self.id}-"

    @property
    def bridge_ns(self) -> str:
        return f"{self.netns_prefix}net"

    @property
    def operator_ns(self) -> str:
        return f"{self.netns_prefix}op"

    def node_ns(self, node: str) -> str:
        return f"{self.netns_prefix}{node}"

    def node_dir(self, node: str) -> Path:
        return self.state_dir / "nodes" / node

    def socket(self, name: str) -> Path:
        return self.state_dir / f"{name}.sock"

    @property
    def apt_archives(self) -> Path:
        return cache_root() / "apt-archives"


def rootfs_dir(release: str) -> Path:
    return cache_root() / "rootfs" / release
