"""One SSH round trip that reads, before any operation is added, everything the services
need to decide what to change: file checksums, secrets, unit states, database state, ...

Each SSH command costs about 90 ms here; reading these facts one by one made a no-change
deploy of the mail stack 81 commands long. Each service declares named shell snippets, its
units and the paths it writes (its `SERVICE` record); the engine is handed them as one
`Layout`, and the first `HostContext.snapshot(name)` runs all of them in one command and
splits the output. The snapshot is the state before the deploy: operations that act on it
must be safe when an earlier operation of the same run has already done part of the work.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mailfleet.engine.facts import FactRead

_MARK = "@@mailfleet-section"
SECRETS_DIR = "/etc/mailfleet/secrets"
STATE_DIR = "/etc/mailfleet"  # the engine's own: secrets, markers
# root-only (0700): files are uploaded here first, so a secret is never readable in transit
STAGING_DIR = "/var/lib/mailfleet/staging"

# What every snapshot reads, whatever the services: the engine's own sections.
BASE_SECTIONS = {
    "secrets": (f"for f in {SECRETS_DIR}/*; do [ -f \"$f\" ] && "
                "printf '%s %s\\n' \"${f##*/}\" \"$(head -n 1 \"$f\")\"; done"),
    "staging": f"test -d {STAGING_DIR} && echo present",
    "os": '. /etc/os-release && echo "$ID $VERSION_ID $(uname -m)"',
}


@dataclass(frozen=True)
class Layout:
    """What a host snapshot reads: named snippets, the units whose state it lists, and the
    directories (and files) below which mailfleet writes: a path below them that the
    snapshot did not list does not exist. Paths elsewhere are read with pyinfra's facts."""

    sections: dict[str, str] = field(default_factory=dict)
    units: tuple[str, ...] = ()
    managed_paths: tuple[str, ...] = ()
    # the pyinfra facts one host's operations will ask (given its HostContext), answered
    # from the snapshot (engine/facts.py)
    facts: Callable[[Any], list[FactRead]] | None = None

    @classmethod
    def of(cls, sections: Iterable[tuple[str, str]], units: Iterable[str],
           managed_paths: Iterable[str],
           facts: Callable[[Any], list[FactRead]] | None = None) -> Layout:
        found: dict[str, str] = {}
        for name, snippet in sections:
            if found.setdefault(name, snippet) != snippet:
                raise ValueError(f"snapshot section {name!r} is declared twice")
        return cls(found, tuple(dict.fromkeys(units)),
                   tuple(dict.fromkeys([STATE_DIR, *managed_paths])), facts)

    def managed(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.managed_paths)

    def command(self, extra: dict[str, str] | None = None) -> str:
        """The snapshot's one shell command: every section (and the `extra` ones)."""
        paths = " ".join(shlex.quote(p) for p in self.managed_paths)
        sections = {
            "files": (f"find {paths} -type f -printf '%m %u %g %p\\n'; echo ==; "
                      f"find {paths} -type f -exec sha1sum {{}} +"),
            **BASE_SECTIONS, **self.sections, **(extra or {}),
        }
        if self.units:
            sections["units"] = (
                f"for u in {' '.join(shlex.quote(u) for u in self.units)}; do "
                'echo "$u $(systemctl is-active "$u") $(systemctl is-enabled "$u")"; done')
        parts = []
        for name, snippet in sections.items():
            # a snippet whose output lacks a final newline must not swallow the next marker
            parts.append(f"echo; echo '{_MARK} {name}'; ( {snippet} ) 2>/dev/null")
        return "; ".join(parts) + "; true"


def parse_units(text: str) -> dict[str, tuple[str, str]]:
    """{unit: (is-active, is-enabled)}"""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            found[parts[0]] = (parts[1], parts[2])
    return found


def split(output: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    name = None
    lines: list[str] = []
    for line in output.splitlines():
        if line.startswith(_MARK + " "):
            if name:
                sections[name] = "\n".join(lines).rstrip("\n")
            name, lines = line.split(" ", 1)[1].strip(), []
        else:
            lines.append(line)
    if name:
        sections[name] = "\n".join(lines).rstrip("\n")
    return sections


@dataclass(frozen=True)
class FileState:
    mode: str  # octal permission bits as `find -printf %m` prints them, e.g. "640", "2770"
    user: str
    group: str
    sha1: str


def parse_files(text: str) -> dict[str, FileState]:
    """`find -printf '%m %u %g %p'` lines, then `==`, then sha1sum lines."""
    meta_text, _, sums_text = text.partition("\n==\n")
    sums = {}
    for line in sums_text.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 40:
            sums[path.strip()] = digest
    found = {}
    for line in meta_text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[3] in sums:
            found[parts[3]] = FileState(parts[0], parts[1], parts[2], sums[parts[3]])
    return found


def parse_secrets(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip():
            found[name] = value.strip()
    return found
