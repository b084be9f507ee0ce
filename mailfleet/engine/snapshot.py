"""One SSH round trip that reads, before any operation is added, everything the services
need to decide what to change: file checksums, secrets, unit states, database state, ...

Each SSH command costs about 90 ms here; reading these facts one by one made a no-change
deploy of the mail stack 81 commands long. Services register a named shell snippet at import
time; the first `HostContext.snapshot(name)` runs all of them in one command and splits the
output. The snapshot is the state before the deploy: operations that act on it must be safe
when an earlier operation of the same run has already done part of the work.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

_SECTIONS: dict[str, str] = {}
_MARK = "@@mailfleet-section"

# Files mailfleet writes live below these; a path below them that the snapshot did not
# list does not exist. Paths elsewhere are read with pyinfra's facts as usual.
MANAGED_PATHS = ("/etc/mailfleet", "/etc/postfix", "/etc/dovecot", "/etc/opendkim",
                 "/etc/opendkim.conf", "/etc/mailname", "/etc/aliases", "/etc/postgresql",
                 "/usr/local/lib/mailfleet", "/etc/systemd/system/opendkim.service.d",
                 "/etc/systemd/system/opendmarc.service.d",
                 "/etc/ssh/sshd_config.d", "/etc/sudoers.d", "/etc/sysctl.d/60-mailfleet.conf",
                 "/etc/apt/apt.conf.d/20auto-upgrades", "/etc/fail2ban/jail.d",
                 "/etc/wireguard", "/etc/systemd/system/ssh.service.d",
                 "/etc/systemd/system/wg-quick@wg0.service.d")
SECRETS_DIR = "/etc/mailfleet/secrets"


def register(name: str, command: str) -> None:
    """Add a shell snippet whose output the services read as `snapshot(name)`."""
    _SECTIONS[name] = command


_UNITS: list[str] = []


def register_unit(unit: str) -> None:
    """Read this systemd unit's active and enabled state in the snapshot ("units")."""
    if unit not in _UNITS:
        _UNITS.append(unit)


def parse_units(text: str) -> dict[str, tuple[str, str]]:
    """{unit: (is-active, is-enabled)}"""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            found[parts[0]] = (parts[1], parts[2])
    return found


def command() -> str:
    parts = []
    sections = dict(_SECTIONS)
    if _UNITS:
        sections["units"] = (f"for u in {' '.join(shlex.quote(u) for u in _UNITS)}; do "
                             'echo "$u $(systemctl is-active "$u") $(systemctl is-enabled "$u")"; '
                             "done")
    for name, snippet in sections.items():
        # a snippet whose output lacks a final newline must not swallow the next marker
        parts.append(f"echo; echo '{_MARK} {name}'; ( {snippet} ) 2>/dev/null")
    return "; ".join(parts) + "; true"


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


def managed(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in MANAGED_PATHS)


def parse_secrets(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip():
            found[name] = value.strip()
    return found


_paths = " ".join(shlex.quote(p) for p in MANAGED_PATHS)
register("files", f"find {_paths} -type f -printf '%m %u %g %p\\n'; echo ==; "
                  f"find {_paths} -type f -exec sha1sum {{}} +")
register("secrets", f"for f in {SECRETS_DIR}/*; do [ -f \"$f\" ] && "
                    "printf '%s %s\\n' \"${f##*/}\" \"$(head -n 1 \"$f\")\"; done")
register("os", '. /etc/os-release && echo "$ID $VERSION_ID $(uname -m)"')
