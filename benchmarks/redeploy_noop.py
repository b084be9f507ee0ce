"""Time of a no-change re-deploy to one lab host (Debian 13), measured in one run.

Prints the median of 3 no-change `mailfleet deploy` runs, the operations it checked, and the
ratio to one bare `ssh host true` round trip on the same host (the floor for any SSH-driven
tool), so that the figure means the same on a faster or slower machine.

Run as root: .venv/bin/python benchmarks/redeploy_noop.py [--release bookworm]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    config = Path(tempfile.mkdtemp()) / "mailfleet.toml"
    env = {**os.environ, "MAILFLEET_LAB": "mfbench", "MAILFLEET_CONFIG": str(config)}

    def mailfleet(*argv: str) -> tuple[float, subprocess.CompletedProcess]:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mailfleet", *argv], env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"mailfleet {' '.join(argv)} failed:\n{done.stdout}{done.stderr}")
        return elapsed, done

    try:
        boot, _ = mailfleet("lab", "up", "--release", args.release)
        first, _ = mailfleet("deploy", "--json")
        times, operations = [], 0
        for _ in range(args.runs):
            elapsed, done = mailfleet("deploy", "--json")
            report = json.loads(done.stdout)
            assert report["changes"] == 0, report
            operations = report["hosts"]["n1"]["operations"]
            times.append(elapsed)
        ssh_times = [mailfleet("lab", "ssh", "n1", "--", "true")[0] for _ in range(5)]
    finally:
        subprocess.run([sys.executable, "-m", "mailfleet", "lab", "down"], env=env,
                       capture_output=True)
    redeploy, ssh = statistics.median(times), statistics.median(ssh_times)
    print(f"release                  {args.release}")
    print(f"lab up (cached rootfs)   {boot:.2f} s")
    print(f"first deploy             {first:.2f} s")
    print(f"no-change re-deploy      {redeploy:.2f} s (median of {args.runs}, {operations} operations, "
          f"{1000 * redeploy / operations:.0f} ms per operation)")
    print(f"one `lab ssh n1 -- true` {ssh:.2f} s")
    print(f"ratio re-deploy / ssh    {redeploy / ssh:.1f}")


if __name__ == "__main__":
    main()
