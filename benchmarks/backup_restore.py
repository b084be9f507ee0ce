"""Backup and restore of 1 GiB of mail on one lab host, measured in one run, against a
plain copy of the same mail store on the same disk.

Boots one Debian lab host, deploys with a restic repository on the host, writes 1 GiB of
mail (4096 messages of 256 KiB, random text like attachments) into a mailbox, then times:
a plain `cp -a` of the mail store (the yardstick), the first backup (`mailfleet backup
run`), a second backup with nothing changed (deduplication), and `mailfleet backup restore`
of the newest snapshot onto the host (the restore script alone, and with the deploy and
health checks that follow it). Prints the times and the ratios to the copy.

Run as root: .venv/bin/python benchmarks/backup_restore.py [--release bookworm] [--mib 1024]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import tomlkit
from _common import Mailfleet

USER, PASSWORD = "bench@example.internal", "Quiet-river-2026-k"
MAILDIR = "/var/mail/vmail/example.internal/bench/Maildir"
MESSAGE_KIB = 256


def fill(mailfleet: Mailfleet, mib: int) -> None:
    """MIB of messages straight into the Maildir (delivery speed is another benchmark)."""
    count = mib * 1024 // MESSAGE_KIB
    raw = MESSAGE_KIB * 1024 * 3 // 4 - 512  # base64 grows by 4/3; room for the headers
    mailfleet.ssh("n1", (
        f"set -e; d={MAILDIR}/new; install -d -o vmail -g vmail -m 700 {MAILDIR} "
        f"{MAILDIR}/cur {MAILDIR}/tmp $d; i=0; while [ $i -lt {count} ]; do "
        f"f=$d/1764000000.M${{i}}P1.bench; "
        f"{{ printf 'From: someone@outside.test\\nTo: {USER}\\nSubject: bench %s\\n"
        f"Content-Type: application/octet-stream\\nContent-Transfer-Encoding: base64\\n\\n' $i; "
        f"head -c {raw} /dev/urandom | base64 -w 76; }} > $f; i=$((i + 1)); done; "
        f"chown -R vmail:vmail {MAILDIR}; doveadm force-resync -u {USER} INBOX"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    parser.add_argument("--mib", type=int, default=1024, help="Mail to back up, in MiB.")
    args = parser.parse_args()
    mailfleet = Mailfleet("mfbench")
    secret = Path(tempfile.mkdtemp()) / "backup-password"
    times: dict[str, float] = {}
    try:
        mailfleet("lab", "up", "--release", args.release, "--preinstall")
        doc = tomlkit.parse(mailfleet.config.read_text())
        doc["backup"] = {"repository": "/var/backups/mailfleet/restic",
                         "password_file": str(secret)}
        mailfleet.config.write_text(tomlkit.dumps(doc))
        mailfleet("deploy", "--json")
        mailfleet("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
        fill(mailfleet, args.mib)
        _, size = mailfleet.ssh("n1", "du -sm /var/mail/vmail | cut -f1")
        mailfleet.ssh("n1", "sync; echo 3 > /proc/sys/vm/drop_caches || true")
        times["copy"], _ = mailfleet.ssh("n1", "cp -a /var/mail/vmail /var/tmp/vmail-copy && sync")
        mailfleet.ssh("n1", "rm -rf /var/tmp/vmail-copy")
        times["backup"], _ = mailfleet("backup", "run")
        times["again"], _ = mailfleet("backup", "run")
        _, repo = mailfleet.ssh("n1", "du -sm /var/backups/mailfleet/restic | cut -f1")
        times["restore"], done = mailfleet("backup", "restore", "--yes", "--json")
        result = json.loads(done.stdout)
        times["restore script"] = result["restore_seconds"]
        _, count = mailfleet.ssh("n1", f"find {MAILDIR} -type f -name '*.bench*' | wc -l")
    finally:
        mailfleet.down()
    print(f"release                       {args.release}")
    print(f"mail store                    {size} MiB ({count} messages restored), "
          f"repository {repo} MiB")
    print(f"plain copy (cp -a)            {times['copy']:.1f} s")
    print(f"first backup                  {times['backup']:.1f} s "
          f"({int(size) / times['backup']:.0f} MiB/s)")
    print(f"second backup, no change      {times['again']:.1f} s")
    print(f"restore (script)              {times['restore script']:.1f} s")
    print(f"restore + deploy + check      {times['restore']:.1f} s")
    print(f"ratio first backup / copy     {times['backup'] / times['copy']:.1f}")
    print(f"ratio restore script / copy   {times['restore script'] / times['copy']:.1f}")


if __name__ == "__main__":
    main()
