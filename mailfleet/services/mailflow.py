"""The end-to-end health check: what a user does, done by `mailfleet check`.

Through an SSH tunnel (a private Unix socket per port, see engine/tunnel.py) it talks to
every mail port as a client would (TLS handshake and certificate), submits a real message
on 587 with AUTH as mailfleet's own check mailbox, finds it over IMAP on 993 and verifies its
DKIM signature against the host's key. The client side is engine/mailclient.py.
The check mailbox (mailfleet-check@DOMAIN, hidden from user lists) is made by `deploy`.
"""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import time
import uuid
from collections.abc import Callable

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command

from mailfleet.accounts.passwords import hash_password
from mailfleet.accounts.schema import DATABASE
from mailfleet.engine import Engine, HostContext
from mailfleet.engine.mailclient import (DELIVERY_SECONDS, check_message, fetch, submit,
                                         tls_context, tls_handshake, verify_dkim)
from mailfleet.engine.tunnel import tunnel
from mailfleet.errors import MailfleetError
from mailfleet.services import acme, certs, opendkim
from mailfleet.services.checks import CheckResult
from mailfleet.services.postgres import database_state, psql_script, sql_literal
from mailfleet.services.shape import Service

CHECK_LOCAL_PART = "mailfleet-check"
SECRET = "check-mailbox"
# port -> how TLS starts there
TLS_PORTS = {25: "smtp-starttls", 587: "smtp-starttls", 465: "smtp-tls",
             143: "imap-starttls", 993: "imap-tls", 4190: "sieve-starttls"}


def check_address(domain: str, host: str | None = None) -> str:
    """The check mailbox; in a cluster each mail host has its own, homed on it, so a host's
    check sees its own delivery (services/homes.py makes them)."""
    return f"{CHECK_LOCAL_PART}-{host}@{domain}" if host else f"{CHECK_LOCAL_PART}@{domain}"


@operation()
def check_mailbox(address: str, password_hash: str, exists: bool, reset: bool):
    """The check mailbox exists, with the password from the host's secret file."""
    domain = address.split("@", 1)[1]
    if exists and not reset:
        host.noop(f"{address} exists")
        return
    yield psql_script(
        "INSERT INTO mailboxes (email, domain, name, password, system) VALUES "
        f"({sql_literal(address)}, {sql_literal(domain)}, 'mailfleet health check', "
        f"{sql_literal(password_hash)}, true) "
        "ON CONFLICT (email) DO UPDATE SET password = EXCLUDED.password, active = true;\n",
        DATABASE,
    )


def deploy(ctx: HostContext) -> None:
    password, fresh = ctx.secret(SECRET)
    if ctx.plan.mail_cluster:  # the primary's deploy makes the mailbox (services/homes.py)
        return
    address = check_address(ctx.config.mail.domain)
    exists = address in database_state(ctx).system_mailboxes
    # hashing costs ~0.1 s: only when the mailbox is made or its password is new
    ctx.op(check_mailbox, name="Create the health-check mailbox", address=address,
           password_hash=hash_password(password) if fresh or not exists else "",
           exists=exists, reset=fresh)


def _files_read(acme_on: bool) -> str:
    """The CA (and ACME's chain) the check trusts, then its mailbox's password."""
    chain = f"cat {acme.LIVE}/chain.pem 2>/dev/null; " if acme_on else ""
    return (f"cat {certs.CA_FILE} 2>/dev/null; {chain}"
            f"echo '== secret'; cat /etc/mailfleet/secrets/{SECRET} 2>/dev/null; true")


def checks(engine: Engine) -> list[CheckResult]:
    domain = engine.config.mail.domain
    acme_on = engine.config.acme.enabled
    keys = opendkim.public_keys(engine)
    results: list[CheckResult] = []
    for name, text in engine.facts(Command, command=_files_read(acme_on)).items():
        settings = engine.settings[name]
        address = check_address(domain, name if engine.plans[name].mail_cluster else None)
        fqdn = engine.config.host_fqdn(settings)
        ca, _, password = (text or "").partition("== secret")
        ca, password = ca.strip() or None, password.strip()
        try:
            with tunnel(settings, list(TLS_PORTS)) as forward:
                results += _check_host(name, fqdn, forward.socket, tls_context(ca, acme_on),
                                       address, password, keys.get(name, {}))
        except MailfleetError as err:
            results.append(CheckResult(name, "mail flow", "fail", err.message,
                                       "check SSH access to the host"))
    return results


def _check_host(name: str, fqdn: str, socket_of: Callable[[int], str], context: ssl.SSLContext,
                address: str, password: str, keys: dict[str, str | None]) -> list[CheckResult]:
    """The checks through the tunnel's sockets. Port 25 sees only EHLO and STARTTLS: the
    test mail goes in on 587 with AUTH, as a user's would (a session forwarded by sshd
    reaches the host from 127.0.0.1, which Postfix trusts as mynetworks)."""
    results = []
    for port, mode in TLS_PORTS.items():
        try:
            with tls_handshake(socket_of(port), port, mode, fqdn, context) as tls:
                not_after = ssl.cert_time_to_seconds(tls.getpeercert()["notAfter"])
                days = int((not_after - time.time()) // 86400)
                results.append(CheckResult(name, f"TLS on {port}", "ok",
                                           f"{tls.version()}, certificate valid for {days} days"))
        except (OSError, ssl.SSLError, ConnectionError) as err:
            results.append(CheckResult(name, f"TLS on {port}", "fail", str(err) or type(err).__name__,
                                       "see the service's journal on the host"))
    if not password:
        results.append(CheckResult(name, "mail flow", "fail", "the check mailbox has no password",
                                   "run `mailfleet deploy`"))
        return results
    token = uuid.uuid4().hex[:12]
    message = check_message(address, address, token)
    try:
        submit(socket_of(587), 587, fqdn, context, address, password, message)
    except (OSError, smtplib.SMTPException) as err:
        results.append(CheckResult(name, "submission 587", "fail", f"{err}",
                                   "see `journalctl -u postfix` on the host"))
        return results
    results.append(CheckResult(name, "submission 587", "ok", f"STARTTLS + AUTH as {address}"))
    try:
        raw = fetch(socket_of(993), 993, fqdn, context, address, password, message["Subject"])
    except (OSError, imaplib.IMAP4.error) as err:
        results.append(CheckResult(name, "delivery", "fail", f"IMAP: {err}",
                                   "see `journalctl -u dovecot` on the host"))
        return results
    if raw is None:
        results.append(CheckResult(name, "delivery", "fail",
                                   f"not in the INBOX after {DELIVERY_SECONDS:.0f} s",
                                   "see `postqueue -p` and `journalctl -u dovecot` on the host"))
        return results
    results.append(CheckResult(name, "delivery", "ok", "LMTP to Dovecot, read back over IMAP 993"))
    ok, why = verify_dkim(raw, keys)
    results.append(CheckResult(name, "DKIM signature", "ok" if ok else "fail", why,
                               "see `journalctl -u opendkim` on the host"))
    return results


SERVICE = Service("mailflow", applies=lambda plan: plan.mail, deploy=deploy, checks=checks,
                  reads=lambda engine, plan: [_files_read(engine.config.acme.enabled),
                                              opendkim.print_keys_command(engine.config)])
