"""Time of a no-change re-deploy of the full mail stack to one lab host, and of `check` on it,
measured in one run.

Prints the median of 3 no-change `mailfleet deploy` runs, the operations it checked, the
median of 5 `mailfleet check` runs (targets of issue 23: 5 s and 3 s), and their ratios to one
bare `ssh host true` round trip on the same host (the floor for any SSH-driven tool), so that
the figures mean the same on a faster or slower machine.

Run as root: .venv/bin/python benchmarks/redeploy_noop.py [--release bookworm]
"""

from __future__ import annotations

import argparse
import json
import statistics

from _common import Mailfleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    mailfleet = Mailfleet("mfbench")
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
        checks, check_times = 0, []
        for _ in range(5):
            elapsed, done = mailfleet("check", "--json")
            report = json.loads(done.stdout)
            assert report["ok"], [c for c in report["checks"] if c["status"] != "ok"]
            checks = len(report["checks"])
            check_times.append(elapsed)
        ssh_times = [mailfleet.ssh("n1", "true")[0] for _ in range(5)]
    finally:
        mailfleet.down()
    redeploy, ssh = statistics.median(times), statistics.median(ssh_times)
    print(f"release                  {args.release}")
    print(f"lab up (cached rootfs)   {boot:.2f} s")
    print(f"first deploy             {first:.2f} s")
    print(f"no-change re-deploy      {redeploy:.2f} s (median of {args.runs}, {operations} operations, "
          f"{1000 * redeploy / operations:.0f} ms per operation)")
    print(f"one `lab ssh n1 -- true` {ssh:.2f} s")
    print(f"ratio re-deploy / ssh    {redeploy / ssh:.1f}")
    check = statistics.median(check_times)
    print(f"check                    {check:.2f} s (median of 5, {checks} checks, min "
          f"{min(check_times):.2f}, max {max(check_times):.2f})")
    print(f"ratio check / ssh        {check / ssh:.1f}")


if __name__ == "__main__":
    main()
