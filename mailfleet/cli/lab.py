"""`mailfleet lab`: local Debian hosts to deploy to and test against."""

from __future__ import annotations

import os
import subprocess
from typing import Annotated, Optional

import typer
from rich.table import Table

from mailfleet import services
from mailfleet.services import backup, certs
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import globals_of
from mailfleet import config as config_mod
from mailfleet.config import load
from mailfleet.errors import ConfigError, MailfleetError, UsageError
from mailfleet.lab import acme as lab_acme
from mailfleet.lab import dns as lab_dns
from mailfleet.lab.inventory import (host_entries, remove_hosts, ssh_user, write_acme,
                                     write_acme_keys, write_dns, write_hosts)
from mailfleet.lab.lab import Lab
from mailfleet.lab.cloud import CLOUD_PACKAGES
from mailfleet.lab.paths import DEFAULT_RELEASE

app = typer.Typer(
    help=(
        "Local Debian 12/13 hosts to deploy to and test against.\n\n"
        "Each node is a booted Debian system (systemd-nspawn) in its own network namespace. "
        "Needs root. See docs/lab.md."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.callback()
def lab_options(
    ctx: typer.Context,
    name: Annotated[
        Optional[str],
        typer.Option("--name", envvar="MAILFLEET_LAB", help="Lab name, to run several labs [default: mf]."),
    ] = None,
) -> None:
    ctx.obj = name


def _lab(ctx: typer.Context) -> Lab:
    return Lab(ctx.obj, log=info)


def preinstalled_packages() -> list[str]:
    """One image for every config (built once per machine): all roles and the default
    features' packages, and restic with or without [backup]; a package the config does not
    use stays installed and unused, deploy installs what the image lacks. With cloud-init,
    switched off on the nodes of `lab up`, so that `provision`'s lab nodes boot from it too."""
    return sorted(set(services.packages(None)) | set(backup.PACKAGES) | set(CLOUD_PACKAGES))


@app.command()
def up(
    ctx: typer.Context,
    release: Annotated[
        Optional[list[str]],
        typer.Option(
            "--release", "-r", metavar="RELEASE",
            help=f"trixie (Debian 13) or bookworm (Debian 12); repeat to give each node its own "
            f"[default: {DEFAULT_RELEASE}].",
        ),
    ] = None,
    nodes: Annotated[
        Optional[int], typer.Option("--nodes", "-n", metavar="N", help="Number of nodes n1..nN [default: 1].")
    ] = None,
    preinstall: Annotated[
        bool,
        typer.Option(
            "--preinstall",
            help="Boot from an image that already has the packages `deploy` installs "
            "(faster tests that are not about installation; deploy still runs every step).",
        ),
    ] = False,
) -> None:
    """Boot lab nodes n1..nN.

    Replaces a running lab of the same name, and writes the nodes as [[hosts]] (with
    lab = NAME) into the config file, creating it if needed.
    """
    lab = _lab(ctx)
    path = globals_of(ctx).config_path
    packages = None
    if path.exists() or path.is_symlink() or not path.parent.is_dir():
        load(path)  # an unreadable or invalid config is refused before any node boots
    if preinstall:
        packages = preinstalled_packages()
    state = lab.up(release or [], nodes, packages)
    existed = path.exists()
    try:
        write_hosts(path, lab.paths.id, host_entries(lab, state))
    except MailfleetError as err:
        lab.down()  # nothing half-applied: no running lab the config does not list
        raise ConfigError(f"{err.message.rstrip('.')}; the lab was stopped again.",
                         hint="Rename or remove the [[hosts]] entry that clashes with the lab's "
                              "node names (n1, n2, ...), or use another config (-c).") from err
    for node in state.nodes:
        info(f"{node.name}: Debian {node.debian} ({node.release}) at {node.address}, "
             f"ssh 127.0.0.1:{node.ssh_port}, up in {node.boot_seconds:.1f} s")
    names = ", ".join(n.name for n in state.nodes)
    if existed:
        info(f"added {names} to {path} as [[hosts]] (lab = \"{lab.paths.id}\"); nothing else "
             "in it changed, and `mailfleet lab down` takes them out again; next: `mailfleet deploy`")
    else:
        info(f"wrote {path} with {names} as [[hosts]] and the lab's settings ([dns] check = "
             "false, the lab's gateway in [fail2ban] ignore); next: `mailfleet deploy`")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the lab.

    Stops every node and helper process by pid, unmounts and removes the lab's namespaces,
    and removes the lab's hosts from the config file.
    """
    lab = _lab(ctx)
    if not lab.down():
        info(f"lab {lab.paths.id} is not running")
    path = globals_of(ctx).config_path
    removed = remove_hosts(path, lab.paths.id)
    if removed:
        info(f"took {', '.join(removed)} out of {path}")


@app.command()
def status(ctx: typer.Context, json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the lab's nodes.

    Name, release, address and SSH forward of each node; exit 1 if the lab is not running.
    """
    data = _lab(ctx).status()
    if json:
        print_json(data)
    elif not data["nodes"]:
        console.print(f"lab {data['lab']} is not running")
    else:
        table = Table("node", "release", "address", "ssh", "state", box=None)
        for n in data["nodes"]:
            table.add_row(n["name"], f"{n['release']} (Debian {n['debian']})", n["address"],
                          n["ssh"], "running" if n["running"] else "[red]stopped[/]")
        console.print(table)
    raise typer.Exit(0 if data["running"] else 1)


@app.command()
def stop(ctx: typer.Context,
         node: Annotated[str, typer.Argument(help="Node name, e.g. n1.")]) -> None:
    """Power a node off at once, as a crashed VPS (every process killed, nothing shut down
    cleanly; its disk stays). `mailfleet lab start NODE` boots it again."""
    _lab(ctx).stop(node)
    info(f"{node} is off")


@app.command()
def start(ctx: typer.Context,
          node: Annotated[str, typer.Argument(help="Node name, e.g. n1.")]) -> None:
    """Boot a stopped node again from its disk."""
    seconds = _lab(ctx).start(node)
    info(f"{node} booted in {seconds:.1f} s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="Node name, e.g. n1.")],
    command: Annotated[Optional[list[str]], typer.Argument(help="Command to run (after --).")] = None,
) -> None:
    """Root shell on a lab node.

    Or run one command: mailfleet lab ssh n1 -- hostname -f (the node's shell parses it).
    Logs in as the node's ssh_user from the config (after deploy: the admin user, with sudo).
    """
    lab = _lab(ctx)
    cmd = lab.ssh_command(node, command,
                            ssh_user(globals_of(ctx).config_path, lab.paths.id, node))
    raise typer.Exit(subprocess.call(cmd))


@app.command("dns")
def dns(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="The node to run the DNS server on, e.g. n3.")],
    zone: Annotated[Optional[list[str]], typer.Option(
        "--zone", "-z", metavar="ZONE",
        help="A zone to serve; repeat [default: the config's mail domains].")] = None,
) -> None:
    """Give the lab a DNS server: BIND on NODE, every node resolving through it.

    Serves the zones (and the lab's reverse zone) with TSIG-signed updates allowed, and writes
    [dns] into the config so `dns check` asks it and `dns publish` updates it. Each web host
    whose names are in the zones gets a key of its own that may change only its
    _acme-challenge TXT records, written into [acme] tsig_keys (for DNS-01); the zone key
    stays on this machine.
    """
    lab = _lab(ctx)
    path = globals_of(ctx).config_path
    config = load(path)
    zones = [_zone(z) for z in zone] if zone else config.mail.all_domains
    users = {h.name: h.ssh_user for h in config.hosts if h.lab == lab.paths.id}
    # each web host proves its certificate names by DNS-01 with a key of its own
    acme = {}
    for host in config.hosts:
        names = [n for n in certs.certificate_names(config, config.host_fqdn(host),
                                                    "mail" in host.roles)
                 if any(n == z or n.endswith(f".{z}") for z in zones)]
        if host.lab == lab.paths.id and "web" in host.roles and names:
            acme[host.name] = names
    served = lab_dns.setup(lab, node, zones, users, acme)
    write_dns(path, served)
    write_acme_keys(path, {h: k for h, k in served.acme_keys.items() if h in acme})
    keys = "".join(f"; {h}'s DNS-01 key: {served.acme_keys[h]}" for h in acme)
    info(f"{node} ({served.address}) serves {', '.join(served.zones)}; every node resolves "
         f"through it; [dns] in {path} points at it (127.0.0.1:{served.port}){keys}")


