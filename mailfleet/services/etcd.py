"""etcd: the cluster's coordination store (Patroni keeps the primary's lock there).

One member on every host of the accounts database's cluster, from Debian's etcd-server, its
settings in /etc/default/etcd, its data below /var/lib/etcd/mailfleet (kept across
reboots). Members talk over the WireGuard network only. A member starts without waiting
for the others (`--no-block`): etcd is ready only once a quorum runs, and pyinfra runs the
n-th operation of every host together, so the members' starts are operations apart. The
host whose database becomes the cluster's waits for Patroni (and so for the quorum) later
in its own steps (services/patroni.py).
"""

from __future__ import annotations

import hashlib

from pyinfra.facts.server import Command
from pyinfra.operations import systemd

from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Port, Service, Unit
from mailfleet.templating import render

PACKAGES = ["etcd-server", "etcd-client"]
CONFIG = "/etc/default/etcd"
DROP_IN = "/etc/systemd/system/etcd.service.d/mailfleet.conf"
DATA_DIR = "/var/lib/etcd/mailfleet"
ENDPOINT = "http://127.0.0.1:2379"
# etcdctl speaks the v3 API on both releases (3.4 and 3.5) with this set
ETCDCTL = f"ETCDCTL_API=3 etcdctl --endpoints={ENDPOINT} --command-timeout=5s"


def health(plan) -> str:
    """Each member's health, asked of each member's own endpoint (`--cluster` would first
    need the member list from the local member). Exits 1 when one is down: the lines say
    which, `; true` keeps them for the check."""
    endpoints = ",".join(f"http://{address}:2379" for _, address in plan.cluster)
    return (f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} --command-timeout=5s "
            "endpoint health 2>&1; true")


def token(ctx: HostContext) -> str:
    """The cluster's token: the same on every member, another cluster's differs."""
    names = ",".join(name for name, _ in ctx.plan.cluster)
    return "mailfleet-" + hashlib.sha1(f"{ctx.config.mail.domain} {names}".encode()).hexdigest()[:12]


def deploy(ctx: HostContext) -> None:
    address = dict(ctx.plan.cluster)[ctx.plan.host]
    conf = ctx.op(config_file, name="Configure etcd for the cluster", dest=CONFIG,
                  content=render("etcd/etcd.j2", member_name=ctx.plan.host, data_dir=DATA_DIR,
                                 address=address, members=ctx.plan.cluster, token=token(ctx)))
    unit = ctx.op(config_file, name="Start etcd after the VPN, and again when it dies",
                  dest=DROP_IN, content=render("etcd/unit.conf.j2"))
    ctx.op(systemd.daemon_reload, name="Reload systemd units (etcd)", _if=ctx.changed(unit))
    ctx.service("etcd", restart_when=(conf,), no_block=True)


def parse_health(text: str) -> dict[str, bool]:
    """{endpoint: healthy} from `etcdctl endpoint health`."""
    found = {}
    for line in text.splitlines():
        endpoint, _, rest = line.partition(" is ")
        if endpoint.startswith("http"):
            found[endpoint] = rest.startswith("healthy")
    return found


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, plan in engine.plans.items():
        if not plan.cluster:
            continue
        text = engine.facts(Command, hosts=[name], command=health(plan)).get(name)
        members = len(plan.cluster)
        found = parse_health(text or "")
        healthy = sum(found.values())
        quorum = healthy > members // 2
        results.append(CheckResult(
            name, "etcd quorum", "ok" if quorum and healthy == members else
            "warn" if quorum else "fail",
            f"{healthy} of {members} members healthy" if found else
            (text or "no answer").strip().splitlines()[-1],
            "see `journalctl -u etcd` on the members that are down"))
    return results


SERVICE = Service(
    "etcd", applies=lambda plan: bool(plan.cluster), packages=tuple(PACKAGES), deploy=deploy,
    checks=checks, reads=lambda engine, plan: [health(plan)],
    units=(Unit("etcd", (Port(2379, "etcd clients", "cluster"),
                         Port(2380, "etcd peers", "cluster"))),),
    managed_paths=(CONFIG, DROP_IN))
