"""The `mailfleet` command: global options, command groups, and the one place errors become exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mailfleet import __version__
from mailfleet import config as config_mod
from mailfleet.cli import (aliases, backup, cluster, demo, deploy, dns, domains, guide, init, lab,
                           provision, users, vpn)
from mailfleet.cli.output import error
from mailfleet.cli.state import Globals
from mailfleet.errors import MailfleetError

app = typer.Typer(
    name="mailfleet",
    help=(
        "Turn plain Debian 12/13 hosts into a complete, hardened mail system, and operate it.\n\n"
        "Everything is described by one file, mailfleet.toml (see `mailfleet init`). "
        "Exit codes: 0 ok, 1 a check or an operation failed, 2 bad usage or bad config."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mailfleet {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config", "-c", metavar="PATH", envvar=config_mod.ENV_VAR, show_envvar=True,
            help="Config file [default: ./mailfleet.toml].",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the underlying commands and their output.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = Globals(config_mod.config_path(config), verbose)


app.command("init")(init.init)
app.command("deploy")(deploy.deploy)
app.command("check")(deploy.check)
app.command("demo")(demo.demo)
app.command("provision")(provision.provision)
app.command("destroy")(provision.destroy)
app.add_typer(domains.app, name="domain")
app.add_typer(users.app, name="user")
app.add_typer(aliases.app, name="alias")
app.add_typer(dns.app, name="dns")
app.add_typer(backup.app, name="backup")
vpn.app.command("show")(vpn.show)
vpn.app.command("client")(vpn.client)
app.add_typer(vpn.app, name="vpn")
app.add_typer(cluster.app, name="cluster")
app.add_typer(guide.app, name="guide")
app.add_typer(lab.app, name="lab")


def run(args: list[str] | None = None) -> int:
    """Run the CLI; user mistakes and failed operations become a message and an exit code.

    Click reports its own usage errors (exit 2) and ends with SystemExit; mailfleet's errors
    arrive here as MailfleetError and are printed as one sentence plus a hint.
    """
    try:
        app(args=args, prog_name="mailfleet")
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except MailfleetError as err:
        error(err.message, err.hint)
        return err.exit_code
    except KeyboardInterrupt:
        error("Interrupted.")
        return 130
    return 0