@app.command()
def acme(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="The node to run the ACME server on, e.g. n3.")],
    dns: Annotated[Optional[str], typer.Option(
        "--dns", metavar="NODE",
        help="The node whose DNS server Pebble asks (see `lab dns`) [default: NODE].")] = None,
) -> None:
    """Give the lab an ACME server: Pebble on NODE, checking names through the lab's DNS.

    Writes [acme] into the config (enabled, Pebble's directory, the file that makes its
    HTTPS trusted), so the next `deploy` obtains certificates from it.
    """
    lab = _lab(ctx)
    path = globals_of(ctx).config_path
    config = load(path)
    users = {h.name: h.ssh_user for h in config.hosts if h.lab == lab.paths.id}
    resolver = f"{lab.node(dns or node).address}:53"
    served = lab_acme.setup(lab, node, resolver, users.get(node, "root"))
    write_acme(path, served)
    info(f"{node} runs Pebble at {served.directory} (names checked through {resolver}); its "
         f"root CA: https://127.0.0.1:{served.management_port}/roots/0; [acme] in {path} "
         "points at it")


def _zone(value: str) -> str:
    try:
        return config_mod.domain_name(value)
    except ValueError as err:
        raise UsageError(f"--zone: {err}.") from None


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="Local command to run inside the lab network.")],
) -> None:
    """Run a local program inside the lab network.

    There it reaches every node by its address: mailfleet lab exec -- python3 client.py
    """
    cmd = _lab(ctx).exec_command(command)
    os.execvp(cmd[0], cmd)
