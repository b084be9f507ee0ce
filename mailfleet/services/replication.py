"""Replication between a cluster's mail hosts: every mailbox has a home (which serves it) and
a replica (another mail host with a copy). A service on each mail host copies the mailboxes
homed there to their replicas with `doveadm sync` every few seconds, through the doveadm
listener dovecot.py opens on the VPN. The window of mail a destroyed home can lose is about
one interval plus one copy (docs/cluster.md).
"""

from __future__ import annotations

from pyinfra.facts.server import Command

from mailfleet.accounts.schema import DATABASE
from mailfleet.engine import Engine, HostContext
from mailfleet.services import scripted
from mailfleet.services.checks import CheckResult
from mailfleet.services.mailstore import VMAIL_DIR
from mailfleet.services.shape import Service, Unit
from mailfleet.templating import render

# where the other mail hosts' copies arrive: Dovecot's doveadm listener on the VPN address
# (dovecot.py; Dovecot's documented port), and the password they share for it
DOVEADM_PORT = 12345
DOVEADM_SECRET = "doveadm"  # one value for the fleet (cluster.SHARED_SECRETS)
UNIT = "mailfleet-replicate"
SCRIPT = "/usr/local/lib/mailfleet/replicate.sh"
STATE_DIR = "/var/lib/mailfleet/replication"
INTERVAL = 10  # seconds between the end of one pass and the next
FULL_MINUTES = 10  # an unchanged mailbox is still copied this often (a replica restored)
# one mailbox's copy in a pass: a copy cut short keeps what it copied and goes on at the
# next pass (a large mailbox's first copy takes several), and a copy that hangs (seen in the
# lab under load, right after the cluster formed, although -T was set) holds up the others
# for this long only
SYNC_TIMEOUT = 120
IO_TIMEOUT = 60  # ... unless it stalls this long (doveadm sync -T)
# Two copies of one mailbox between the same two hosts at once each import what only the
# other side has, so both bring the same message over: a duplicate (seen in CI: `user move`'s
# copy back and the new home's pass, both new home <- old home). doveadm sync -l takes a lock
# in the mailbox's home on both ends (.dsync-lock.<other host>), so such copies take turns;
# one waits this long for the other
LOCK_TIMEOUT = 60
# a replica this far behind fails `check` (it is down, or copies fail)
BEHIND_LIMIT = 300
STATUS = f"cat {STATE_DIR}/status 2>/dev/null; printf 'now '; date +%s"


def deploy(ctx: HostContext) -> None:
    script = render("replication/mailfleet-replicate.sh.j2", host=ctx.plan.host,
                    state_dir=STATE_DIR, vmail_dir=VMAIL_DIR, port=DOVEADM_PORT,
                    database=DATABASE, interval=INTERVAL, full_minutes=FULL_MINUTES,
                    sync_timeout=SYNC_TIMEOUT, io_timeout=IO_TIMEOUT,
                    lock_timeout=LOCK_TIMEOUT)
    scripted.install(ctx, UNIT, SCRIPT, script,
                     render(f"replication/{UNIT}.service.j2", script=SCRIPT), "replication")


def retire(ctx: HostContext) -> None:
    """No longer one of several mail hosts: no replication (the copies stay where they are)."""
    scripted.remove(ctx, UNIT, SCRIPT, "replication")


def parse_status(text: str) -> tuple[int, int, dict[str, int]]:
    """(when the last pass began, now, {replica address: seconds behind})."""
    last = now = 0
    behind: dict[str, int] = {}
    for line in text.splitlines():
        kind, *values = line.split() or [""]
        if kind == "pass" and values and values[0].isdigit():
            last = int(values[0])
        elif kind == "now" and values and values[0].isdigit():
            now = int(values[0])
        elif kind == "replica" and len(values) == 2 and values[1].isdigit():
            behind[values[0]] = int(values[1])
    return last, now, behind


def checks(engine: Engine) -> list[CheckResult]:
    """Per mail host: its passes go on, and each replica is close behind."""
    results = []
    for name, text in engine.facts(Command, command=STATUS).items():
        plan = engine.plans[name]
        if not plan.replicated:
            continue
        last, now, behind = parse_status(text or "")
        hint = f"journalctl -u {UNIT} on {name}"
        if not last or now - last > BEHIND_LIMIT:
            results.append(CheckResult(
                name, "replication", "fail",
                f"last pass {now - last} s ago" if last else "no pass yet", hint))
            continue
        names = {address: other for other, address in plan.mail_cluster}
        late = any(seconds > BEHIND_LIMIT for seconds in behind.values())
        detail = ", ".join(f"{names.get(a, a)} {s} s behind" for a, s in sorted(behind.items()))
        results.append(CheckResult(
            name, "replication", "fail" if late else "ok",
            f"replicas: {detail}" if detail else "no mailbox homed here",
            f"a replica is down or copies to it fail: {hint}" if late else None))
    return results


SERVICE = Service("replication", applies=lambda plan: plan.replicated, deploy=deploy,
                  retire=retire, checks=checks, reads=(STATUS,), units=(Unit(UNIT),),
                  managed_paths=(scripted.unit_file(UNIT),))  # (and SCRIPT, below system's path)
