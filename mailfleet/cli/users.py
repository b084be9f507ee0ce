"""`mailfleet user ...`: mailboxes in the mail database, one at a time or from a CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mailfleet.accounts import bulk, rules, store
from mailfleet.accounts.passwords import hash_many, hash_password
from mailfleet.cli.accounts import (
    FATE, Archive, HostOption, Json, Purge, Yes, confirm, database, disposal, mail_hosts,
    new_password, parse, require_configured,
)
from mailfleet.cli.output import console, err_console, info, print_json
from mailfleet.config import HostSettings
from mailfleet.errors import DeployError, UsageError
from mailfleet.services.mailboxes import copy_to, dispose, dispose_command, kick

app = typer.Typer(help="Mailboxes: add, list, change passwords and quotas, disable, remove, "
                       "import from CSV.", no_args_is_help=True)

Email = Annotated[str, typer.Argument(metavar="EMAIL", help="The mailbox's address.")]
PasswordStdin = Annotated[bool, typer.Option(
    "--password-stdin", help="Read the password from the first line of standard input.")]
Generate = Annotated[bool, typer.Option(
    "--generate", help="Generate a strong password and print it once.")]


def _show_generated(email: str, password: str, generated: bool) -> None:
    if generated:
        console.print(f"password for {escape(email)}: [bold]{escape(password)}[/] (shown once; "
                      "hand it over safely)", soft_wrap=True)


@app.command("add")
def add(
    ctx: typer.Context,
    email: Email,
    name: Annotated[str, typer.Option("--name", "-n", help="Display name.")] = "",
    quota: Annotated[Optional[str], typer.Option(
        "--quota", "-q", metavar="SIZE", help="Like 500M or 5G [default: mail.default_quota_mb].")] = None,
    password_stdin: PasswordStdin = False,
    generate: Generate = False,
    home: Annotated[Optional[str], typer.Option(
        "--home", metavar="HOST", help="In a cluster with several mail hosts: the one it lives "
        "on [default: the one with the fewest mailboxes].")] = None,
    host: HostOption = None,
) -> None:
    """Create a mailbox.

    Asks for the password twice (hidden) in a terminal; otherwise use --password-stdin or
    --generate. The password is hashed here (ARGON2ID) and only the hash is sent.
    """
    email = parse(rules.address, email, "EMAIL")
    name = parse(rules.display_name, name, "--name")
    quota_bytes = parse(rules.quota, quota or "", "--quota")
    with database(ctx, host) as (config, settings, conn):
        require_configured(config, email)
        store.require_new_mailbox(conn, email)  # before asking for a password
        if home is not None:
            store.require_home(conn, home)
        password, generated = new_password(email, config, password_stdin, generate)
        home, replica = store.add_mailbox(conn, email, hash_password(password), name,
                                          quota_bytes, home)
    console.print(f"added {escape(email)} on {settings.name} (quota "
                  f"{rules.format_size(quota_bytes, f'{config.mail.default_quota_mb}M (default)')}"
                  + (f", home {home}" if home else "") + (f", replica {replica}" if replica else "")
                  + ")")
    _show_generated(email, password, generated)


@app.command("list")
def list_users(
    ctx: typer.Context,
    domain: Annotated[Optional[str], typer.Option("--domain", "-d", help="Only this domain.")] = None,
    json: Json = False,
    host: HostOption = None,
) -> None:
    """List mailboxes (mailfleet's own health-check mailbox is not shown)."""
    with database(ctx, host) as (config, _, conn):
        rows = store.mailboxes(conn, domain.lower() if domain else None)
    if json:
        print_json([r.as_dict() for r in rows])
        return
    homes = any(r.home for r in rows)
    table = Table("address", "name", "quota", "status", "created",
                  *(("home", "replica") if homes else ()), box=None, pad_edge=False)
    default = f"{config.mail.default_quota_mb}M (default)"
    for r in rows:
        table.add_row(escape(r.email), escape(r.name), rules.format_size(r.quota_bytes, default),
                      "active" if r.active else "[yellow]disabled[/]",
                      r.created_at.strftime("%Y-%m-%d"),
                      *((r.home or "", r.replica or "") if homes else ()))
    console.print(table)
    console.print(f"{len(rows)} mailbox(es)")


@app.command("move")
def move(
    ctx: typer.Context,
    email: Email,
    to: Annotated[str, typer.Argument(metavar="HOST", help="The mail host it will live on.")],
    host: HostOption = None,
) -> None:
    """Move a mailbox to another mail host of a cluster, while mail keeps arriving.

    Its mail is copied to HOST first (nothing changes when that fails), then HOST becomes
    its home and the old home its replica: deliveries and logins go to HOST from then on,
    the old home's sessions are ended, and whatever reached the old home meanwhile is
    copied over once more. A home that is down: `mailfleet cluster takeover` instead.
    """
    email = parse(rules.existing, email, "EMAIL")
    with database(ctx, host) as (config, settings, conn):
        store.require_user_mailbox(conn, email)
        store.require_home(conn, to, "HOST")
        members = {m.name: m for m in mail_hosts(config, settings)}
        home = store.home_of(conn, email)
        if home == to:
            raise UsageError(f"{email} lives on {to} already.")
        if home not in members or to not in members:
            raise UsageError(f"HOST: {email} lives on {home}; both it and {to} must be "
                             "mail hosts in the config.")
        old, new = members[home], members[to]
        if not _copied(old, email, config.vpn_address(new)):
            raise DeployError(f"Copying {email} from {old.name} to {to} failed; nothing was "
                              "changed.", hint=f"If {old.name} is down: mailfleet cluster "
                              f"takeover {old.name}")
        store.move_mailbox(conn, email, to)
    try:
        kick(old, email)  # its sessions there reconnect, to HOST
    except DeployError:
        info(f"could not end {email}'s sessions on {old.name}")
    if not _copied(new, email, config.vpn_address(old)):  # what reached the old home meanwhile
        info(f"the copy back from {old.name} failed; replication repeats it")
    console.print(f"{escape(email)} lives on {to} now; {old.name} holds its replica")


def _copied(source: HostSettings, email: str, address: str) -> bool:
    try:
        return copy_to(source, email, address)
    except DeployError:  # the host does not answer over SSH
        return False


@app.command("passwd")
def passwd(ctx: typer.Context, email: Email, password_stdin: PasswordStdin = False,
           generate: Generate = False, host: HostOption = None) -> None:
    """Set a new password; the old one stops working at once."""
    email = parse(rules.existing, email, "EMAIL")
    with database(ctx, host) as (config, settings, conn):
        store.require_user_mailbox(conn, email)  # before asking for a password
        password, generated = new_password(email, config, password_stdin, generate)
        store.set_password(conn, email, hash_password(password))
    console.print(f"new password set for {escape(email)} on {settings.name}")
    _show_generated(email, password, generated)


@app.command("quota")
def quota(
    ctx: typer.Context,
    email: Email,
    size: Annotated[str, typer.Argument(metavar="SIZE",
                                        help='Like 500M, 5G or 1.5GiB; "default" for the config\'s.')],
    host: HostOption = None,
) -> None:
    """Set a mailbox's quota (applies to the next delivery and login)."""
    email = parse(rules.existing, email, "EMAIL")
    quota_bytes = parse(rules.quota, size, "SIZE")
    with database(ctx, host) as (config, settings, conn):
        store.set_quota(conn, email, quota_bytes)
    console.print(f"quota of {escape(email)} on {settings.name}: "
                  f"{rules.format_size(quota_bytes, f'{config.mail.default_quota_mb}M (default)')}")


def _set_active(ctx: typer.Context, email: str, host: str | None, active: bool) -> None:
    email = parse(rules.existing, email, "EMAIL")
    with database(ctx, host) as (config, settings, conn):
        changed = store.set_active(conn, email, active)
    if not active:
        for mail in mail_hosts(config, settings):
            kick(mail, email)
    state = "enabled" if active else "disabled"
    console.print(f"{escape(email)} on {settings.name}: {state}" + ("" if changed else " already"))


@app.command("disable")
def disable(ctx: typer.Context, email: Email, host: HostOption = None) -> None:
    """Stop a mailbox: no logins, no sending, and mail to it is refused; its mail is kept."""
    _set_active(ctx, email, host, False)


@app.command("enable")
def enable(ctx: typer.Context, email: Email, host: HostOption = None) -> None:
    """Undo `user disable`."""
    _set_active(ctx, email, host, True)


@app.command("remove")
def remove(
    ctx: typer.Context,
    email: Email,
    archive: Archive = False,
    purge: Purge = False,
    yes: Yes = False,
    host: HostOption = None,
) -> None:
    """Remove a mailbox and the aliases that deliver only to it.

    Its mail is kept on the host unless --archive or --purge is given.
    """
    email = parse(rules.existing, email, "EMAIL")
    how = disposal(archive, purge)
    local, _, domain = email.rpartition("@")
    dispose_command(domain, local, how)  # refuses a name that is no single path component
    with database(ctx, host) as (config, settings, conn):
        store.require_user_mailbox(conn, email)  # before asking for confirmation
        confirm(f"Remove the mailbox {email} on {settings.name} (its mail will be "
                f"{FATE[how]})?", yes)
        aliases = store.remove_mailbox(conn, email)
    for mail in mail_hosts(config, settings):
        kick(mail, email)
        console.print(f"removed {escape(email)} from {settings.name}; "
                      + (f"on {mail.name}: " if mail is not settings else "")
                      + escape(dispose(mail, domain, local, how)), soft_wrap=True)
    if aliases:
        console.print("also removed the aliases that delivered only to it: "
                      + escape(", ".join(aliases)),
                      soft_wrap=True)


@app.command("import")
def import_users(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE.csv", help="Columns: email, name, "
                                         "password, quota, aliases (only email is required).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check every row, change nothing.")] = False,
    update: Annotated[bool, typer.Option(
        "--update/--skip-existing",
        help="Existing users: update name, quota, aliases and (when given) password, or skip them.")] = False,
    passwords_out: Annotated[Optional[Path], typer.Option(
        "--passwords-out", metavar="PATH",
        help="Where generated passwords go (mode 0600) [default: FILE-passwords.csv].")] = None,
    host: HostOption = None,
) -> None:
    """Add many users from a CSV file: all rows or none.

    Every row is checked first (address, domain, duplicates, password policy, quota,
    aliases) and each problem is reported with its line; then all rows are written in one
    transaction. Rows without a password get a generated one, written to a new file with
    mode 0600, never to the terminal. Running the same file again is safe.
    """
    rows = bulk.read_rows(file)
    if not rows:
        raise UsageError(f"{file} has a header but no users.")
    out = passwords_out or file.with_name(f"{file.stem}-passwords.csv")
    if passwords_out and not passwords_out.parent.is_dir():
        raise UsageError(f"--passwords-out {passwords_out}: the directory "
                         f"{passwords_out.parent} does not exist; nothing was imported.")
    with database(ctx, host) as (config, settings, conn):
        plan = bulk.plan(rows, bulk.Database.read(conn, config.mail.all_domains), update,
                         config.mail.min_password_length)
        if plan.problems:
            raise UsageError(bulk.describe(plan.problems, file))
        generated = [r for r in plan.rows if r.generated]
        if generated and out.exists():
            raise UsageError(f"{out} exists already; nothing was imported.",
                             hint="Move it away, or name another file with --passwords-out.")
        summary = (f"{plan.count('create')} to create, {plan.count('update')} to update, "
                   f"{plan.count('skip')} existing skipped, {len(generated)} password(s) to generate")
        if dry_run:
            console.print(f"{escape(str(file))}: {len(plan.rows)} row(s) are valid: {summary} "
                          f"(dry run: nothing was changed)", soft_wrap=True)
            return
        _hash(plan.writes)
        if generated:
            bulk.write_passwords(out, generated)
        try:
            bulk.apply(conn, plan.writes)
        except BaseException:
            if generated:  # those passwords were never stored
                out.unlink(missing_ok=True)
            raise
    console.print(f"imported {escape(str(file))} on {settings.name}: "
                  f"{plan.count('create')} created, "
                  f"{plan.count('update')} updated, {plan.count('skip')} existing skipped",
                  soft_wrap=True)
    if generated:
        console.print(f"{len(generated)} generated password(s) are in {escape(str(out))} "
                      "(mode 0600); hand them over safely and delete the file", soft_wrap=True)


def _hash(rows: list[bulk.Row]) -> None:
    todo = [r for r in rows if r.password is not None]
    if not todo:
        return
    with Progress(TextColumn("hashing passwords"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("hash", total=len(todo))
        hashes = hash_many([r.password or "" for r in todo], lambda n: bar.advance(task, n))
    for row, hashed in zip(todo, hashes):
        row.hashed = hashed
    info(f"hashed {len(todo)} password(s)")
