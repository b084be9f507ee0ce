"""Several mail hosts in one cluster, measured in one run on three lab hosts (n1 and n2
["mail", "db"], n3 ["db"]):

- replication delay: a message delivered on its mailbox's home (n1) until the replica (n2)
  stores it (doveadm sync, a pass every 10 s): the window of mail a destroyed home loses;
- take-over time: the home's node (n2) powered off until its user logs in at n1 and reads
  the mail it had (`cluster.takeover_after` plus detection and the move);
- the delivery rate through a mail host that is not the mailbox's home (n1:25, LMTP
  proxied to n2) compared with the rate on the home itself (n2:25), N messages each from
  n3's `smtp-source` (the same machine's CPUs for all three).

Run as root: .venv/bin/python benchmarks/mail_cluster.py [--messages 500] [--takeover-after 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import tomlkit
from _common import Mailfleet

PASSWORD = "Correct-Horse-7-battery"
# an IMAP login at 127.0.0.1 on a node, and the number of messages it sees ("fail" if none)
IMAP_PROBE = ("python3 -c \"import imaplib, ssl, sys\n"
              "c = ssl.create_default_context(); c.check_hostname = False; "
              "c.verify_mode = ssl.CERT_NONE\n"
              "try:\n i = imaplib.IMAP4_SSL('127.0.0.1', 993, ssl_context=c, timeout=5); "
              "i.login(sys.argv[1], sys.argv[2]); print(i.select('INBOX')[1][0].decode())\n"
              "except Exception:\n print('fail')\" ")


def stored(mailfleet: Mailfleet, node: str, user: str) -> int:
    local, domain = user.split("@")
    _, out = mailfleet.ssh(node, f"find /var/mail/vmail/{domain}/{local} -type f \\( -path "
                                 "'*/new/*' -o -path '*/cur/*' \\) 2>/dev/null | wc -l")
    return int(out or 0)


def rate(mailfleet: Mailfleet, entry: str, home: str, user: str, messages: int) -> float:
    """Messages per second from smtp-source on n3 into ENTRY:25 until HOME stores them."""
    before = stored(mailfleet, home, user)
    started = time.monotonic()
    mailfleet.ssh("n3", f"/usr/sbin/smtp-source -d -s 4 -m {messages} -l 4096 "
                        f"-f bench@outside.test -t {user} {entry}:25 >/dev/null")
    while stored(mailfleet, home, user) < before + messages:
        if time.monotonic() - started > 900:
            raise SystemExit(f"{messages} messages through {entry} did not all arrive")
        time.sleep(0.5)
    return messages / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=("trixie", "bookworm"))
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--takeover-after", type=int, default=30)
    args = parser.parse_args()
    mailfleet = Mailfleet("mfbmail")
    try:
        mailfleet("lab", "up", "--nodes", "3", "--release", args.release, "--preinstall")
        doc = tomlkit.parse(mailfleet.config.read_text())
        doc["features"]["wireguard"] = True
        doc["features"]["backups"] = False
        for host in doc["hosts"]:
            host["roles"] = ["mail", "db"]
        doc["hosts"][2]["roles"] = ["db"]
        doc["cluster"] = {"enabled": True, "takeover_after": args.takeover_after}
        mailfleet.config.write_text(tomlkit.dumps(doc))
        mailfleet("deploy")
        domain = str(doc["mail"]["domain"])
        addresses = {str(h["name"]): str(h["ipv4"]) for h in doc["hosts"]}
        on_n1, on_n2 = f"one@{domain}", f"two@{domain}"
        for user, home in ((on_n1, "n1"), (on_n2, "n2")):
            mailfleet("user", "add", user, "--home", home, "--password-stdin",
                      input=PASSWORD + "\n")

        # the delivery rate: through the home, then through the other mail host
        home_rate = rate(mailfleet, addresses["n2"], "n2", on_n2, args.messages)
        proxied_rate = rate(mailfleet, addresses["n1"], "n2", on_n2, args.messages)

        # replication delay: one message at a time to n1's mailbox, until n2 has it
        delays = []
        for number in range(5):
            count = stored(mailfleet, "n2", on_n1)
            mailfleet.ssh("n3", f"/usr/sbin/smtp-source -m 1 -f bench@outside.test -t {on_n1} "
                                f"{addresses['n1']}:25 >/dev/null")
            started = time.monotonic()
            while stored(mailfleet, "n1", on_n1) <= count:  # delivered on the home
                time.sleep(0.2)
            delivered = time.monotonic()
            while stored(mailfleet, "n2", on_n1) <= count:  # copied to the replica
                if time.monotonic() - started > 300:
                    raise SystemExit("a delivery did not reach the replica within 300 s")
                time.sleep(0.2)
            delays.append(time.monotonic() - delivered)

        # take-over: n2 off until its user reads all its mail at n1
        time.sleep(15)  # the last deliveries copied to n1
        total = stored(mailfleet, "n2", on_n2)
        mailfleet("lab", "stop", "n2")
        stopped = time.monotonic()
        while True:
            _, seen = mailfleet.ssh("n1", IMAP_PROBE + f"{on_n2} {PASSWORD}")
            if seen.isdigit() and int(seen) >= total:
                break
            if time.monotonic() - stopped > args.takeover_after + 300:
                raise SystemExit(f"no take-over within {args.takeover_after + 300} s ({seen})")
            time.sleep(1)
        takeover = time.monotonic() - stopped
        mailfleet("lab", "start", "n2")
    finally:
        if not os.environ.get("MAILFLEET_BENCH_KEEP"):  # (kept: to look at a failure)
            mailfleet.down()
    print(f"release                          {args.release}")
    print(f"replication delay                median {statistics.median(delays):.1f} s, max "
          f"{max(delays):.1f} s (delivered on the home -> stored on the replica)")
    print(f"take-over time                   {takeover:.1f} s (home powered off -> its user "
          f"reads all {total} messages at another host; takeover_after {args.takeover_after} s)")
    print(f"delivery rate on the home        {home_rate:.1f} msg/s ({args.messages} messages "
          "into n2:25, homed on n2)")
    print(f"delivery rate via another host   {proxied_rate:.1f} msg/s (into n1:25, LMTP proxied)")
    print(f"ratio via another host / home    {proxied_rate / home_rate:.2f}")

if __name__ == "__main__":
    main()
