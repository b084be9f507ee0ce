"""The mail client side: what a user's program does, against a host's mail ports.

TLS handshakes the way each protocol starts TLS, SMTP submission with AUTH, IMAP fetch,
DKIM verification against given keys. `address` is a lab address or the private Unix
socket of an SSH tunnel's end (engine/tunnel.py), while certificates are verified for
the server's real name. Used by `mailfleet check` (services/mailflow.py), the demo and the
lab tests; it talks to hosts only, so it knows no service or CLI code.
"""

from __future__ import annotations

import email.utils
import imaplib
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.message import EmailMessage

import dkim

TIMEOUT = 20.0
DELIVERY_SECONDS = 30.0


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
