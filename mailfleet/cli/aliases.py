"""`mailfleet alias ...`: addresses that deliver to mailboxes here or forward elsewhere."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from mailfleet.accounts import rules, store
from mailfleet.cli.accounts import HostOption, Json, database, parse, require_configured
from mailfleet.cli.output import console, print_json

app = typer.Typer(help="Aliases, catch-alls and forwarding: add, list, remove.",
                  no_args_is_help=True)
Source = Annotated[str, typer.Argument(
    metavar="ALIAS", help="The alias address, or @DOMAIN for a catch-all of that domain.")]


@app.command("add")
def add(
    ctx: typer.Context,
    source: Source,
    destinations: Annotated[list[str], typer.Argument(
        metavar="DESTINATION...", help="Mailboxes here, or outside addresses (forwarding).")],
    host: HostOption = None,
) -> None:
    """Deliver mail for ALIAS to one or more addresses.

    A catch-all (@example.org) gets mail for every address of the domain that is neither a
    mailbox nor another alias. Forwarding to an outside address keeps the original sender,
    so a receiver that checks SPF strictly may refuse forwarded mail.
    """
    source = parse(rules.alias_source, source, "ALIAS")
    targets = [parse(rules.destination, d, "DESTINATION") for d in destinations]
    with database(ctx, host) as (config, settings, conn):
        require_configured(config, source)
        added = store.add_alias(conn, source, targets)
    console.print(f"{escape(source)} → {escape(', '.join(targets))} on {settings.name}"
                  + ("" if added == len(targets) else f" ({len(targets) - added} existed already)"))


@app.command("list")
def list_aliases(
    ctx: typer.Context,
    domain: Annotated[Optional[str], typer.Option("--domain", "-d", help="Only this domain.")] = None,
    json: Json = False,
    host: HostOption = None,
) -> None:
    """List aliases with where they deliver."""
    with database(ctx, host) as (_, _, conn):
        rows = store.aliases(conn, domain.lower() if domain else None)
    if json:
        print_json(rows)
        return
    grouped: dict[str, list[str]] = {}
    for row in rows:
        grouped.setdefault(row["source"], []).append(row["destination"])
    table = Table("alias", "delivers to", box=None, pad_edge=False)
    for source, targets in grouped.items():
        table.add_row(escape(source) + (" (catch-all)" if source.startswith("@") else ""),
                      escape(", ".join(targets)))
    console.print(table)
    console.print(f"{len(grouped)} alias(es)")


@app.command("remove")
def remove(
    ctx: typer.Context,
    source: Source,
    destination: Annotated[Optional[str], typer.Argument(
        metavar="[DESTINATION]", help="Remove only this destination [default: all].")] = None,
    host: HostOption = None,
) -> None:
    """Remove an alias (or one of its destinations)."""
    source = parse(rules.existing_alias_source, source, "ALIAS")
    target = parse(rules.destination, destination, "DESTINATION") if destination else None
    with database(ctx, host) as (_, settings, conn):
        count = store.remove_alias(conn, source, target)
    console.print(f"removed {count} destination(s) of {escape(source)} on {settings.name}")
