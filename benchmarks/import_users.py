"""Time to import 10,000 users from a CSV, against the pure password-hashing time, in one run.

Boots a Debian 13 lab host, deploys, then times `mailfleet user import` of N users (every
tenth without a password, so generated) end to end: CLI start, SSH tunnel, reading and
checking every row against the database, hashing, one transaction. Then, on the same
machine, hashes the same N passwords the fastest way mailfleet can (all cores, nothing
else). The ratio is the import's overhead; the goal is under 1.5.

Run as root: .venv/bin/python benchmarks/import_users.py [--users 10000] [--release bookworm]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

from _common import Mailfleet

from mailfleet.accounts.passwords import generate_password, hash_many


def write_csv(path: Path, count: int) -> list[str]:
    passwords = []
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name", "password", "quota", "aliases"])
        for i in range(count):
            password = "" if i % 10 == 0 else f"Bench-{i:05d}-staple-horse"
            passwords.append(password or generate_password())
            writer.writerow([f"user{i:05d}@example.internal", f"Bench User, {i}", password,
                             "1G" if i % 4 == 0 else "", f"alias{i:05d}@example.internal" if i % 20 == 0 else ""])
    return passwords


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    passwords = write_csv(work / "users.csv", args.users)
    mailfleet = Mailfleet("mfbench")
    try:
        mailfleet("lab", "up", "--release", args.release)
        mailfleet("deploy", "--json")
        imported, done = mailfleet("user", "import", str(work / "users.csv"))
        assert f"{args.users} created" in done.stdout, done.stdout
        _, listed = mailfleet("user", "list", "--json")
        count = len(json.loads(listed.stdout))
        assert count == args.users, f"{count} users listed after importing {args.users}"
    finally:
        mailfleet.down()
    started = time.perf_counter()
    hash_many(passwords)
    hashing = time.perf_counter() - started
    print(f"release                      {args.release}, {os.cpu_count()} cores")
    print(f"users imported               {args.users} ({args.users // 10} generated passwords)")
    print(f"mailfleet user import        {imported:.1f} s ({args.users / imported:.0f} users/s)")
    print(f"hashing alone (all cores)    {hashing:.1f} s ({1000 * hashing / args.users:.1f} ms per password)")
    print(f"ratio import / hashing       {imported / hashing:.2f} (goal: under 1.5)")


if __name__ == "__main__":
    main()
