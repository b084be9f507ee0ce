"""Time of `mailfleet check` on one full-stack lab host, measured in one run.

Prints the median of 5 `mailfleet check` runs (every check: the host's shell reads in one
SSH command, the mail flow end to end over SMTP and IMAP), its number of checks, and the ratio
to one bare `mailfleet lab ssh n1 -- true` (a process start plus one SSH login: the floor
for any SSH-driven command), so that the figure means the same on a faster or slower machine.
Target (issue 23): at most 3 s.

Run as root: .venv/bin/python benchmarks/check_time.py [--release bookworm]
"""

from __future__ import annotations

import argparse
import json
import statistics

from _common import Mailfleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    mailfleet = Mailfleet("mfbench")
    try:
        mailfleet("lab", "up", "--preinstall", "--release", args.release)
        mailfleet("deploy", "--json")
        times, checks = [], 0
        for _ in range(args.runs):
            elapsed, done = mailfleet("check", "--json")
            report = json.loads(done.stdout)
            assert report["ok"], [c for c in report["checks"] if c["status"] != "ok"]
            checks = len(report["checks"])
            times.append(elapsed)
        ssh_times = [mailfleet.ssh("n1", "true")[0] for _ in range(5)]
    finally:
        mailfleet.down()
    check, ssh = statistics.median(times), statistics.median(ssh_times)
    print(f"release                  {args.release}")
    print(f"check                    {check:.2f} s (median of {args.runs}, {checks} checks; "
          f"min {min(times):.2f}, max {max(times):.2f})")
    print(f"one `lab ssh n1 -- true` {ssh:.2f} s")
    print(f"ratio check / ssh        {check / ssh:.1f}")
    print(f"target <= 3 s            {'met' if check <= 3 else 'not met'}")


if __name__ == "__main__":
    main()
