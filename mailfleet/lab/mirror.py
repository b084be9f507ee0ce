"""Which Debian mirror the lab builds its images from: this machine's own apt configuration.

The lab must work wherever apt works (a local mirror, a proxy, a snapshot archive), so it
never names a mirror itself: it reads the first Debian archive that apt here uses, from
deb822 `.sources` files or one-line `sources.list` entries. MAILFLEET_LAB_MIRROR overrides it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mailfleet.errors import UsageError

APT_DIR = Path("/etc/apt")
ENV = "MAILFLEET_LAB_MIRROR"
URI_RE = re.compile(r"^(https?|file)://\S+$")


def lab_mirror(apt_dir: Path = APT_DIR) -> str:
    """The mirror URI for mmdebstrap, e.g. http://mirror.example/debian (no trailing slash)."""
    override = os.environ.get(ENV, "").strip()
    if override:
        if not URI_RE.fullmatch(override):
            raise UsageError(f"{ENV}={override!r} is not an http://, https:// or file:// URI.")
        return override.rstrip("/")
    for uri, suites in _entries(apt_dir):
        # the main archive, not -security/-updates/-backports (those live elsewhere or
        # share the main archive's URI anyway)
        if any("-" not in suite and "/" not in suite for suite in suites):
            return uri.rstrip("/")
    raise UsageError(
        f"No Debian archive found in this machine's apt sources ({apt_dir}/sources.list, "
        f"{apt_dir}/sources.list.d/): the lab builds its images from the mirror apt uses.",
        hint=f"Set {ENV} to a Debian mirror URI.")


def _entries(apt_dir: Path) -> list[tuple[str, list[str]]]:
    """(uri, suites) of every enabled `deb` source, in apt's reading order."""
    found: list[tuple[str, list[str]]] = []
    files = [apt_dir / "sources.list"]
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found += _deb822(text) if path.suffix == ".sources" else _one_line(text)
    return found


def _one_line(text: str) -> list[tuple[str, list[str]]]:
    found = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and URI_RE.fullmatch(words[1]):
            found.append((words[1], [words[2]]))
    return found


def _deb822(text: str) -> list[tuple[str, list[str]]]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        found += [(uri, suites) for uri in fields.get("uris", "").split() if URI_RE.fullmatch(uri)]
    return found
