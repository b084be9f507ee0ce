"""`mailfleet backup ...`: run a backup now, list the snapshots, verify the repository,
restore a host from a snapshot."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from mailfleet.cli.accounts import Yes, confirm
from mailfleet.cli.deploy import Json, render_checks, run_checks, run_deploy
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import globals_of
from mailfleet.config import Config, HostSettings
from mailfleet.errors import ConfigError
from mailfleet.services import backup as backup_mod
from mailfleet.services import restore as restore_mod
from mailfleet.services.checks import all_passed

app = typer.Typer(help="Backups: run one now, list the snapshots, verify the repository, "
                       "restore a host.",
                  no_args_is_help=True)

Host = Annotated[Optional[str], typer.Option(
    "--host", "-H", metavar="HOST", help="The mail host [default: the first with the mail role].")]


def _host(ctx: typer.Context, name: str | None) -> tuple[Config, HostSettings]:
    g = globals_of(ctx)
    config = g.load()
    if config.backup.repository is None or not config.features.backups:
        raise ConfigError(f"{g.config_path}: no backups are set up: set [backup] repository "
                          "(and features.backups = true), then run `mailfleet deploy`.")
    if name:
        return config, config.select_hosts([name], g.config_path)[0]
    hosts = config.hosts_with("mail")
    if not hosts:
        raise ConfigError(f"{g.config_path}: no host has the mail role.")
    return config, hosts[0]


@app.command()
def run(ctx: typer.Context, host: Host = None,
        force: Annotated[bool, typer.Option(
            "--force", help="Back up a rebuilt host that has not been restored yet (its empty "
                            "state becomes its newest snapshot).")] = False) -> None:
    """Back the host up now (what the daily timer does), and wait for it to finish."""
    _, settings = _host(ctx, host)
    started = datetime.now(timezone.utc)
    backup_mod.run_now(settings, force)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    info(f"{settings.name}: backup done in {seconds:.0f} s")


@app.command("list")
def list_(ctx: typer.Context, host: Host = None, json: Json = False) -> None:
    """The snapshots in the repository, oldest first."""
    _, settings = _host(ctx, host)
    snapshots = [{"id": s["short_id"], "time": s["time"][:19] + "Z", "host": s["hostname"],
                  "paths": s["paths"]} for s in backup_mod.snapshots(settings)]
    if json:
        print_json({"snapshots": snapshots})
        return
    table = Table("snapshot", "time (UTC)", "host", "paths")
    for s in snapshots:
        table.add_row(escape(s["id"]), escape(s["time"]), escape(s["host"]),
                      escape(", ".join(s["paths"])))
    console.print(table)


@app.command()
def verify(ctx: typer.Context, host: Host = None, json: Json = False) -> None:
    """Check the repository's integrity and that the newest backup is recent enough.

    Exit 1 when restic finds damage, or the newest snapshot is older than
    [backup] max_age_hours, or there is none."""
    config, settings = _host(ctx, host)
    problems = []
    damage = backup_mod.integrity_problem(settings)
    if damage is not None:
        problems.append(f"restic check: {damage}")
    snapshots = backup_mod.snapshots(settings)
    newest = max((s["time"] for s in snapshots), default=None)
    age_hours = None
    if newest is None:
        problems.append("the repository holds no snapshot")
    else:
        taken = datetime.fromisoformat(newest[:19]).replace(tzinfo=timezone.utc)
        age_hours = (datetime.now(timezone.utc) - taken).total_seconds() / 3600
        if age_hours > config.backup.max_age_hours:
            problems.append(f"the newest snapshot is {age_hours:.1f} hours old "
                            f"(max_age_hours = {config.backup.max_age_hours})")
    result = {"ok": not problems, "host": settings.name, "snapshots": len(snapshots),
              "newest_age_hours": None if age_hours is None else round(age_hours, 2),
              "problems": problems}
    if json:
        print_json(result)
    else:
        for problem in problems:
            console.print(f"[red]FAIL[/red] {escape(problem)}")
        if not problems:
            info(f"{settings.name}: repository intact, {len(snapshots)} snapshot(s), newest "
                 f"{age_hours:.1f} hours old")
    raise typer.Exit(0 if not problems else 1)


@app.command()
def restore(
    ctx: typer.Context,
    host: Host = None,
    source: Annotated[Optional[str], typer.Option(
        "--from", metavar="HOSTNAME",
        help="Whose snapshots (a host's full name, as `backup list` shows it) [default: "
             "this host's own name: a rebuilt host].")] = None,
    snapshot: Annotated[str, typer.Option(
        "--snapshot", metavar="ID", help="Which snapshot [default: the newest].")] = "latest",
    to_time: Annotated[Optional[str], typer.Option(
        "--to-time", metavar="TIME",
        help="Point-in-time restore: the database as it was just before TIME (ISO 8601, UTC "
             "unless it says otherwise), the mail of the first snapshot after it.")] = None,
    yes: Yes = False,
    json: Json = False,
) -> None:
    """Rebuild a host from a backup: its mail, DKIM keys, secrets and database.

    Run `mailfleet deploy` on the host first (a fresh one included); the restore then stops
    the mail services, replaces the data (what was there is kept as *.before-restore),
    replays the archived WAL to the latest state or to --to-time, deploys the host again
    and runs the health checks. Exit 1 if they fail."""
    g = globals_of(ctx)
    config, settings = _host(ctx, host)
    try:
        target = restore_mod.parse_time(to_time) if to_time else None
    except ValueError:
        raise ConfigError(f"--to-time {to_time}: not an ISO 8601 time "
                          "(e.g. 2026-11-26T09:30:00Z).") from None
    if target and snapshot != "latest":
        raise ConfigError("--to-time and --snapshot: give one of them (--to-time picks the "
                          "snapshot itself).")
    plan = restore_mod.plan(settings, config, source, snapshot, target)
    chosen = plan.chosen
    moment = f" with its database as of {target:%Y-%m-%d %H:%M:%S} UTC" if target else ""
    confirm(f"Replace the mail, DKIM keys, secrets and database of {settings.name} with "
            f"snapshot {chosen['short_id']} of {plan.source} ({chosen['time'][:19]}){moment}?",
            yes)
    started = datetime.now(timezone.utc)
    out = restore_mod.run(settings, plan.script())
    restored = (datetime.now(timezone.utc) - started).total_seconds()
    if not json:
        info(f"{settings.name}: snapshot {chosen['short_id']} restored in {restored:.0f} s "
             f"({out.strip().splitlines()[-1] if out.strip() else 'done'}); deploying again")
    report = run_deploy(g, config, [settings.name], quiet=True)
    results = run_checks(g, config, [settings.name])
    ok = report.ok and all_passed(results)
    if json:
        print_json({"ok": ok, "host": settings.name, "snapshot": chosen["id"],
                    "from": plan.source, "to_time": target and target.isoformat(),
                    "paths": plan.paths,
                    "restore_seconds": round(restored, 1), "deploy": report.as_dict(),
                    "checks": [r.as_dict() for r in results]})
    else:
        render_checks(results)
    raise typer.Exit(0 if ok else 1)
