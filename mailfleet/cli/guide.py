"""`mailfleet guide ...`: the user-facing guides, filled in with this install's names.

The same templates make docs/mail-clients.md and docs/bulk-import.md for the example
config (a unit test keeps them in step), so the docs never drift from what users get.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mailfleet.accounts.rules import format_size
from mailfleet.cli.output import info
from mailfleet.cli.state import globals_of
from mailfleet.config import Config
from mailfleet.errors import UsageError
from mailfleet.templating import render

app = typer.Typer(help="Guides for users and operators, with this install's names and limits.",
                  no_args_is_help=True)
GUIDES = {"clients": "guides/mail-clients.md.j2", "import": "guides/bulk-import.md.j2"}
Output = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE", help="Write it to FILE instead of printing it.")]


def render_guide(name: str, config: Config, for_docs: bool = False) -> str:
    mail = config.mail
    return render(GUIDES[name], domain=mail.domain, hostname=mail.hostname,
                  example_user=f"jane@{mail.domain}",
                  default_quota=format_size(mail.default_quota_mb * 2**20) + "B",
                  message_size_mb=mail.message_size_mb,
                  min_password_length=mail.min_password_length, generated_for_docs=for_docs)


def _emit(ctx: typer.Context, name: str, output: Path | None) -> None:
    text = render_guide(name, globals_of(ctx).load())
    if output:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as err:
            raise UsageError(f"--output: cannot write {output}: {err.strerror or err}.",
                             hint="Create its directory first, or name another file.") from None
        info(f"wrote {output}")
    else:
        typer.echo(text, nl=False)


@app.command("clients")
def clients(ctx: typer.Context, output: Output = None) -> None:
    """Thunderbird, Outlook and phone settings (server names, ports, security) for users."""
    _emit(ctx, "clients", output)


@app.command("import")
def import_guide(ctx: typer.Context, output: Output = None) -> None:
    """How to prepare and import a CSV of users (`mailfleet user import`)."""
    _emit(ctx, "import", output)
