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
