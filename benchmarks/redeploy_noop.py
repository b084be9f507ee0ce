"""Time of a no-change re-deploy of the full mail stack, on one lab host and on three at
once, and of `check` on one host, measured in one run.

Prints the median of 3 no-change `mailfleet deploy` runs with the operations checked and the
SSH commands sent per host (the targets of issue 23: 5 s on one host, 6 s on three), the
median of 5 `mailfleet check` runs (3 s), and their ratios to one bare `ssh host true` round
trip on the same host (the floor for any SSH-driven tool), so that the figures mean the same
on a faster or slower machine.

Run as root: .venv/bin/python benchmarks/redeploy_noop.py [--release bookworm] [--hosts 1]
"""

from __future__ import annotations

import argparse
import json
import statistics

from _common import Mailfleet


def redeploys(mailfleet: Mailfleet, runs: int) -> tuple[float, dict]:
    """The median seconds of `runs` no-change deploys, and the last one's report."""
    times, report = [], {}
    for _ in range(runs):
        elapsed, done = mailfleet("deploy", "--json")
        report = json.loads(done.stdout)
        assert report["changes"] == 0, report
        times.append(elapsed)
    return statistics.median(times), report


def one_host(release: str, runs: int) -> None:
    mailfleet = Mailfleet("mfbench")
    try:
        boot, _ = mailfleet("lab", "up", "--release", release)
        first, _ = mailfleet("deploy", "--json")
        redeploy, report = redeploys(mailfleet, runs)
        host = report["hosts"]["n1"]
        checks, check_times = 0, []
        for _ in range(5):
            elapsed, done = mailfleet("check", "--json")
            result = json.loads(done.stdout)
            assert result["ok"], [c for c in result["checks"] if c["status"] != "ok"]
            checks = len(result["checks"])
            check_times.append(elapsed)
        ssh = statistics.median([mailfleet.ssh("n1", "true")[0] for _ in range(5)])
    finally:
        mailfleet.down()
    operations = host["operations"]
    print(f"release                  {release}")
    print(f"lab up (cached rootfs)   {boot:.2f} s")
    print(f"first deploy             {first:.2f} s")
    print(f"no-change re-deploy      {redeploy:.2f} s (median of {runs}, {operations} operations, "
          f"{host['commands']} SSH commands)")
    print(f"one `lab ssh n1 -- true` {ssh:.2f} s")
    print(f"ratio re-deploy / ssh    {redeploy / ssh:.1f}")
    check = statistics.median(check_times)
    print(f"check                    {check:.2f} s (median of 5, {checks} checks, min "
          f"{min(check_times):.2f}, max {max(check_times):.2f})")
    print(f"ratio check / ssh        {check / ssh:.1f}")


def three_hosts(release: str, runs: int) -> None:
    mailfleet = Mailfleet("mfbench3")
    try:
        mailfleet("lab", "up", *(["--release", release] * 3))
        first, _ = mailfleet("deploy", "--json")
        redeploy, report = redeploys(mailfleet, runs)
    finally:
        mailfleet.down()
    commands = ", ".join(f"{name} {host['commands']}" for name, host in report["hosts"].items())
    print(f"three hosts: first deploy {first:.2f} s")
    print(f"three hosts: no-change    {redeploy:.2f} s (median of {runs}; SSH commands: {commands})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=3, choices=[1, 3],
                        help="3: also the three-host run (after the one-host one)")
    args = parser.parse_args()
    one_host(args.release, args.runs)
    if args.hosts == 3:
        three_hosts(args.release, args.runs)


if __name__ == "__main__":
    main()
