"""Take-over of a dead mail host's mailboxes: every member of a cluster with several mail
hosts watches them; when one has not answered for `cluster.takeover_after` seconds, the
member whose PostgreSQL is the primary (Patroni's leader, the one holder of its lock in etcd)
makes each of its mailboxes' replica the home. Mail hosts also retry their mail queue as
soon as a home changes. By hand: `mailfleet cluster takeover HOST` (cli/cluster.py).
"""

from __future__ import annotations

from mailfleet.accounts.schema import DATABASE, take_over_sql
from mailfleet.engine import HostContext
from mailfleet.services import scripted
from mailfleet.services.dovecot import LMTP_PORT
from mailfleet.services.shape import HostPlan, Service, Unit
from mailfleet.templating import render

UNIT = "mailfleet-takeover"
SCRIPT = "/usr/local/lib/mailfleet/takeover.sh"
INTERVAL = 10  # seconds between two looks at the mail hosts
FLUSHES = 18  # after a home changed, the mail queue is retried this many passes (3 min)


def applies(plan: HostPlan) -> bool:
    """On every member of a cluster with several mail hosts (the primary may hold no mail)."""
    return bool(plan.cluster) and len(plan.mail_cluster) > 1


def deploy(ctx: HostContext) -> None:
    script = render("replication/mailfleet-takeover.sh.j2", host=ctx.plan.host,
                    interval=INTERVAL, after=ctx.config.cluster.takeover_after,
                    database=DATABASE, lmtp_port=LMTP_PORT, mail=ctx.plan.mail,
                    take_over=take_over_sql(":'host'"), flushes=FLUSHES)
    scripted.install(ctx, UNIT, SCRIPT, script,
                     render(f"replication/{UNIT}.service.j2", script=SCRIPT), "take-over watch")


def retire(ctx: HostContext) -> None:
    scripted.remove(ctx, UNIT, SCRIPT, "take-over watch")


SERVICE = Service("takeover", applies=applies, deploy=deploy, retire=retire,
                  units=(Unit(UNIT),), managed_paths=(scripted.unit_file(UNIT),))
