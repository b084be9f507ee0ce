"""Messages per second delivered end to end (SMTP in on port 25 -> Postfix -> milters ->
PostgreSQL lookups -> LMTP -> Dovecot Maildir), against a bare baseline in the same run.

Boots three identical Debian lab hosts from the preinstalled image: n2 gets the full mailfleet
deploy; n3 is the baseline, Debian's Postfix handing mail to Debian's Dovecot over LMTP (a
hash map of the recipients, no milters, no policy service, no database: baseline/); n1 runs
Postfix's `smtp-source` as the sender. The load is spread over --recipients mailboxes (one
smtp-source per recipient, the sessions shared among them), as mail for a company arrives:
Dovecot 2.4 refuses more than 10 deliveries to one user at a time. The same load goes to n2,
then to n3 (one at a time: they share this machine's two cores). A rate is N / (time of the
last file in the Maildirs - time smtp-source started).

Run as root: .venv/bin/python benchmarks/delivery_rate.py [--release trixie|bookworm]
    [--messages 10000] [--sessions 20] [--recipients 20] [--size 4096]
On ext4 without a journal, put the lab on a journaled filesystem first (see lab_filesystem in
_common.py), e.g. MAILFLEET_LAB_STATE=/mnt/journaled/lab.
"""

from __future__ import annotations

import argparse
import base64
import statistics
from pathlib import Path

from _common import Mailfleet, cpu, cpu_used, lab_filesystem

BASELINE = Path(__file__).with_name("baseline")
TARGETS = {  # node: (address, the Maildirs' pattern; bench00@example.internal ...)
    "n2": ("10.77.0.12", "/var/mail/vmail/example.internal/bench[0-9]*/Maildir"),
    "n3": ("10.77.0.13", "/home/bench[0-9]*/Maildir"),
}


def _recipients(count: int) -> list[str]:
    return [f"bench{number:02d}@example.internal" for number in range(count)]


def _mailboxes(mailfleet: Mailfleet, count: int) -> None:
    """The recipients as mailfleet users (one import: generated passwords, never used)."""
    rows = Path(mailfleet.config.parent) / "bench.csv"
    rows.write_text("email\n" + "".join(f"{r}\n" for r in _recipients(count)))
    mailfleet("user", "import", str(rows), "--passwords-out", str(rows.with_suffix(".out")),
              "--host", "n2")


def _baseline(mailfleet: Mailfleet, release: str, recipients: int) -> None:
    dovecot = (BASELINE / f"dovecot-{'2.4' if release == 'trixie' else '2.3'}.conf").read_bytes()
    script = base64.b64encode((BASELINE / "setup.sh").read_bytes()).decode()
    conf = base64.b64encode(dovecot).decode()
    mailfleet.ssh("n3", f"echo {script} | base64 -d > /root/bare.sh && "
                        f"echo {conf} | base64 -d | sh /root/bare.sh {recipients}")


def _delays(mailfleet: Mailfleet, node: str, since: float) -> list[float]:
    """Medians of Postfix's delays=a/b/c/d (before the queue manager, in the queue, connection
    setup, transmission) over the deliveries since `since`."""
    _, out = mailfleet.ssh(node, f"journalctl --since @{int(since)} -o cat | "
                                 "grep -o 'delays=[0-9./]*' | cut -d= -f2")
    rows = [[float(v) for v in line.split("/")] for line in out.splitlines() if line.count("/") == 3]
    return [statistics.median(column) for column in zip(*rows)] if rows else []


def _delivered(mailfleet: Mailfleet, node: str, wanted: int) -> tuple[int, float]:
    """Wait on the node until `wanted` messages are in the recipients' new/ folders (or none
    has come for 6 s with the queue empty, or 30 min passed); (count, the newest one's time).
    The waiting is one shell loop there: a `mailfleet lab ssh` per poll from here costs
    ~1.4 CPU-s, which took a quarter of the two cores from the host under test."""
    found = f"find {TARGETS[node][1]}/new -type f"
    _, out = mailfleet.ssh(node, (
        f"end=$(($(date +%s) + 1800)); seen=-1; still=0; "
        f"while count=$({found} 2>/dev/null | wc -l); [ $count -lt {wanted} ] && "
        f"[ $(date +%s) -lt $end ] && [ $still -lt 6 ]; do "
        f"if [ $count -eq $seen ] && [ $(postqueue -j | wc -l) -eq 0 ]; "
        f"then still=$((still + 1)); else still=0; fi; seen=$count; sleep 1; done; "
        f"{found} -printf '%T@\\n' 2>/dev/null | sort -n | awk 'END {{print NR, $1}}'"))
    count, _, last = out.partition(" ")
    return int(count or 0), float(last or 0)


