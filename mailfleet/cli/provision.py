"""`mailfleet provision HOST | --list PROVIDER` and `mailfleet destroy HOST`: servers made and
removed through the provider's API for [[hosts]] entries with a [hosts.provider] table."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from mailfleet.cli.accounts import Yes, confirm
from mailfleet.cli.deploy import Json
from mailfleet.cli.lab import preinstalled_packages
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import globals_of
from mailfleet.config import PROVIDERS, ProviderSettings
from mailfleet.errors import UsageError
from mailfleet.provision import lifecycle
from mailfleet.provision.providers import provider_for


def provision(
    ctx: typer.Context,
    host: Annotated[Optional[str], typer.Argument(metavar="HOST", help="The [[hosts]] name.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help=(
        "Say what would be created and what it costs, from read requests only."))] = False,
    list_: Annotated[Optional[str], typer.Option("--list", metavar="PROVIDER", help=(
        f"Show a provider's regions, plans and images ({', '.join(PROVIDERS)})."))] = None,
    json: Json = False,
) -> None:
    """Create the server of HOST at its provider, with mailfleet's SSH host key in its
    cloud-init user-data, and write its address into the config.

    A server that exists already (found by its label mailfleet-host=HOST) is not made again.
    The first SSH login checks the host key strictly: a server answering with another key
    is refused (exit 1). The API token comes from HCLOUD_TOKEN, VULTR_API_KEY or
    DIGITALOCEAN_TOKEN, or from [hosts.provider] token_file (see docs/provisioning.md).
    """
    g = globals_of(ctx)
    if list_ is not None:
        if host is not None:
            raise UsageError("Give a host or --list PROVIDER, not both.")
        _list(ctx, list_, json)
        return
    if host is None:
        raise UsageError("Name the host to provision (a [[hosts]] name), or --list PROVIDER.")
    config = g.load()
    entry = lifecycle.entry(config, host, g.config_path)
    assert entry.provider is not None
    provider = provider_for(entry.provider, host, preinstalled_packages(), info)
    if dry_run:
        plan = lifecycle.dry_run(config, entry, provider)
        if json:
            print_json(plan)
        elif plan["exists"]:
            info(f"{host}: a server exists already at {provider.name} ({plan['server']}); "
                 "`provision` would only check it")
        else:
            made = plan["would_create"]
            info(f"{host}: would create {made['name']} at {provider.name}: {made['plan']}, "
                 f"{made['region']}, {made['image']}, IPv6 {'on' if made['ipv6'] else 'off'}, "
                 f"the provider's backups {'on' if made['backups'] else 'off'}")
        return
    outcome = lifecycle.provision(g.config_path, config, entry, provider, log=info)
    if json:
        print_json(outcome.as_dict())
        return
    s = outcome.server
    verb = "created" if outcome.created else "exists"
    info(f"{host}: {verb} ({s.id}), SSH {s.login_address} port {s.ssh_port} with the host key "
         f"mailfleet made, cloud-init {outcome.cloud_init}, {outcome.seconds:.0f} s; "
         f"next: `mailfleet deploy`")


def _list(ctx: typer.Context, name: str, json: bool) -> None:
    if name not in PROVIDERS:
        raise UsageError(f"Unknown provider {name!r}: choose {', '.join(PROVIDERS)}.")
    config = globals_of(ctx).load() if globals_of(ctx).config_path.exists() else None
    # a host's table of that provider names its token_file; otherwise the environment's
    settings = next((h.provider for h in (config.hosts if config else [])
                     if h.provider and h.provider.provider == name), None)
    if settings is None:
        settings = ProviderSettings.model_construct(provider=name, token_file=None)
    offer = provider_for(settings, "--list", preinstalled_packages(), info).offer()
    if json:
        print_json({"provider": name, "regions": offer.regions, "plans": offer.plans,
                    "images": list(offer.images)})
        return
    for title, rows in (("region", offer.regions), ("plan", offer.plans)):
        table = Table(title, "")
        for key, value in sorted(rows.items()):
            table.add_row(key, value)
        console.print(table)
    console.print(f"images: {', '.join(offer.images) or 'none of debian-12, debian-13'}")


def destroy(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(metavar="HOST", help="The [[hosts]] name.", show_default=False)],
    yes: Yes = False,
    json: Json = False,
) -> None:
    """Delete the server of HOST at its provider, then its [[hosts]] entry and its
    known_hosts lines (only once the provider confirmed). Asks first, unless --yes."""
    g = globals_of(ctx)
    config = g.load()
    entry = lifecycle.entry(config, host, g.config_path)
    assert entry.provider is not None
    provider = provider_for(entry.provider, host, preinstalled_packages(), info)
    confirm(f"Delete the server of {host} at {provider.name}, and everything on it?", yes)
    server = lifecycle.destroy(g.config_path, config, entry, provider, log=info)
    if json:
        print_json({"host": host, "server": server.id if server else None, "deleted": True})
        return
    what = f"server {server.id} deleted" if server else f"no server at {provider.name}"
    info(f"{host}: {what}; removed from {g.config_path}")
