"""Command-line entry point.

gevent must patch the standard library before anything imports ssl or socket (pyinfra
runs its SSH connections in greenlets), so this module imports nothing else at the top.
"""

from __future__ import annotations

import sys


def main() -> None:
    from gevent import monkey

    monkey.patch_all()

    from mailfleet.cli.app import run

    sys.exit(run())