# transactions PostgreSQL has run (every lookup is one): on the baseline, no database at all
QUERIES = ("runuser -u postgres -- psql -Atc 'SELECT sum(xact_commit + xact_rollback) FROM "
           "pg_stat_database' 2>/dev/null || echo 0")


def _queries(mailfleet: Mailfleet, node: str) -> int:
    _, out = mailfleet.ssh(node, QUERIES)
    return int(out or 0)


def _rate(mailfleet: Mailfleet, node: str, args) -> dict:
    address, maildirs = TARGETS[node]
    recipients = _recipients(args.recipients)
    # one message first, retried until the freshly deployed path accepts it: smtp-source gives
    # up on its remaining messages after a refusal, which would shorten the timed run
    _, warmup = mailfleet.ssh("n1", "for i in $(seq 1 20); do /usr/sbin/smtp-source -m 1 -f "
                                    f"bench@outside.test -t {recipients[0]} {address}:25 "
                                    "2>/dev/null && { echo $i; break; }; sleep 3; done")
    print(f"{node}: warm-up message accepted after {warmup or 'no'} tries", flush=True)
    mailfleet.ssh(node, f"find {maildirs}/new -type f -delete 2>/dev/null; true")
    before, queries = cpu(mailfleet, node), _queries(mailfleet, node)
    each, sessions = args.messages // len(recipients), max(1, args.sessions // len(recipients))
    senders = " ".join(f"/usr/sbin/smtp-source -d -s {sessions} -m {each} -l {args.size} "
                       f"-f bench@outside.test -t {r} {address}:25 >/dev/null &"
                       for r in recipients)
    _, started = mailfleet.ssh("n1", f"date +%s.%N; {senders} wait")
    wanted = each * len(recipients)
    count, last = _delivered(mailfleet, node, wanted)
    _, queue = mailfleet.ssh(node, "postqueue -j | wc -l")
    queries = _queries(mailfleet, node) - queries
    start = float(started.split()[0])
    seconds = last - start
    return {"count": count, "wanted": wanted, "queued": int(queue), "seconds": seconds,
            "rate": count / seconds if seconds > 0 else 0.0,
            "queries": queries / count if count else 0.0,
            "cpu": cpu_used(before, cpu(mailfleet, node)), "delays": _delays(mailfleet, node, start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=20, help="SMTP sessions at once")
    parser.add_argument("--recipients", type=int, default=20, help="mailboxes the mail goes to")
    parser.add_argument("--size", type=int, default=4096, help="message size in bytes")
    args = parser.parse_args()
    mailfleet = Mailfleet("mfbench")
    try:
        mailfleet("lab", "up", "--nodes", "3", "--release", args.release, "--preinstall")
        mailfleet("deploy", "--limit", "n2")
        _mailboxes(mailfleet, args.recipients)
        _baseline(mailfleet, args.release, args.recipients)
        results = {node: _rate(mailfleet, node, args) for node in ("n2", "n3")}
    finally:
        mailfleet.down()
    print(f"release              {args.release}")
    print(f"lab filesystem       {lab_filesystem()}")
    print(f"load                 {args.messages} messages of {args.size} bytes, "
          f"{args.sessions} SMTP sessions, {args.recipients} recipients")
    for node, what in (("n2", "mailfleet"), ("n3", "bare baseline")):
        r = results[node]
        print(f"{what:20} {r['rate']:7.1f} messages/s ({r['count']} of {r['wanted']} delivered in "
              f"{r['seconds']:.1f} s, {r['queued']} still queued)")
        print(f"{'':20} CPU seconds: {', '.join(f'{c} {s:.0f}' for c, s in r['cpu'])}")
        if r["queries"]:
            print(f"{'':20} database transactions per message: {r['queries']:.1f}")
        if r["delays"]:
            print(f"{'':20} Postfix delays a/b/c/d (median s): "
                  + "/".join(f"{d:g}" for d in r["delays"]))
    bare = results["n3"]["rate"]
    print(f"ratio                {results['n2']['rate'] / bare if bare else 0:.2f} "
          "(mailfleet / bare)")


if __name__ == "__main__":
    main()
