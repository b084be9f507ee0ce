"""`mailfleet demo`: the whole job on a local Debian 13 lab host, end to end."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Annotated

import typer
from pyinfra.facts.files import FileContents
from rich.markup import escape

from mailfleet.accounts import db, store
from mailfleet.accounts.passwords import generate_password
from mailfleet.cli.deploy import _render_report, render_checks, run_checks, run_deploy
from mailfleet.cli.output import console, info
from mailfleet.cli.state import Globals, globals_of
from mailfleet.config import Config
from mailfleet.engine import Engine, mailclient
from mailfleet.engine.tunnel import tunnel
from mailfleet.services import certs, opendkim
from mailfleet.services.checks import all_passed

DEMO_LOCAL_PART = "demo"


def demo(
    ctx: typer.Context,
    keep: Annotated[bool, typer.Option("--keep/--down", help="Leave the lab host running.")] = True,
    name: Annotated[str, typer.Option("--name", help="Lab name of the demo host (1-8 lower "
                                                    "case letters or digits).")] = "demo",
) -> None:
    """Deploy the mail system to a local Debian 13 lab host and use it.

    Boots a lab host (lab name "demo" unless --name), deploys the full stack, creates the account
    demo@example.internal, sends it a real mail on port 587 and reads it back over IMAP,
    prints the health check, and the webmail URL on 127.0.0.1 (a loopback forward to the
    host) with the account's credentials. Needs root.
    """
    from mailfleet.lab.inventory import host_entries, write_hosts
    from mailfleet.lab.lab import Lab

    lab = Lab(name, log=info)
    config_path = lab.paths.state_dir.parent / f"{lab.paths.id}.toml"
    g = Globals(Path(config_path), globals_of(ctx).verbose)
    info("booting a Debian 13 lab host")
    state = lab.up(["trixie"], 1)
    config_path.unlink(missing_ok=True)
    write_hosts(config_path, lab.paths.id, host_entries(lab, state))
    info(f"deploying the mail system (config: {config_path})")
    config = g.load()
    report = run_deploy(g, config, None)
    _render_report(report)
    config = g.load()  # deploy switched the host to its admin user
    account = send_and_read(config) if report.ok else None
    results = run_checks(g, config, None)
    render_checks(results)
    web_ok = account is not None and show_webmail(config, lab.forward("n1", 443), *account, keep)
    if keep:
        info(f"the lab host is still running: `mailfleet -c {config_path} lab --name "
             f"{lab.paths.id} ssh n1`; stop it with `mailfleet lab --name {lab.paths.id} down`")
    else:
        lab.down()
    raise typer.Exit(0 if account and web_ok and all_passed(results) else 1)


def show_webmail(config: Config, port: int, address: str, password: str, keep: bool) -> bool:
    """Webmail through a loopback forward to the lab host's HTTPS port, proven to answer."""
    import http.client
    import ssl

    path = config.web.webmail_path.rstrip("/") + "/"
    url = f"https://127.0.0.1:{port}{path}"
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=20,
                                           context=ssl._create_unverified_context())
        conn.request("GET", path, headers={"Host": config.mail.hostname})
        page = conn.getresponse().read()
        conn.close()
    except OSError as err:
        console.print(f"[bold red]webmail at {url} does not answer: {escape(str(err))}[/]")
        return False
    if b"rcmloginuser" not in page:
        console.print(f"[bold red]webmail at {url} shows no login form[/]")
        return False
    console.print(f"webmail [bold]{url}[/] answers with Roundcube's login page", soft_wrap=True)
    if keep:
        console.print(f"open it in a browser (the certificate is from the lab's own CA: accept "
                      f"it) and log in as [bold]{address}[/] with [bold]{password}[/]",
                      soft_wrap=True)
    return True


def send_and_read(config: Config) -> tuple[str, str] | None:
    """Create the demo account, mail it on 587 and read the mail back over IMAP 993:
    (address, password) when the mail arrived with a valid DKIM signature."""
    host = config.hosts[0]
    fqdn = config.host_fqdn(host)
    address = f"{DEMO_LOCAL_PART}@{config.mail.domain}"
    password = generate_password()
    with db.connect(host) as conn:
        store.set_mailbox(conn, address, password, name="Demo User")
    with Engine(config, [host]) as engine:
        ca = "\n".join(engine.facts(FileContents, path=certs.CA_FILE)[host.name] or [])
        keys = opendkim.public_keys(engine)[host.name]
    console.print(f"\naccount [bold]{address}[/] password [bold]{password}[/] "
                  f"(IMAP {fqdn}:993, SMTP {fqdn}:587, CA {certs.CA_FILE} on the host)",
                  soft_wrap=True)
    context = mailclient.tls_context(ca)
    message = mailclient.check_message(address, address, "demo", subject="Hello from mailfleet demo")
    message.set_content("This message went through Postfix (587, STARTTLS, AUTH), OpenDKIM, "
                        "LMTP into Dovecot, and was read back over IMAP.\n")
    with tunnel(host, [587, 993]) as forward:
        mailclient.submit(forward.socket(587), 587, fqdn, context, address, password, message)
        raw = mailclient.fetch(forward.socket(993), 993, fqdn, context, address, password,
                             message["Subject"], delete=False)
    if raw is None:
        console.print("[bold red]the demo mail did not arrive[/]")
        return None
    received = email.message_from_bytes(raw, policy=email.policy.default)
    dkim_ok, why = mailclient.verify_dkim(raw, keys)
    console.print(f"sent on 587 and read over IMAP: [bold]{received['Subject']}[/] "
                  f"from {received['From']}, DKIM {why}\n", soft_wrap=True)
    return (address, password) if dkim_ok else None
