"""Which Debian a host runs, and what that means for the versions mailfleet configures.

Dovecot 2.3 (Debian 12) and 2.4 (Debian 13) speak different configuration languages, and
PostgreSQL's config directory is named after its major version: both follow from the
release, which is known before anything is installed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mailfleet.engine import HostContext
from mailfleet.errors import DeployError


@dataclass(frozen=True)
class Platform:
    debian: int
    codename: str
    dovecot: str  # "2.3" or "2.4": picks the template set
    postgresql: str  # major version, as in /etc/postgresql/VERSION/main
    postfix_compatibility: str  # the newest compatibility_level this Postfix knows
    pgsql_reconnects: bool  # Postfix 3.9+ retries a single pgsql host at once after a failure
    php: str  # php-fpm's version: its unit, socket and /etc/php/VERSION
    nginx_http2_on: bool  # nginx 1.25.1+ spells HTTP/2 `http2 on;`, older ones `listen ... http2`
    gnustep_multiarch: bool  # SOGo's files under /usr/lib/TRIPLET/GNUstep (Debian 13) or not
    machine: str = "x86_64"  # `uname -m`: with "-linux-gnu", the multiarch directory

    @property
    def gnustep_lib(self) -> str:
        """Where SOGo's bundles and web resources are installed."""
        return f"/usr/lib/{self.machine}-linux-gnu/GNUstep" if self.gnustep_multiarch \
            else "/usr/lib/GNUstep"


SUPPORTED = {
    12: Platform(12, "bookworm", "2.3", "15", "3.6", False, "8.2", False, False),
    13: Platform(13, "trixie", "2.4", "17", "3.9", True, "8.4", True, True),
}


def platform(ctx: HostContext) -> Platform:
    text = ctx.snapshot("os")
    distro, version, machine = (text.split() + ["", "", ""])[:3]
    if distro != "debian" or not version.isdigit() or int(version) not in SUPPORTED:
        raise DeployError(
            f"Host {ctx.settings.name} runs {text.strip() or 'an unknown system'}; "
            "mailfleet supports Debian 12 (bookworm) and Debian 13 (trixie).",
        )
    return replace(SUPPORTED[int(version)], machine=machine or "x86_64")
