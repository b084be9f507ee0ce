"""`mailfleet deploy` and `mailfleet check`."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.markup import escape
from rich.table import Table

from mailfleet import services
from mailfleet import config as config_mod
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import Globals, globals_of
from mailfleet.config import Config
from mailfleet.engine import DeployReport, Engine, HostReport
from mailfleet.engine.report import merged
from mailfleet.errors import DeployError
from mailfleet.services import backup, cluster, opendkim, ssh_vpn, sshd, upstream, wireguard
from mailfleet.services.checks import CheckResult, all_passed, score

Limit = Annotated[
    Optional[list[str]],
    typer.Option("--limit", "-l", metavar="HOST", help="Only this host (repeatable)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def deploy(
    ctx: typer.Context,
    check: Annotated[bool, typer.Option("--check", help="Only report what would change.")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Show the changes to config files.")] = False,
    limit: Limit = None,
    json: Json = False,
) -> None:
    """Make the hosts match mailfleet.toml.

    Runs on all hosts in parallel and reports per host what changed; a second run reports
    zero changes. --check --diff shows what would change and touches nothing.
    """
    g = globals_of(ctx)
    config = g.load()
    report = run_deploy(g, config, limit, check=check, diff=diff, quiet=json)
    if json:
        print_json(report.as_dict())
    else:
        _render_report(report)
    raise typer.Exit(0 if report.ok else 1)


def run_deploy(g: Globals, config: Config, limit: list[str] | None, check: bool = False,
               diff: bool = False, quiet: bool = False) -> DeployReport:
    chosen = config.select_hosts(limit, g.config_path)
    selected = {h.name for h in chosen}
    reports: list[DeployReport] = []

    def not_deployed(names: list[str], why: str) -> None:
        reports.append(DeployReport(check, {name: HostReport(name, error=why) for name in names}))

    # (the first phase's engine refuses a role combination that cannot work, before any host)
    for phase in services.phases(config, chosen):
        names = [h.name for h in phase]
        if reports and not reports[-1].ok:  # the hosts it would use are not set up
            not_deployed(names, "not deployed: a mail or database host it uses failed first")
            continue
        if reports and not check:  # as the earlier phase left it (SSH user, VPN address)
            config = g.load()
        hosts = [h for h in config.hosts if h.name in names]
        with services.engine(config, hosts, verbose=g.verbose, diff=diff, check=check) as engine:
            wireguard.prepare(engine, config.hosts, make=selected)
            try:
                upstream.prepare(engine, config.hosts)
                cluster.prepare(engine, config)
                opendkim.prepare(engine, config)
            except DeployError as err:
                if not reports:
                    raise  # nothing was done yet: one sentence
                # the earlier phase's hosts were deployed: report them, and why these were not
                not_deployed(names, err.message)
                continue
            if quiet or check:
                report = engine.deploy(services.deploy_steps())
            else:
                report = _deploy_with_progress(engine)
            state = engine.shared.get("cluster")
            joined = [n for n in (state.joining if state else ()) if engine.plans[n].backups]
        if not check:
            switch_to_admin(g, config, report)
            switch_to_vpn(g, report)
            if report.ok and any(h.name in names for h in config.cluster_members()):
                settled(g.load(), report)
                if report.ok and joined:  # once their database streams
                    hosts = [h for h in g.load().hosts if h.name in joined]
                    for name, why in backup.first_backups(config, hosts).items():
                        report.hosts[name].error = why
        reports.append(report)
    return merged(reports)


def settled(config: Config, report: DeployReport) -> None:
    """The deploy of a cluster ends once every standby streams from the primary (a joining
    host copies the primary after its operations are done); if not, the report says why."""
    try:
        cluster.settle(config)
    except DeployError as err:
        first = next(m.name for m in config.cluster_members() if m.name in report.hosts)
        report.hosts[first].error = err.message


def _deploy_with_progress(engine: Engine) -> DeployReport:
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[op]}"), console=console, transient=True, auto_refresh=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def on_event(kind: str, host: str, op: str) -> None:
            if host not in tasks:
                total = engine.operation_count(next(h for h in engine.hosts() if h.name == host))
                tasks[host] = bar.add_task(host, total=total, op="")
            bar.update(tasks[host], advance=1, op=("[red]failed: " if kind == "error" else "") + op)
            bar.refresh()

        return engine.deploy(services.deploy_steps(), on_event)


def switch_to_admin(g: Globals, config: Config, report: DeployReport) -> None:
    """After a deploy, root and other users cannot log in over SSH: the hosts that took it
    are reached as the admin user from now on (written into mailfleet.toml). That includes
    hosts whose deploy failed at a later step: root is locked out there already."""
    admin = config.admin.user

    def took_it(name: str) -> bool:
        result = report.hosts[name]
        complete = not result.failed and not result.error
        return complete or sshd.verify_step(admin) in result.changed

    moved = [h.name for h in config.hosts if h.name in report.hosts and h.ssh_user != admin
             and took_it(h.name)]
    if not moved:
        return

    def change(doc) -> None:
        for table in doc.get("hosts", []):
            if table.get("name") in moved:
                table["ssh_user"] = admin

    config_mod.edit(g.config_path, change)
    info(f"{', '.join(moved)}: SSH now admits only {admin} (key only, sudo); "
         f"{g.config_path} updated to log in as {admin}")


def switch_to_vpn(g: Globals, report: DeployReport) -> None:
    """Hosts whose sshd now listens only on the VPN are reached at their VPN address from now
    on. What the old address told (public IP for DNS, endpoint of the tunnel) is kept."""
    config = g.load()  # as switch_to_admin left it
    moved = {}
    for h in config.hosts:
        result = report.hosts.get(h.name)
        vpn = config.vpn_address(h)
        if (ssh_vpn.vpn_only(config) and result and not result.failed and not result.error
                and h.address != vpn):
            moved[h.name] = (h, vpn)
    if not moved:
        return

    def change(doc) -> None:
        for table in doc.get("hosts", []):
            if table.get("name") not in moved:
                continue
            host, vpn = moved[table["name"]]
            try:
                literal = ipaddress.ip_address(host.address)
            except ValueError:
                literal = None
            if (literal is not None and literal.is_global
                    and (host.ipv4 if literal.version == 4 else host.ipv6) is None):
                table[f"ipv{literal.version}"] = host.address  # DNS still names it
            elif not host.vpn_endpoint and not host.ipv4 and not host.ipv6:
                table["vpn_endpoint"] = host.address  # where the other hosts' tunnels go
            table["address"] = vpn

    config_mod.edit(g.config_path, change)
    for host, vpn in moved.values():
        info(f"{host.name}: SSH now only over the VPN; {g.config_path} updated to connect to "
             f"{vpn} (was {host.address})")


def _render_report(report: DeployReport) -> None:
    verb = "would change" if report.check else "changed"
    for name, host in report.hosts.items():
        if host.failed:
            console.print(f"[bold red]{name}[/]: failed at {escape(', '.join(host.failed))}")
            if host.error:
                console.print(f"  {escape(host.error)}", soft_wrap=True)
        elif host.error:
            console.print(f"[bold red]{name}[/]: failed: {escape(host.error)}", soft_wrap=True)
        elif host.changed:
            console.print(f"[bold]{name}[/]: {len(host.changed)} {verb} "
                          f"({host.operations} operations)")
        else:
            console.print(f"[bold]{name}[/]: no changes ({host.operations} operations)")
        for op in host.changed:
            console.print(f"  [yellow]~[/] {escape(op)}")
    if report.ok:
        console.print(f"{report.changes} change(s) in total{' (check mode: nothing was touched)' if report.check else ''}")


def check(ctx: typer.Context, limit: Limit = None, json: Json = False) -> None:
    """Run the health checks.

    One line per check with what to do when it fails; exit 1 if any fails.
    """
    g = globals_of(ctx)
    config = g.load()
    results = run_checks(g, config, limit)
    if json:
        print_json({"ok": all_passed(results),
                    "score": dict(zip(("passed", "total"), score(results))),
                    "checks": [r.as_dict() for r in results]})
    else:
        render_checks(results)
    raise typer.Exit(0 if all_passed(results) else 1)


def run_checks(g: Globals, config: Config, limit: list[str] | None) -> list[CheckResult]:
    hosts = config.select_hosts(limit, g.config_path)
    with services.engine(config, hosts, verbose=g.verbose) as engine:
        return services.run_checks(engine)


def render_checks(results: list[CheckResult]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    style = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}
    for r in sorted(results, key=lambda r: r.host):  # stable: each host's checks in order
        message = r.message + (f" — {r.fix}" if r.fix and r.status != "ok" else "")
        table.add_row(style[r.status], r.host, escape(r.name), escape(message))
    console.print(table)
    passed, total = score(results)
    console.print(f"[bold]score {passed}/{total}[/]"
                  + ("" if passed == total else f" — {total - passed} failed"))
