"""`mailfleet cluster status | switchover --to HOST | takeover HOST`: the replicated accounts
database and the mail hosts' mailboxes."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mailfleet.accounts import store
from mailfleet.cli.accounts import database
from mailfleet.cli.deploy import Json
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import globals_of
from mailfleet.config import Config
from mailfleet.errors import ConfigError, UsageError
from mailfleet.services import cluster

app = typer.Typer(help="The replicated accounts database (Patroni + etcd) and the mail hosts: "
                       "state, switchover, take-over of a dead mail host's mailboxes.",
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
    health, Patroni's state and the mailboxes homed there. Exit 1 when the cluster is not
    whole."""
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
        mail = {m.name for m in config.cluster_members() if "mail" in m.roles}
        table = Table("host", "role", "state", "timeline", "replication", "lag", "etcd",
                      "mailboxes", "replicas behind")
        for s in statuses:
            state, lag_bytes, seconds = lag.get(s.host, ("", None, None))
            table.add_row(s.host, s.role, s.state or s.error, str(s.timeline or ""), state,
                          f"{lag_bytes} B, {seconds:.2f} s" if lag_bytes is not None else "",
                          "healthy" if s.etcd_healthy else "down",
                          str(s.homed) if s.host in mail and s.homed is not None else "",
                          ", ".join(f"{name} {behind} s" for name, behind
                                    in sorted(s.replicas.items())))
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
    before, seconds = cluster.switchover(config, to, timeout)
    if before == to:
        info(f"{to} is the primary already.")
    else:
        info(f"{to} is the primary ({seconds:.1f} s); {before} follows it.")


@app.command()
def takeover(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(metavar="HOST", help="The mail host that is down.")],
) -> None:
    """Give the mailboxes homed on HOST (a mail host that is down) to their replicas, which
    serve them from then on; HOST becomes their replica and catches up when it is back.

    The cluster does this by itself once HOST has been unreachable for
    cluster.takeover_after seconds; this is the same, now."""
    config = _config(ctx)
    mail = [m.name for m in config.cluster_members() if "mail" in m.roles]
    if host not in mail:
        raise UsageError(f"HOST: {host!r} is not a mail host of the cluster ({', '.join(mail)}).")
    with database(ctx, None) as (_, _, conn):
        moved = store.take_over(conn, host)
    info(f"{moved} mailbox(es) of {host} now live on their replicas; {host} holds their "
         "replicas when it is back.")
