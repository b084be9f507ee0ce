"""One module per service: its packages and templates as data, its deploy steps, its checks.

`DEPLOY_STEPS` is the order `mailfleet deploy` applies them in; `CHECKS` feed `mailfleet check`.
"""

from __future__ import annotations

from mailfleet.config import Config
from mailfleet.services import system

DEPLOY_STEPS = [system.deploy]
CHECKS = [system.checks]


def packages(config: Config | None) -> list[str]:
    """Every Debian package `deploy` installs for this config (lab images preinstall them)."""
    return sorted({*system.BASE_PACKAGES})
