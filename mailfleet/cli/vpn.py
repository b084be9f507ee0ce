"""`mailfleet vpn show | client NAME`: the WireGuard network's keys and a peer's config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from pyinfra.facts.server import Command
from rich.table import Table

from mailfleet.cli.deploy import Json
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import globals_of
from mailfleet.config import Config
from mailfleet.engine import Engine
from mailfleet.errors import ConfigError, DeployError, UsageError
from mailfleet.localfile import write_private
from mailfleet.services import vpn_keys, wireguard
from mailfleet.templating import render

app = typer.Typer(help="The private admin network (WireGuard): keys, and peers' configs.",
                  no_args_is_help=True)


def _config(ctx: typer.Context) -> Config:
    g = globals_of(ctx)
    config = g.load()
    if not config.features.wireguard:
        raise ConfigError(f"{g.config_path}: features.wireguard is false: there is no VPN "
                          "(set it to true and run `mailfleet deploy`).")
    return config


def host_keys(config: Config, live: bool) -> tuple[dict[str, str | None], str | None]:
    """{host: public key} read from the hosts (when `live`), else as the last deploy left
    them on this machine; and why the hosts could not be asked."""
    why = None
    if live:
        try:
            with Engine(config, config.hosts) as engine:
                # a host's answer is used only if it is a key (a hostile host could send
                # markup or config lines)
                keys = {name: wireguard._public_key(text) for name, text in
                        engine.facts(Command, command=f"{wireguard.PUBLIC_KEY}; true").items()}
            for h in config.hosts:
                if keys.get(h.name):
                    vpn_keys.remember_host_key(config, config.host_fqdn(h), keys[h.name])
            return keys, None
        except DeployError as err:
            why = str(err)
    return {h.name: vpn_keys.known_host_key(config, config.host_fqdn(h)) for h in config.hosts}, why


def show(ctx: typer.Context, json: Json = False) -> None:
    """The VPN's hosts and peers: addresses, endpoints and public keys (never a private key)."""
    config = _config(ctx)
    keys, why = host_keys(config, live=True)
    hosts = [{"name": h.name, "address": config.vpn_address(h),
              "endpoint": wireguard.endpoint(config, h), "public_key": keys.get(h.name)}
             for h in config.hosts]
    peers = []
    for peer in config.vpn.peers:
        private, public = vpn_keys.peer_keys(config, peer, create=False)
        peers.append({"name": peer.name, "address": peer.address, "public_key": public,
                      "key_kept_here": private is not None})
    if json:
        print_json({"network": config.vpn.network, "port": config.vpn.port,
                    "ssh_vpn_only": config.ssh.vpn_only, "hosts": hosts, "peers": peers,
                    "live": why is None})
        return
    if why:
        info(f"hosts not reachable ({why}); keys as the last deploy saw them")
    table = Table(box=None, pad_edge=False)
    for column in ("", "name", "VPN address", "endpoint", "public key"):
        table.add_column(column)
    for h in hosts:
        table.add_row("host", h["name"], h["address"], h["endpoint"],
                      h["public_key"] or "(none yet: run `mailfleet deploy`)")
    for p in peers:
        table.add_row("peer", p["name"], p["address"], "-",
                      p["public_key"] or "(made by `mailfleet vpn client " + p["name"] + "`)")
    console.print(table)
    console.print(f"network {config.vpn.network}, UDP {config.vpn.port}; SSH "
                  + ("only over the VPN" if config.ssh.vpn_only else "also outside the VPN"))


def client(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A [[vpn.peers]] name.")],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the config to this file (mode 0600) instead of printing it.")
    ] = None,
) -> None:
    """A ready WireGuard config for the peer NAME (its private key included: keep it safe).

    Without a public_key in the config, the peer's key pair is made on this machine and kept
    in [vpn] keys_dir; run `mailfleet deploy` afterwards if the hosts did not know it yet.
    """
    g = globals_of(ctx)
    config = _config(ctx)
    if output and (output.is_dir() or not output.parent.is_dir()):
        raise UsageError(f"--output {output}: " + ("is a directory." if output.is_dir() else
                         f"the directory {output.parent} does not exist."))
    peer = next((p for p in config.vpn.peers if p.name == name), None)
    if peer is None:
        names = ", ".join(p.name for p in config.vpn.peers) or "none"
        raise ConfigError(f"{g.config_path}: no [[vpn.peers]] named {name!r} (peers: {names}).")
    private, public = vpn_keys.peer_keys(config, peer, create=True)
    keys, _ = host_keys(config, live=False)
    if not all(keys.values()):
        keys, why = host_keys(config, live=True)
        missing = [h for h, k in keys.items() if not k]
        if missing:
            raise DeployError(f"The WireGuard keys of {', '.join(missing)} are not known yet"
                              + (f" ({why})" if why else "") + ".",
                              hint="Run `mailfleet deploy` first: it makes them on the hosts.")
    file_name = output.name if output else f"{peer.name}.conf"
    text = render("wireguard/client.conf.j2", peer=peer.model_copy(update={"public_key": public}),
                  private_key=private, domain=config.mail.domain, file_name=file_name,
                  hosts=[{"name": h.name, "address": config.vpn_address(h),
                          "endpoint": wireguard.endpoint(config, h), "public_key": keys[h.name]}
                         for h in config.hosts])
    if output:
        try:
            write_private(output, text)  # 0600 from the first byte, an existing file too
        except OSError as err:
            raise ConfigError(f"--output {output}: cannot write it ({err.strerror}).") from None
        info(f"{output} written (mode 0600)")
    else:
        typer.echo(text, nl=False)
    if private is None:
        info(f"{peer.name} has a public_key in the config and its private key is not kept here: "
             "put it into the PrivateKey line.")
