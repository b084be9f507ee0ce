"""`mailfleet init`: write a commented mailfleet.toml to start from."""

from __future__ import annotations

from typing import Annotated

import typer

from mailfleet.cli.output import info
from mailfleet.cli.state import globals_of
from mailfleet.config import parse
from mailfleet.errors import UsageError
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
    if path.exists() and not force:
        raise UsageError(f"{path} already exists.", hint="Use --force to overwrite it.")
    text = render_init(domain.lower(), (hostname or f"mail.{domain}").lower())
    parse(text, path)  # refuses a bad --domain/--hostname with the same message as the file
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise UsageError(f"Cannot write {path}: {err.strerror or err}.",
                         hint="Create its directory first, or name another file with -c PATH.") from None
    info(f"wrote {path}: add your hosts under [[hosts]], then run `mailfleet deploy`")
