"""Fresh full deploy time / bare `apt-get install` time of the same packages, in one run.

Boots two identical fresh lab hosts of one release. On n1 it times what an admin would do
by hand as the floor: `apt-get update` + `apt-get install` of exactly the packages
`mailfleet deploy` installs (nothing configured). On n2 it times `mailfleet deploy` (the
same update and install, plus every config file, key, certificate, database, restart).
Both start from the same shared .deb cache, one after the other (no CPU contention).

Run as root: .venv/bin/python benchmarks/full_deploy.py [--release bookworm] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics

from _common import Mailfleet

from mailfleet.services import packages


def one_pair(release: str, bare: str) -> tuple[float, float, int, float]:
    """(bare install seconds, deploy seconds, operations, check seconds) on two fresh hosts."""
    mailfleet = Mailfleet("mfbench")
    try:
        mailfleet("lab", "up", "--release", release, "--release", release)
        apt_seconds, out = mailfleet.ssh("n1", bare)
        assert out.endswith("installed"), out
        deploy_seconds, done = mailfleet("deploy", "--limit", "n2", "--json")
        report = json.loads(done.stdout)
        assert report["ok"], report
        check_seconds, _ = mailfleet("check", "--limit", "n2")
    finally:
        mailfleet.down()
    return apt_seconds, deploy_seconds, report["hosts"]["n2"]["operations"], check_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    parser.add_argument("--runs", type=int, default=1,
                        help="pairs of fresh hosts; the median ratio is printed last")
    args = parser.parse_args()
    names = " ".join(shlex.quote(p) for p in packages(None))
    bare = (
        "export DEBIAN_FRONTEND=noninteractive; "
        "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections; "
        f"apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends {names} "
        ">/dev/null && echo installed"
    )
    print(f"release                        {args.release}")
    print(f"packages                       {len(packages(None))} named (plus dependencies)")
    ratios = []
    for _ in range(args.runs):
        apt_seconds, deploy_seconds, operations, check_seconds = one_pair(args.release, bare)
        ratios.append(deploy_seconds / apt_seconds)
        print(f"bare apt-get update + install  {apt_seconds:.1f} s")
        print(f"mailfleet deploy (fresh host)  {deploy_seconds:.1f} s ({operations} operations)")
        print(f"mailfleet check (all passed)   {check_seconds:.1f} s")
        print(f"ratio deploy / bare install    {ratios[-1]:.2f}")
    if args.runs > 1:
        print(f"median ratio of {args.runs} pairs      {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
