"""`mailfleet cluster status | switchover --to HOST`: the replicated accounts database."""

from __future__ import annotations

import shlex
import time
from typing import Annotated

import typer
from rich.table import Table

from mailfleet.cli.deploy import Json
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import globals_of
from mailfleet.config import Config
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import ConfigError, DeployError, UsageError
from mailfleet.services import cluster, patroni

app = typer.Typer(help="The replicated accounts database (Patroni + etcd): state, switchover.",
                  no_args_is_help=True)


def _config(ctx: typer.Context) -> Config:
    g = globals_of(ctx)
    config = g.load()
    if not config.cluster_members():
        raise ConfigError(f"{g.config_path}: cluster.enabled is not true: there is no cluster "
                          "(see docs/cluster.md).")
    return config


@app.command()
def status(ctx: typer.Context, json: Json = False) -> None:
    """Each member: PostgreSQL's role and timeline, replication lag (bytes, seconds), etcd's
    health and Patroni's state. Exit 1 when the cluster is not whole."""
    config = _config(ctx)
    statuses = cluster.member_status(config)
    problems = cluster.problems(statuses, config.cluster.max_lag_bytes)
    primary = next((s for s in statuses if s.role == "primary"), None)
    lag = primary.standbys if primary else {}
    if json:
        members = []
        for s in statuses:
            entry = s.as_dict()
            if s.host in lag:
                state, lag_bytes, seconds = lag[s.host]
                entry.update(replication=state, lag_bytes=lag_bytes, lag_seconds=seconds)
            members.append(entry)
        print_json({"ok": not problems, "primary": primary.host if primary else None,
                    "members": members, "problems": problems})
    else:
        table = Table("host", "role", "state", "timeline", "replication", "lag", "etcd")
        for s in statuses:
            state, lag_bytes, seconds = lag.get(s.host, ("", None, None))
            table.add_row(s.host, s.role, s.state or s.error, str(s.timeline or ""), state,
                          f"{lag_bytes} B, {seconds:.2f} s" if lag_bytes is not None else "",
                          "healthy" if s.etcd_healthy else "down")
        console.print(table)
        for problem in problems:
            info(f"not whole: {problem}")
    raise typer.Exit(1 if problems else 0)


@app.command()
def switchover(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", metavar="HOST", help="The standby to make primary.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the new primary.")] = 60,
) -> None:
    """Make HOST the primary, planned: the old primary stops taking writes, HOST takes over
    once it has replayed everything (no write is lost), the old primary follows it."""
    config = _config(ctx)
    members = {m.name: m for m in config.cluster_members()}
    if to not in members:
        raise UsageError(f"--to {to}: not a member of the cluster ({', '.join(members)}).")
    statuses = {s.host: s for s in cluster.member_status(config)}
    primary = next((name for name, s in statuses.items() if s.role == "primary"), None)
    if primary is None:
        raise DeployError("The cluster has no primary now: nothing to switch over.",
                          hint="Run `mailfleet cluster status`.")
    if primary == to:
        info(f"{to} is the primary already.")
        return
    if statuses[to].role != "standby" or statuses[to].state not in ("running", "streaming"):
        raise DeployError(f"{to} is not a running standby ({statuses[to].role}, "
                          f"{statuses[to].state or statuses[to].error}).")
    command = (f"patronictl -c {patroni.CONFIG} switchover --leader {shlex.quote(primary)} "
               f"--candidate {shlex.quote(to)} --force")
    started = time.monotonic()
    ssh_run(members[to], command, timeout=timeout + 30)
    deadline = started + timeout
    while time.monotonic() < deadline:
        statuses = {s.host: s for s in cluster.member_status(config)}
        if statuses[to].role == "primary":
            info(f"{to} is the primary ({time.monotonic() - started:.1f} s); {primary} follows it.")
            return
        time.sleep(1)
    raise DeployError(f"{to} did not become the primary within {timeout:.0f} s.",
                      hint="Run `mailfleet cluster status`; see `journalctl -u patroni`.")
