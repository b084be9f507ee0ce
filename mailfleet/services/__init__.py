"""Every service mailfleet deploys, in the order a deploy applies them.

Each module exports one `SERVICE` record (services/shape.py); everything else is derived
from this list: the packages a host installs, the deploy steps, the checks, the units and
ports `check` expects, the firewall's ports, and what the host snapshot reads. A host runs
the services whose `applies` accepts its plan (services/plan.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Command
from pyinfra.facts.systemd import SystemdStatus

from mailfleet.config import Config, HostSettings
from mailfleet.engine import Engine, HostContext, snapshot
from mailfleet.engine.facts import FactRead
from mailfleet.engine.operations import (
    LEFTOVER,
    debconf_shown,
    leftover_policy_removed,
    packages_installed,
)
from mailfleet.templating import render
from mailfleet.services import (
    acme,
    admin,
    backup,
    certs,
    dns_checks,
    dovecot,
    etcd,
    fail2ban,
    firewall,
    hardening,
    homes,
    mailflow,
    mailstore,
    network,
    nginx,
    opendkim,
    opendmarc,
    patroni,
    postfix,
    postgres,
    radicale,
    replication,
    roundcube,
    sogo,
    ssh_vpn,
    sshd,
    system,
    takeover,
    units,
    upstream,
    wireguard,
)
from mailfleet.services.checks import CheckResult
from mailfleet.services.plan import HostPlan, check_roles, full_plan, make_plan
from mailfleet.services.platform import platform
from mailfleet.services.shape import Port, Service


def _install(ctx: HostContext) -> None:
    """All packages in one apt run (one dpkg pass is much faster than one per service)."""
    if ctx.snapshot("policy-rc.d") == "left":
        ctx.op(leftover_policy_removed, name="Remove the policy-rc.d an interrupted install left")
    postfix.preseed(ctx)
    roundcube.preseed(ctx)
    ctx.op(packages_installed, name="Install the mail system's packages",
           packages=packages(ctx.plan), policy=render("system/policy-rc.d.j2", units=held(ctx)))


def held(ctx: HostContext) -> list[str]:
    """The units the install's policy-rc.d keeps from (re)starting: mailfleet's own that do
    not run yet (a package's postinst would start them with Debian's defaults, or restart
    them, as Dovecot's and PHP's do, and mailfleet then restart them configured). Units that
    run already are left alone, so an upgrade restarts them as usual."""
    states = snapshot.parse_units(ctx.snapshot("units"))
    units = {unit.name: states.get(unit.name, ("inactive", ""))[0] == "active"
             for unit in ctx.plan.units if unit.name != "ssh"}
    if ctx.plan.webmail == "roundcube":
        php = f"php{platform(ctx).php}-fpm.service"
        units[php] = bool(ctx.fact(SystemdStatus, services=[php]).get(php))
    return sorted({name.split(".")[0] for name, running in units.items() if not running})


def _install_facts(ctx: HostContext) -> list[FactRead]:
    preseeded = ["postfix"] + (["roundcube-core"] if ctx.plan.webmail == "roundcube" else [])
    return [(DebPackages, {}),
            *((Command, {"command": debconf_shown(package)}) for package in preseeded)]


INSTALL = Service("packages", deploy=_install, facts=_install_facts,
                  snapshot={"policy-rc.d": f"{LEFTOVER} && echo left"})

# deploy order; `check` runs their checks in the same order
SERVICES: list[Service] = [
    system.SERVICE,
    INSTALL,
    hardening.SERVICE,
    admin.SERVICE,
    wireguard.SERVICE,
    sshd.SERVICE,
    mailstore.SERVICE,
    certs.SERVICE,
    upstream.SERVICE,  # a web-only host: trust and find its mail host
    postgres.SERVICE,
    homes.SERVICE,  # in a cluster: where each mailbox lives (after the migrations)
    opendkim.SERVICE,
    opendmarc.SERVICE,
    dovecot.SERVICE,
    postfix.SERVICE,
    mailflow.SERVICE,
    replication.SERVICE,  # several mail hosts: each copies its mailboxes to their replicas
    roundcube.SERVICE,
    sogo.SERVICE,
    radicale.SERVICE,
    nginx.SERVICE,
    firewall.SERVICE,
    ssh_vpn.SERVICE,  # once the firewall lets the tunnel in
    # a cluster's, once the firewall is up (enabling it later broke the members' open
    # connections): etcd, then Patroni taking over the database set up above. A host that
    # joins has fewer steps before these than the host whose database becomes the cluster's,
    # so its etcd runs before that host waits for etcd's quorum
    etcd.SERVICE,
    patroni.SERVICE,
    takeover.SERVICE,  # several mail hosts: a dead one's mailboxes to their replicas
    acme.SERVICE,  # after nginx serves the challenges and the firewall lets the CA in
    fail2ban.SERVICE,
    backup.SERVICE,
    network.SERVICE,  # checks only, like the two below
    units.SERVICE,
    dns_checks.SERVICE,  # last: the records, once the hosts' own checks are done
]


def plan_host(config: Config, settings: HostSettings) -> HostPlan:
    """The host's plan with the services that run there and the ports they open."""
    plan = make_plan(config, settings)
    running = [s for s in SERVICES if s.applies(plan)]
    return replace(plan, services=tuple(s.name for s in running),
                   units=tuple(unit for s in running for unit in s.units_for(plan)))


