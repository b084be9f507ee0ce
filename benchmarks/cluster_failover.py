"""The accounts database's cluster on three lab hosts: how long a write is impossible when
the primary's host is powered off, and how far the standbys fall behind during a 1,000-user
import, measured in one run.

- failover: `mailfleet lab stop` of the primary's node, then `mailfleet user add` tried once
  a second until it works; printed as seconds and as a ratio to Patroni's lock TTL (20 s:
  no failover can be quicker than the lock's expiry, whatever the machine).
- replication lag: the primary's pg_stat_replication sampled every 0.1 s during a
  `mailfleet user import` of 1,000 users (one transaction; the command returns once every
  standby replayed it), and the import's own time.

Run as root: .venv/bin/python benchmarks/cluster_failover.py [--release bookworm]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import tomlkit
from _common import Mailfleet

TTL = 20  # templates/patroni/config.yml.j2
PASSWORD = "Correct-Horse-7-battery"
SAMPLER = ("for i in $(seq 400); do psql -X -tA -F ' ' -c \"SELECT "
           "coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0), "
           "coalesce(max(extract(epoch FROM replay_lag)), 0) FROM pg_stat_replication\"; "
           "sleep 0.1; done")


def status(mailfleet: Mailfleet) -> dict:
    """`cluster status --json` (exit 1 when a member is down: still an answer here)."""
    done = subprocess.run([sys.executable, "-m", "mailfleet", "cluster", "status", "--json"],
                          env=mailfleet.env, capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=("trixie", "bookworm"))
    args = parser.parse_args()
    mailfleet = Mailfleet("mfbclus")
    try:
        mailfleet("lab", "up", "--nodes", "3", "--release", args.release, "--preinstall")
        doc = tomlkit.parse(mailfleet.config.read_text())
        doc["features"]["wireguard"] = True
        doc["features"]["backups"] = False
        for host in doc["hosts"][1:]:
            host["roles"] = ["db"]
        doc["cluster"] = {"enabled": True}
        mailfleet.config.write_text(tomlkit.dumps(doc))
        deploy, _ = mailfleet("deploy", "--json")
        domain = str(doc["mail"]["domain"])

        # replication lag under an import, on the first primary
        primary = status(mailfleet)["primary"]
        rows = mailfleet.config.with_name("many.csv")
        rows.write_text("email,password\n" + "".join(
            f"bench{i:04d}@{domain},{PASSWORD}\n" for i in range(1000)))
        sampler = subprocess.Popen(
            [sys.executable, "-m", "mailfleet", "lab", "ssh", primary, "--",
             "sudo -u postgres bash -s"], env=mailfleet.env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        sampler.stdin.write(SAMPLER + "\n")  # the script on its standard input: no quoting
        sampler.stdin.close()
        time.sleep(2)
        imported, _ = mailfleet("user", "import", str(rows))
        time.sleep(1)
        sampler.terminate()
        samples = [line.split() for line in sampler.stdout.read().splitlines()
                   if len(line.split()) == 2]
        lag_bytes = max(float(b) for b, _ in samples) if samples else float("nan")
        lag_seconds = max(float(s) for _, s in samples) if samples else float("nan")

        # failover: the primary's node off, a write possible again
        mailfleet("lab", "stop", primary)
        started = time.monotonic()
        while True:
            done = subprocess.run([sys.executable, "-m", "mailfleet", "user", "add",
                                   f"after@{domain}", "--password-stdin"],
                                  input=PASSWORD + "\n", env=mailfleet.env,
                                  capture_output=True, text=True)
            failover = time.monotonic() - started
            if done.returncode == 0 or failover > 180:
                break
            time.sleep(1)
        if done.returncode != 0:
            sys.exit(f"no write worked within 180 s of the failover:\n{done.stderr}")
        new_primary = status(mailfleet)["primary"]
        mailfleet("lab", "start", primary)
    finally:
        mailfleet.down()
    print(f"release                        {args.release}")
    print(f"first deploy, three hosts      {deploy:.1f} s")
    print(f"import of 1,000 users          {imported:.2f} s (argon2id hashing included)")
    print(f"replication lag in the import  max {lag_bytes:.0f} bytes, {lag_seconds:.3f} s "
          f"({len(samples)} samples on {primary})")
    print(f"failover                       {failover:.1f} s from {primary} powered off to a "
          f"write on {new_primary}")
    print(f"ratio failover / lock TTL      {failover / TTL:.2f}")


if __name__ == "__main__":
    main()
