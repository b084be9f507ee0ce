"""`mailfleet domain ...`: the mail domains served.

A domain lives in mailfleet.toml (`mail.domains`), because deploy derives its DKIM key,
signing, DNS records and Postfix's list of domains from there, and in each host's mail
database, which Dovecot and Postfix's mailbox and alias lookups read. `domain add` and
`domain remove` change both and apply the config like `mailfleet deploy`; the file is only
rewritten once the hosts took it.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Annotated

import psycopg
import tomlkit
import typer
from rich.markup import escape
from rich.table import Table

from mailfleet import config as config_mod
from mailfleet.accounts import db, store
from mailfleet.cli.accounts import (
    FATE, Archive, HostOption, Json, Purge, Yes, confirm, database, disposal, mail_hosts, parse,
)
from mailfleet.cli.deploy import _render_report, run_deploy
from mailfleet.cli.output import console, info, print_json
from mailfleet.cli.state import globals_of
from mailfleet.config import Config, HostSettings
from mailfleet.errors import DeployError, UsageError
from mailfleet.services import opendkim
from mailfleet.services.mailboxes import dispose, kick

app = typer.Typer(help="Mail domains: add, list, remove.", no_args_is_help=True)
Domain = Annotated[str, typer.Argument(metavar="DOMAIN", help="Like example.org.")]


def _domain(value: str) -> str:
    return parse(config_mod.domain_name, value, "DOMAIN")


def _with_domains(config: Config, domains: list[str]) -> Config:
    return config.model_copy(update={"mail": config.mail.model_copy(update={"domains": domains})})


def _apply(ctx: typer.Context, config: Config, failure: str) -> None:
    report = run_deploy(globals_of(ctx), config, None)
    _render_report(report)
    if not report.ok:
        raise DeployError(failure, hint="Fix the failure above and run the command again.")


def _write_domains(ctx: typer.Context, domains: list[str]) -> None:
    def change(doc: tomlkit.TOMLDocument) -> None:
        array = tomlkit.array()
        array.extend(domains)
        doc["mail"]["domains"] = array  # type: ignore[index]

    config_mod.edit(globals_of(ctx).config_path, change)


@app.command("add")
def add(ctx: typer.Context, domain: Domain) -> None:
    """Serve a further mail domain on every host.

    Adds it to mail.domains in mailfleet.toml and deploys: the domain goes into the mail
    database, gets a DKIM key and is signed. Prints the DKIM record to publish (all
    records: `mailfleet dns records`).
    """
    domain = _domain(domain)
    g = globals_of(ctx)
    config = g.load()
    config.select_hosts(None, g.config_path)
    domains = config.mail.domains if domain in config.mail.all_domains else [*config.mail.domains, domain]
    info(f"adding {domain} to mail.domains and deploying")
    _apply(ctx, _with_domains(config, domains),
           f"Deploy failed while adding {domain}; {g.config_path} was not changed.")
    if domains != config.mail.domains:
        _write_domains(ctx, domains)
    console.print(f"{domain} is served (written to {escape(str(g.config_path))})")
    selector = config.mail.dkim_selector
    for host in g.load().hosts:  # as deploy left them (it may have switched the SSH user)
        record = opendkim.read_key_record(host, domain, selector)
        console.print(f"publish on {host.name}'s DNS: {selector}._domainkey.{domain} TXT "
                      f"\"{escape(record)}\"", soft_wrap=True)
    console.print("all of its DNS records (MX, SPF, DKIM, DMARC, ...): `mailfleet dns records`; "
                  "send them to your DNS server: `mailfleet dns publish`", soft_wrap=True)


@app.command("list")
def list_domains(ctx: typer.Context, json: Json = False, host: HostOption = None) -> None:
    """List the domains in the mail database, with their mailboxes and aliases."""
    with database(ctx, host) as (config, _, conn):
        rows = store.domains(conn)
    configured = set(config.mail.all_domains)
    for row in rows:
        row["configured"] = row["name"] in configured
        row["primary"] = row["name"] == config.mail.domain
    if json:
        print_json(rows)
        return
    table = Table("domain", "mailboxes", "aliases", "", box=None, pad_edge=False)
    for row in rows:
        note = "primary" if row["primary"] else "" if row["configured"] else \
            "[yellow]not in mailfleet.toml[/]"
        table.add_row(escape(row["name"]), str(row["mailboxes"]), str(row["aliases"]), note)
    console.print(table)


@app.command("remove")
def remove(
    ctx: typer.Context,
    domain: Domain,
    archive: Archive = False,
    purge: Purge = False,
    yes: Yes = False,
) -> None:
    """Stop serving a domain on every host: its mailboxes and aliases are removed and its
    mail is refused from then on.

    Its stored mail is kept unless --archive or --purge is given; its DKIM key stays in
    /etc/dkimkeys (adding the domain again reuses it).
    """
    domain = _domain(domain)
    how = disposal(archive, purge)
    g = globals_of(ctx)
    config = g.load()
    if domain == config.mail.domain:
        raise UsageError(f"{domain} is the primary domain (mail.domain in {g.config_path}); "
                         "it cannot be removed.")
    clustered = bool(config.cluster_members())  # one database: the cluster's primary
    hosts = [db.primary_host(config)] if clustered else \
        [h for h in config.select_hosts(None, g.config_path) if "db" in h.roles]
    with ExitStack() as stack:  # one connection per database, kept across the question
        found: list[tuple[HostSettings, psycopg.Connection, int]] = []
        for host in hosts:
            conn = stack.enter_context(db.connect(host, cluster=clustered))
            row = next((r for r in store.domains(conn) if r["name"] == domain), None)
            if row:
                found.append((host, conn, row["mailboxes"]))
        if not found and domain not in config.mail.domains:
            raise UsageError(f"{domain} is neither in {g.config_path} nor in any mail database.")
        users = sum(count for *_, count in found)
        confirm(f"Remove {domain} with its {users} mailbox(es) and their aliases "
                f"(their mail will be {FATE[how]})?", yes)
        for host, conn, _ in found:
            gone = store.remove_domain(conn, domain)
            for mail in mail_hosts(config, host):
                kick(mail, f"*@{domain}")
                console.print(f"removed {domain} and {len(gone)} mailbox(es) from {host.name}; "
                              + (f"on {mail.name}: " if mail is not host else "")
                              + escape(dispose(mail, domain, None, how)), soft_wrap=True)
    if domain in config.mail.domains:
        # the database no longer has it: the file follows at once, deploy then stops signing
        remaining = [d for d in config.mail.domains if d != domain]
        _write_domains(ctx, remaining)
        console.print(f"{domain} removed from mail.domains in {escape(str(g.config_path))}")
        _apply(ctx, _with_domains(config, remaining),
               f"{domain} is removed, but deploy failed while taking it out of DKIM signing.")
