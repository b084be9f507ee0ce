"""`mailfleet dns ...`: which records to publish, whether they are, and publishing them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from mailfleet.cli.deploy import Json
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import globals_of
from mailfleet.config import Config, domain_name
from mailfleet.dns import publish as publish_mod
from mailfleet.dns import records as records_mod
from mailfleet.dns.check import check as check_records
from mailfleet.dns.lookup import Lookup, ResolverLookup, ZoneFileLookup
from mailfleet.errors import ConfigError, UsageError
from mailfleet.services import opendkim

app = typer.Typer(help="DNS records: what to publish, what is published, publishing them "
                       "(RFC 2136).", no_args_is_help=True)


def dkim_keys(config: Config) -> dict[str, str | None]:
    """Each domain's DKIM TXT value, read from the first mail host (one SSH command)."""
    hosts = config.hosts_with("mail")
    if not hosts:
        return {}
    keys = opendkim.read_public_keys(hosts[0], config)
    for domain in config.mail.all_domains:
        if not keys.get(domain):
            info(f"warning: {hosts[0].name} has no DKIM key for {domain} yet (run `mailfleet "
                 "deploy`): its DKIM record is left out")
    return keys


def wanted_records(ctx: typer.Context, config: Config | None = None,
                   ) -> tuple[Config, list[records_mod.Record]]:
    """The config's records; its mistakes are found before any host is asked for a key."""
    path = globals_of(ctx).config_path
    config = config or globals_of(ctx).load()
    config.select_hosts(None, path)
    try:
        if not records_mod.mail_hosts(config):
            raise ConfigError(f"{path}: no host has the mail role, so there is no MX to name.")
        return config, records_mod.generate(config, dkim_keys(config))
    except records_mod.MissingAddress as err:
        raise ConfigError(f"{path}: {err}.") from err


@app.command("records")
def records(
    ctx: typer.Context,
    format: Annotated[str, typer.Option(
        "--format", "-f", metavar="zone|json|table",
        help="zone: zone-file lines with the level and reason as comments [default]; json; "
             "table.")] = "zone",
    json: Json = False,
) -> None:
    """The records every domain needs, with a level (required, recommended, optional) and why."""
    if format not in ("zone", "json", "table"):
        raise UsageError(f"--format must be zone, json or table, not {format!r}.")
    config, wanted = wanted_records(ctx)
    if json or format == "json":
        print_json({"records": [r.as_dict() for r in wanted],
                    "mta_sts_policy": _policy(config, wanted)})
        return
    if format == "table":
        table = Table(box=None, pad_edge=False)
        for column in ("level", "name", "type", "value", "why"):
            table.add_column(column, overflow="fold")
        for r in wanted:
            table.add_row(r.level, r.name, r.type, escape(r.value), escape(r.reason))
        console.print(table)
        return
    domain = None
    for r in wanted:
        if r.domain != domain:
            domain = r.domain
            typer.echo(f"; ---- {domain} ----")
        typer.echo(f"; {r.level}: {r.reason}")
        typer.echo(r.zone_line())
    policy = _policy(config, wanted)
    if policy:
        typer.echo("; MTA-STS policy, served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt:")
        typer.echo("\n".join(f";   {line}" for line in policy.splitlines()))


def _policy(config: Config, wanted: list[records_mod.Record]) -> str | None:
    if config.dns.mta_sts_mode == "none":
        return None
    mx = [r.value.split()[1].rstrip(".") for r in wanted
          if r.type == "MX" and r.domain == config.mail.domain]
    return records_mod.mta_sts_policy(config.dns.mta_sts_mode, mx)


@app.command("check")
def check(
    ctx: typer.Context,
    zone_file: Annotated[Optional[Path], typer.Option(
        "--zone-file", metavar="FILE", help="Check a zone file instead of live DNS (needs --zone).")] = None,
    zone: Annotated[Optional[str], typer.Option(
        "--zone", metavar="ZONE", help="The origin of --zone-file, like example.org.")] = None,
    json: Json = False,
) -> None:
    """Look every record up and report what is missing, wrong or extra, with the fix.

    Asks [dns] resolvers (default: this machine's resolver). Exit 1 if a required record is
    missing or wrong.
    """
    if (zone_file is None) != (zone is None):
        raise UsageError("--zone-file and --zone go together: the file and its origin.")
    config = globals_of(ctx).load()
    lookup: Lookup = (ZoneFileLookup(zone_file, _zone_name(zone)) if zone_file and zone
                      else ResolverLookup(config.dns.resolvers, config.dns.tcp))
    config, wanted = wanted_records(ctx, config)
    findings = check_records(wanted, lookup)
    failed = any(f.problem and f.level == "required" for f in findings)
    if json:
        print_json({"ok": not failed, "findings": [f.as_dict() for f in findings]})
    else:
        table = Table(box=None, show_header=False, pad_edge=False)
        style = {"ok": "[green]ok[/]", "missing": "[red]missing[/]", "wrong": "[red]wrong[/]",
                 "extra": "[yellow]extra[/]", "error": "[red]error[/]"}
        for f in findings:
            text = f.message + (f" — fix: {f.fix}" if f.fix else "")
            table.add_row(style[f.status], f.level, f.kind, f.name, escape(text))
        console.print(table)
        problems = sum(f.problem for f in findings)
        console.print(f"[bold]{len(findings) - problems}/{len(findings)} correct[/]"
                      + (" — a required record is missing or wrong" if failed else ""))
    raise typer.Exit(1 if failed else 0)


def _zone_name(value: str) -> str:
    try:
        return domain_name(value)
    except ValueError as err:
        raise UsageError(f"--zone: {err}.") from None


@app.command("publish")
def publish(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the changes; send nothing.")] = False,
    json: Json = False,
) -> None:
    """Send the differences to each zone's primary server ([[dns.zones]], TSIG-signed).

    Records of names no configured zone holds (often the PTR) are listed for you to set.
    """
    config = globals_of(ctx).load()
    if not config.dns.zones:
        raise ConfigError(
            f"{globals_of(ctx).config_path} has no [[dns.zones]]: mailfleet does not know where "
            "to publish.", hint="Add one per zone (zone, server, tsig_key_file), or publish the "
                                "records of `mailfleet dns records` by hand.")
    for zone in config.dns.zones:
        publish_mod.read_key(zone.tsig_key_file)  # a bad key file before any change
    config, wanted = wanted_records(ctx, config)
    plans, uncovered = publish_mod.plan(wanted, config.dns.zones)
    if not dry_run:
        for zone_plan in plans:
            if zone_plan.changes:
                publish_mod.send(zone_plan)
    if json:
        print_json({"dry_run": dry_run,
                    "zones": [{"zone": p.zone.zone, "changes": [str(c) for c in p.changes]}
                              for p in plans],
                    "not_covered": [r.as_dict() for r in uncovered]})
    else:
        for zone_plan in plans:
            verb = "to send (dry run)" if dry_run else "sent"
            count = len(zone_plan.changes)
            console.print(f"[bold]{zone_plan.zone.zone}[/]: "
                          + (f"{count} change(s) {verb}" if count else "no changes"))
            for change in zone_plan.changes:
                console.print(f"  {escape(str(change))}", soft_wrap=True)
        if uncovered:
            console.print("Not in any [[dns.zones]] (set these at your DNS or hosting provider):")
            for r in uncovered:
                console.print(f"  {r.level}: {escape(r.zone_line())}", soft_wrap=True)
    total = sum(len(p.changes) for p in plans)
    if not json and not dry_run:
        console.print(f"{total} change(s) in total")
