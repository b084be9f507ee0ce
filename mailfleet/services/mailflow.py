"""The end-to-end health check: what a user does, done by `mailfleet check`.

Through an SSH tunnel (a private Unix socket per port, see engine/tunnel.py) it talks to
every mail port as a client would (TLS handshake and certificate), submits a real message
on 587 with AUTH as mailfleet's own check mailbox, finds it over IMAP on 993 and verifies its
DKIM signature against the host's key.
The check mailbox (mailfleet-check@DOMAIN, hidden from user lists) is made by `deploy`.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import imaplib
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from email.message import EmailMessage

import dkim
from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import FileContents

from mailfleet.accounts.passwords import hash_password
from mailfleet.accounts.schema import DATABASE
from mailfleet.engine import Engine, HostContext
from mailfleet.engine.tunnel import tunnel
from mailfleet.errors import MailfleetError
from mailfleet.services import acme, certs, opendkim
from mailfleet.services.checks import CheckResult
from mailfleet.services.postgres import database_state, psql_script, sql_literal
from mailfleet.services.shape import Service

CHECK_LOCAL_PART = "mailfleet-check"
SECRET = "check-mailbox"
TIMEOUT = 20.0
DELIVERY_SECONDS = 30.0
# port -> how TLS starts there
TLS_PORTS = {25: "smtp-starttls", 587: "smtp-starttls", 465: "smtp-tls",
             143: "imap-starttls", 993: "imap-tls", 4190: "sieve-starttls"}


def check_address(domain: str) -> str:
    return f"{CHECK_LOCAL_PART}@{domain}"


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
    address = check_address(ctx.config.mail.domain)
    exists = address in database_state(ctx).system_mailboxes
    # hashing costs ~0.1 s: only when the mailbox is made or its password is new
    ctx.op(check_mailbox, name="Create the health-check mailbox", address=address,
           password_hash=hash_password(password) if fresh or not exists else "",
           exists=exists, reset=fresh)


# --- client side -------------------------------------------------------------------

def tls_context(ca_pem: str | None, partial_chain: bool = False) -> ssl.SSLContext:
    """Verifies host names and chains against `ca_pem` (else the system's CAs). With
    `partial_chain`, an intermediate CA in `ca_pem` is enough: the one certbot received with
    the host's ACME certificate (a private ACME server's root is known to nobody)."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if partial_chain:
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def open_connection(address: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to address:port, or to the Unix socket `address` when it is a path
    (a tunnel's end: a private socket, where a local TCP port would be anyone's)."""
    if not address.startswith("/"):
        return socket.create_connection((address, port), timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_until(sock: socket.socket, done: Callable[[bytes], bool]) -> bytes:
    data = b""
    while not done(data):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed after {data[-200:]!r}")
        data += chunk
    return data


def _smtp_done(data: bytes) -> bool:
    lines = data.split(b"\r\n")
    return len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" "


def tls_handshake(address: str, port: int, mode: str, server_name: str,
                  context: ssl.SSLContext) -> ssl.SSLSocket:
    """Connect to address:port (or the Unix socket `address`), start TLS the way this
    protocol does, verify the certificate for `server_name`; returns the TLS socket (caller
    closes it)."""
    sock = open_connection(address, port, TIMEOUT)
    try:
        if mode.startswith("smtp-starttls"):
            _read_until(sock, _smtp_done)
            sock.sendall(b"EHLO mailfleet-check\r\n")
            _read_until(sock, _smtp_done)
            sock.sendall(b"STARTTLS\r\n")
            reply = _read_until(sock, _smtp_done)
            if not reply.startswith(b"220"):
                raise ConnectionError(f"STARTTLS refused: {reply.strip()!r}")
        elif mode == "imap-starttls":
            _read_until(sock, lambda d: d.endswith(b"\r\n"))
            sock.sendall(b"a STARTTLS\r\n")
            reply = _read_until(sock, lambda d: b"a " in d and d.endswith(b"\r\n"))
            if b"a OK" not in reply:
                raise ConnectionError(f"STARTTLS refused: {reply.strip()!r}")
        elif mode == "sieve-starttls":
            _read_until(sock, lambda d: d.startswith(b"OK") or b"\r\nOK" in d)
            sock.sendall(b"STARTTLS\r\n")
            reply = _read_until(sock, lambda d: d.endswith(b"\r\n"))
            if not reply.startswith(b"OK"):
                raise ConnectionError(f"STARTTLS refused: {reply.strip()!r}")
        return context.wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise


class IMAP4SSLTo(imaplib.IMAP4_SSL):
    """IMAP over TLS to `address` (a tunnel's socket path or a lab address), verifying the
    certificate for the server's real name."""

    def __init__(self, address: str, port: int, server_name: str, context: ssl.SSLContext) -> None:
        self._address = address
        super().__init__(server_name, port, ssl_context=context, timeout=TIMEOUT)

    def _create_socket(self, timeout):
        sock = open_connection(self._address, self.port, timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class SMTPTo(smtplib.SMTP):
    """SMTP to a lab address or a tunnel's socket path (see open_connection)."""

    def _get_socket(self, host, port, timeout):
        return open_connection(host, port, timeout)


class SMTP_SSLTo(smtplib.SMTP_SSL):
    """SMTP in implicit TLS (465) to an address or socket path, verifying the certificate
    for the server's real name (smtplib would check it against the path)."""

    def __init__(self, server_name: str, context: ssl.SSLContext) -> None:
        self._server_name = server_name
        super().__init__(timeout=TIMEOUT, context=context)

    def _get_socket(self, host, port, timeout):
        return self.context.wrap_socket(open_connection(host, port, timeout),
                                        server_hostname=self._server_name)


def smtp_session(address: str, port: int, server_name: str, context: ssl.SSLContext,
                 implicit_tls: bool = False) -> smtplib.SMTP:
    """An SMTP session in TLS: implicit (465) or after STARTTLS (25, 587)."""
    if implicit_tls:
        smtp = SMTP_SSLTo(server_name, context)
        smtp.connect(address, port)
    else:
        smtp = SMTPTo(timeout=TIMEOUT)
        smtp.connect(address, port)
        smtp._host = server_name  # the name STARTTLS verifies the certificate against
        smtp.ehlo("mailfleet-check")
        smtp.starttls(context=context)
    smtp.ehlo("mailfleet-check")
    return smtp


def submit(address: str, port: int, server_name: str, context: ssl.SSLContext, user: str,
           password: str, message: EmailMessage, implicit_tls: bool = False) -> None:
    """Submit `message` with AUTH on 587 (STARTTLS) or 465 (implicit TLS)."""
    smtp = smtp_session(address, port, server_name, context, implicit_tls)
    try:
        smtp.login(user, password)
        smtp.send_message(message)
    finally:
        smtp.quit()


def fetch(address: str, port: int, server_name: str, context: ssl.SSLContext, user: str,
          password: str, subject: str, delete: bool = True,
          wait: float = DELIVERY_SECONDS, mailbox: str = "INBOX") -> bytes | None:
    """The raw message with this subject in the user's mailbox (waiting for delivery)."""
    imap = IMAP4SSLTo(address, port, server_name, context)
    try:
        imap.login(user, password)
        deadline = time.monotonic() + wait
        while True:
            imap.select(f'"{mailbox}"')
            _, data = imap.search(None, "SUBJECT", f'"{subject}"')
            ids = data[0].split()
            if ids:
                _, parts = imap.fetch(ids[-1], "(RFC822)")
                raw = parts[0][1]
                if delete:
                    for i in ids:
                        imap.store(i, "+FLAGS", "\\Deleted")
                    imap.expunge()
                return raw
            if time.monotonic() > deadline:
                return None
            time.sleep(0.3)
    finally:
        try:
            imap.logout()
        except Exception:
            pass


def verify_dkim(raw: bytes, records: dict[str, str | None]) -> tuple[bool, str]:
    """Verify the message's DKIM signature against the host's own keys (not DNS: the
    check must hold before the records are published)."""
    if b"DKIM-Signature:" not in raw:
        return False, "message has no DKIM-Signature"

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        selector_domain = name.rstrip(".").split("._domainkey.")
        record = records.get(selector_domain[1]) if len(selector_domain) == 2 else None
        return record.encode() if record else b""

    ok = dkim.verify(raw, dnsfunc=dnsfunc)
    return ok, "signature verifies" if ok else "signature does not verify"


def check_message(sender: str, recipient: str, token: str,
                  subject: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject or f"mailfleet check {token}"
    message["Date"] = email.utils.format_datetime(datetime.now(timezone.utc))
    message["Message-ID"] = email.utils.make_msgid("check", sender.split("@")[1])
    message.set_content(f"Sent by `mailfleet check` ({token}); deleted again once found.\n")
    return message


def checks(engine: Engine) -> list[CheckResult]:
    domain = engine.config.mail.domain
    address = check_address(domain)
    cas = engine.facts(FileContents, path=certs.CA_FILE)
    acme_on = engine.config.acme.enabled
    chains = engine.facts(FileContents, path=f"{acme.LIVE}/chain.pem") if acme_on else {}
    secrets = engine.facts(FileContents, path=f"/etc/mailfleet/secrets/{SECRET}")
    keys = opendkim.public_keys(engine)
    results: list[CheckResult] = []
    for name, settings in engine.settings.items():
        fqdn = engine.config.host_fqdn(settings)
        ca = "\n".join([*(cas.get(name) or []), *(chains.get(name) or [])]) or None
        password = (secrets.get(name) or [""])[0].strip()
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


SERVICE = Service("mailflow", applies=lambda plan: plan.mail, deploy=deploy, checks=checks)