def plans(config: Config, hosts: list[HostSettings]) -> dict[str, HostPlan]:
    """Every selected host's plan; a role combination that cannot work yet is refused
    (ConfigError, exit 2) before any host is touched."""
    check_roles(config, config.hosts)
    return {h.name: plan_host(config, h) for h in hosts}


def phases(config: Config, hosts: list[HostSettings]) -> list[list[HostSettings]]:
    """The selected hosts in the order a deploy takes them: the mail and database hosts
    first, then the web-only hosts, which use them (their webmail loads its tables into the
    mail host's PostgreSQL, which must listen for them by then). pyinfra runs the n-th
    operation of every host together, so hosts of one run cannot wait for each other."""
    first = [h for h in hosts if "db" in h.roles]
    later = [h for h in hosts if "db" not in h.roles]
    return [group for group in (first, later) if group]


def packages(plan: HostPlan | None) -> list[str]:
    """Every Debian package `deploy` installs on a host with this plan (None: the packages
    of every role and the default features, which lab images preinstall)."""
    plan = plan or full_plan()
    return sorted({p for s in SERVICES if s.applies(plan) for p in s.packages_for(plan)})


def layout() -> snapshot.Layout:
    """What a host snapshot reads: every service's sections, units and paths."""
    return snapshot.Layout.of(
        [(name, snippet) for s in SERVICES for name, snippet in s.snapshot.items()],
        [unit.name for s in SERVICES for unit in s.units_for(full_plan())],
        [path for s in SERVICES for path in s.managed_paths], facts=host_facts)


def host_facts(ctx: HostContext) -> list[FactRead]:
    """The pyinfra facts the services running on this host will ask (their deploy); none
    for an engine run without plans (steps of its own)."""
    if ctx.plan is None:
        return []
    return [read for s in SERVICES if s.facts is not None and s.applies(ctx.plan)
            for read in s.facts(ctx)]


def engine(config: Config, hosts: list[HostSettings], **options) -> Engine:
    """An engine for these hosts that knows their plans and the snapshot's layout."""
    return Engine(config, hosts, plans=plans(config, hosts), layout=layout(), **options)


def deploy_steps() -> list[Callable[[HostContext], None]]:
    return [s.step for s in SERVICES if s.deploy is not None or s.retire is not None]


def run_checks(engine: Engine) -> list[CheckResult]:
    """Every service's checks, each kept for the hosts the service runs on."""
    engine.prefetch({name: [read for s in SERVICES if s.checks is not None and s.applies(plan)
                            for read in s.reads_for(engine, plan)]
                     for name, plan in engine.plans.items()})
    results = []
    for service in SERVICES:
        if service.checks is None:
            continue
        runs_on = {name for name, plan in engine.plans.items() if service.applies(plan)}
        if runs_on:
            with engine.only(runs_on):
                found = service.checks(engine)
            # a fleet-wide result (the DNS records: host "dns") is kept as it is
            results += [r for r in found if r.host in runs_on or r.host not in engine.plans]
    return results


__all__ = ["SERVICES", "HostPlan", "Port", "Service", "deploy_steps", "engine", "layout",
           "packages", "phases", "plan_host", "plans", "run_checks"]
