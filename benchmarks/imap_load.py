"""IMAP under load: logins per second and login/session latency (p50, p99) for 50 concurrent
clients against 200 mailboxes of 20 messages each, with the ARGON2ID cost as configured;
then the same with Dovecot's authentication cache on (`auth_cache_size`), in one run.

Boots two Debian lab hosts from the preinstalled image: n2 gets the full mailfleet deploy
and 200 users (`mailfleet user import`), each mailbox filled with the same 20 messages; n1
runs the clients (Python's imaplib over TLS, one thread each): login, SELECT INBOX, FETCH of
the 20 messages, LOGOUT, again, for --seconds. Both share this machine's two cores, so the
figures are what one 2-core machine does with its own clients on it.

Run as root: .venv/bin/python benchmarks/imap_load.py [--release trixie|bookworm]
    [--clients 50] [--users 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import tempfile
from pathlib import Path

from _common import Mailfleet, cpu, cpu_used

PASSWORD = "Bench-imap-staple-horse-7"
DOMAIN = "example.internal"
VMAIL = f"/var/mail/vmail/{DOMAIN}"
CACHE = "/etc/dovecot/conf.d/99-bench-auth-cache.conf"

# runs on n1: the clients; prints one JSON line
CLIENTS = r"""
import imaplib, json, random, ssl, statistics, sys, threading, time
address, users, clients, seconds, password = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
logins, sessions, errors = [], [], []
lock = threading.Lock()
end = time.monotonic() + seconds
def client(n):
    rng = random.Random(n)
    while time.monotonic() < end:
        user = f"load{rng.randrange(users):04d}@example.internal"
        started = time.monotonic()
        try:
            imap = imaplib.IMAP4_SSL(address, 993, ssl_context=ctx, timeout=60)
            imap.login(user, password)
            logged = time.monotonic()
            imap.select("INBOX")
            typ, data = imap.fetch("1:20", "(RFC822)")
            assert typ == "OK" and len([d for d in data if isinstance(d, tuple)]) == 20, typ
            imap.logout()
        except Exception as e:
            with lock:
                errors.append(type(e).__name__)
            continue
        with lock:
            logins.append(logged - started)
            sessions.append(time.monotonic() - started)
threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
began = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
took = time.monotonic() - began
q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else 0.0
print(json.dumps({"sessions": len(sessions), "seconds": took, "errors": errors[:5],
                  "error_count": len(errors), "client_cpu": time.process_time(),
                  "login_p50": q(logins, 50), "login_p99": q(logins, 99),
                  "session_p50": q(sessions, 50), "session_p99": q(sessions, 99)}))
"""


def _users(path: Path, count: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "password"])
        for i in range(count):
            writer.writerow([f"load{i:04d}@{DOMAIN}", PASSWORD])


def _fill(mailfleet: Mailfleet, users: int) -> None:
    """20 messages to the first mailbox over SMTP, then its Maildir copied to the others."""
    first = f"{VMAIL}/load0000/Maildir"
    mailfleet.ssh("n1", f"/usr/sbin/smtp-source -s 2 -m 20 -l 4096 -f bench@outside.test "
                        f"-t load0000@{DOMAIN} 10.77.0.12:25")
    mailfleet.ssh("n2", f"for i in $(seq 1 30); do [ $(ls {first}/new 2>/dev/null | wc -l) "
                        "-ge 20 ] && break; sleep 1; done")
    mailfleet.ssh("n2", f"for i in $(seq 1 {users - 1}); do d={VMAIL}/load$(printf %04d $i); "
                        f"mkdir -p $d && cp -a {first} $d/; done; chown -R vmail:vmail {VMAIL}")


def _load(mailfleet: Mailfleet, args) -> dict:
    """One timed load; with the CPU seconds each service used on the server (n2), and the
    clients' own (python3 on n1: 50 threads share one interpreter lock)."""
    script = base64.b64encode(CLIENTS.encode()).decode()
    before = cpu(mailfleet, "n2")
    _, out = mailfleet.ssh("n1", f"echo {script} | base64 -d > /root/clients.py && python3 "
                                 f"/root/clients.py 10.77.0.12 {args.users} {args.clients} "
                                 f"{args.seconds} {PASSWORD}")
    result = json.loads(out.splitlines()[-1])
    result["cpu"] = cpu_used(before, cpu(mailfleet, "n2"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    _users(work / "users.csv", args.users)
    mailfleet = Mailfleet("mfbench")
    try:
        mailfleet("lab", "up", "--nodes", "2", "--release", args.release, "--preinstall")
        mailfleet("deploy", "--limit", "n2")
        mailfleet("user", "import", str(work / "users.csv"), "--host", "n2")
        _fill(mailfleet, args.users)
        plain = _load(mailfleet, args)
        mailfleet.ssh("n2", f"printf 'auth_cache_size = 10M\\nauth_cache_ttl = 1 hour\\n' > "
                            f"{CACHE} && systemctl reload dovecot")
        cached = _load(mailfleet, args)
    finally:
        mailfleet.down()
    print(f"release              {args.release}")
    print(f"load                 {args.clients} clients, {args.users} mailboxes of 20 messages, "
          f"{args.seconds:.0f} s each")
    for what, r in (("auth cache off", plain), ("auth cache on", cached)):
        print(f"{what:20} {r['sessions'] / r['seconds']:6.1f} logins/s; login p50 "
              f"{1000 * r['login_p50']:.0f} ms, p99 {1000 * r['login_p99']:.0f} ms; session p50 "
              f"{1000 * r['session_p50']:.0f} ms, p99 {1000 * r['session_p99']:.0f} ms; "
              f"{r['error_count']} errors {r['errors']}")
        print(f"{'':20} CPU seconds on the server: "
              f"{', '.join(f'{c} {s:.0f}' for c, s in r['cpu'])}; clients {r['client_cpu']:.0f}")


if __name__ == "__main__":
    main()
