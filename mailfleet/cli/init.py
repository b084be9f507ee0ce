"""`mailfleet init`: write a commented mailfleet.toml to start from."""

from __future__ import annotations

from typing import Annotated

import typer

from mailfleet.cli.output import info
from mailfleet.cli.state import globals_of
from mailfleet.config import parse
from mailfleet.errors import UsageError
from mailfleet.lab.inventory import read_lab_hosts, write_hosts
from mailfleet.templating import render_init


def init(
    ctx: typer.Context,
    domain: Annotated[str, typer.Option(help="Primary mail domain.")] = "example.org",
    hostname: Annotated[
        str, typer.Option(help="Mail host name [default: mail.DOMAIN].", show_default=False)
    ] = "",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented mailfleet.toml to start from.

    It goes to -c PATH (default ./mailfleet.toml); an existing file is kept unless --force.
    """
    path = globals_of(ctx).config_path
    lab_hosts = read_lab_hosts(path)
    if path.exists() and not force:
        kept = " (the lab's [[hosts]] in it are kept)" if lab_hosts else ""
        raise UsageError(f"{path} already exists.", hint=f"Use --force to overwrite it{kept}.")
    text = render_init(domain.lower(), (hostname or f"mail.{domain}").lower())
    parse(text, path)  # refuses a bad --domain/--hostname with the same message as the file
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise UsageError(f"Cannot write {path}: {err.strerror or err}.",
                         hint="Create its directory first, or name another file with -c PATH.") from None
    if lab_hosts:
        # `init --force` after `lab up`: the running lab's nodes stay in the new file
        for lab_id, entries in lab_hosts.items():
            write_hosts(path, lab_id, entries)
        info(f"wrote {path}, keeping the lab's hosts "
             f"({', '.join(e['name'] for es in lab_hosts.values() for e in es)}); "
             "next: `mailfleet deploy`")
        return
    info(f"wrote {path}: add your hosts under [[hosts]], then run `mailfleet deploy`")

