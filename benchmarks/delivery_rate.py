"""Messages per second delivered end to end (SMTP in on port 25 -> Postfix -> OpenDKIM
milter -> PostgreSQL lookups -> LMTP -> Dovecot Maildir), measured in one run.

Boots two Debian lab hosts: n2 gets the full mailfleet deploy, n1 only Debian's postfix
package for its `smtp-source` load generator. n1 sends N messages over S parallel
sessions to the health-check mailbox on n2; the rate is N / (time of the last file in the
Maildir - time smtp-source started). Both hosts share this machine's clock and CPUs.

Run as root: .venv/bin/python benchmarks/delivery_rate.py [--messages 1000] [--sessions 4]
"""

from __future__ import annotations

import argparse
import time

from _common import Mailfleet

from mailfleet.services.mailflow import check_address

MAILDIR = "/var/mail/vmail/example.test/mailfleet-check/Maildir"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    args = parser.parse_args()
    mailfleet = Mailfleet("mfbench")
    recipient = check_address("example.test")
    try:
        mailfleet("lab", "up", "--release", args.release, "--release", args.release)
        mailfleet.ssh("n1", "export DEBIAN_FRONTEND=noninteractive; echo 'postfix "
                      "postfix/main_mailer_type select No configuration' | debconf-set-selections; "
                      "apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "
                      "postfix >/dev/null")
        mailfleet("deploy", "--limit", "n2")
        mailfleet.ssh("n2", f"find {MAILDIR} -type f -path '*/new/*' -delete; true")
        _, started = mailfleet.ssh(
            "n1", f"date +%s.%N; /usr/sbin/smtp-source -d -s {args.sessions} -m {args.messages} "
                  f"-l {args.size} -f bench@outside.test -t {recipient} 10.77.0.12:25 >/dev/null")
        deadline = time.monotonic() + 600
        count, last = 0, 0.0
        while time.monotonic() < deadline:
            _, out = mailfleet.ssh("n2", f"ls {MAILDIR}/new | wc -l; find {MAILDIR}/new -type f "
                                         "-printf '%T@\\n' | sort -n | tail -n 1")
            lines = out.split()
            count, last = int(lines[0]), float(lines[1]) if len(lines) > 1 else 0.0
            if count >= args.messages:
                break
            time.sleep(1)
        _, queue = mailfleet.ssh("n2", "postqueue -j | wc -l")
    finally:
        mailfleet.down()
    start = float(started.split()[0])
    seconds = last - start
    print(f"release              {args.release}")
    print(f"messages delivered   {count} of {args.messages} ({args.size} bytes, {args.sessions} sessions)")
    print(f"still queued         {queue}")
    print(f"elapsed              {seconds:.1f} s (smtp-source start -> last Maildir file)")
    print(f"delivery rate        {count / seconds:.1f} messages/s end to end")


if __name__ == "__main__":
    main()
