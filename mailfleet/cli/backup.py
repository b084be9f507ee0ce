"""`mailfleet backup ...`: run a backup now, list the snapshots, verify the repository."""

from __future__ import annotations

import json as json_mod
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer
from rich.table import Table

from mailfleet.cli.deploy import Json
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import globals_of
from mailfleet.config import Config, HostSettings
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import ConfigError
from mailfleet.services import backup as backup_mod

app = typer.Typer(help="Backups: run one now, list the snapshots, verify the repository.",
                  no_args_is_help=True)

Host = Annotated[Optional[str], typer.Option(
    "--host", "-H", metavar="HOST", help="The mail host [default: the first with the mail role].")]
RESTIC = f"set -a; . {backup_mod.ENV_FILE}; set +a; restic"


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
def run(ctx: typer.Context, host: Host = None) -> None:
    """Back the host up now (what the daily timer does), and wait for it to finish."""
    _, settings = _host(ctx, host)
    started = datetime.now(timezone.utc)
    # the script as the timer's unit runs it (and serialised with it by a lock)
    ssh_run(settings, f"nice -n 10 ionice -c 3 {backup_mod.SCRIPT}", timeout=6 * 3600)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    info(f"{settings.name}: backup done in {seconds:.0f} s")


def _snapshots(settings: HostSettings) -> list[dict]:
    text = ssh_run(settings, f"{RESTIC} snapshots --json --tag mailfleet", timeout=600)
    return json_mod.loads(text or "[]") or []


@app.command("list")
def list_(ctx: typer.Context, host: Host = None, json: Json = False) -> None:
    """The snapshots in the repository, oldest first."""
    _, settings = _host(ctx, host)
    snapshots = [{"id": s["short_id"], "time": s["time"][:19] + "Z", "host": s["hostname"],
                  "paths": s["paths"]} for s in _snapshots(settings)]
    if json:
        print_json({"snapshots": snapshots})
        return
    table = Table("snapshot", "time (UTC)", "host", "paths")
    for s in snapshots:
        table.add_row(s["id"], s["time"], s["host"], ", ".join(s["paths"]))
    console.print(table)


@app.command()
def verify(ctx: typer.Context, host: Host = None, json: Json = False) -> None:
    """Check the repository's integrity and that the newest backup is recent enough.

    Exit 1 when restic finds damage, or the newest snapshot is older than
    [backup] max_age_hours, or there is none."""
    config, settings = _host(ctx, host)
    problems = []
    integrity = ssh_run(settings, f"{RESTIC} check 2>&1 && echo MAILFLEET-CHECK-OK || true",
                        timeout=3600)
    if "MAILFLEET-CHECK-OK" not in integrity:
        problems.append("restic check: " + (integrity.strip().splitlines() or ["failed"])[-1])
    snapshots = _snapshots(settings)
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
            console.print(f"[red]FAIL[/red] {problem}")
        if not problems:
            info(f"{settings.name}: repository intact, {len(snapshots)} snapshot(s), newest "
                 f"{age_hours:.1f} hours old")
    raise typer.Exit(0 if not problems else 1)
