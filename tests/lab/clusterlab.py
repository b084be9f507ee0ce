"""What the cluster's lab tests share: the CLI's view of the cluster, a mail host's
address and TLS context, IMAP logins and the subjects in a mailbox."""

from __future__ import annotations

import base64
import email
import imaplib
import json
import shlex
import time

from conftest import PASSWORD, Cli, LabNet

from mailfleet.config import load
from mailfleet.engine import mailclient


def as_cluster(doc, hosts) -> None:
    """Make `hosts` (tables of doc["hosts"]) db-only members of a cluster over WireGuard."""
    for host in hosts:
        host["roles"] = ["db"]
    doc["features"]["wireguard"] = True
    doc["cluster"] = {"enabled": True}


def cluster_status(cli: Cli) -> dict:
    return json.loads(cli("cluster", "status", "--json", check=False).stdout)


def whole(cli: Cli, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = cluster_status(cli)
        if status["ok"] or time.monotonic() > deadline:
            return status
        time.sleep(2)


def mail_host(cli: Cli, name: str = "n1"):
    config = load(cli.config)
    host = next(h for h in config.hosts if h.name == name)
    ca = cli.ssh(name, "cat /etc/mailfleet/tls/ca.crt")
    return host.ipv4, mailclient.tls_context(ca), config.host_fqdn(host), config.mail.domain


def imap_login(net: LabNet, address: str, context, server: str, user: str,
               password: str = PASSWORD) -> bool:
    def attempt() -> bool:
        imap = mailclient.IMAP4SSLTo(address, 993, server, context)
        try:
            imap.login(user, password)
            return True
        except imaplib.IMAP4.error:
            return False
        finally:
            imap.shutdown()
    return net.run(attempt)


def add_user(cli: Cli, user: str, home: str | None = None) -> None:
    cli("user", "add", user, "--password-stdin", *(("--home", home) if home else ()),
        input=PASSWORD + "\n")


def homes(cli: Cli) -> dict[str, str | None]:
    """Every mailbox's home, as `user list` shows it."""
    return {u["email"]: u["home"] for u in cli.json("user", "list")}


def replicas(cli: Cli) -> dict[str, str | None]:
    """Every mailbox's replica, as `user list` shows it."""
    return {u["email"]: u["replica"] for u in cli.json("user", "list")}


def copied(cli: Cli, node: str, user: str, count: int, timeout: float = 180) -> float:
    """Seconds until `node` stores exactly `count` of `user`'s messages (its replica's copy
    caught up); fails after `timeout` (a pass may first wait out a copy cut short after
    replication.SYNC_TIMEOUT)."""
    started = time.monotonic()
    while (found := stored_messages(cli, node, user)) != count:
        assert time.monotonic() - started < timeout, (node, user, found, count)
        time.sleep(1)
    return time.monotonic() - started


def stored_subjects(cli: Cli, node: str, user: str) -> list[str]:
    """The subjects of `user`'s messages in INBOX in `node`'s own copy (doveadm there),
    sorted, a message stored twice listed twice."""
    out = cli.ssh(node, f"sudo doveadm fetch -u {shlex.quote(user)} hdr.subject mailbox INBOX all")
    return sorted(line.split(":", 1)[1].strip() for line in out.splitlines()
                  if line.startswith("hdr.subject:"))


def stored_messages(cli: Cli, node: str, user: str) -> int:
    """How many messages of `user` are in a Maildir on `node` (0: none, or no directory)."""
    local, _, domain = user.partition("@")
    return int(cli.ssh(node, f"find {shlex.quote(f'/var/mail/vmail/{domain}/{local}')} -type f "
                             "\\( -path '*/cur/*' -o -path '*/new/*' \\) 2>/dev/null | wc -l"))


def sieve_login(address: str, context, server: str, user: str) -> bytes:
    """ManageSieve's answer to a PLAIN login after STARTTLS (b"OK..." when it worked)."""
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())

    def answer(tls, data: bytes = b"") -> bytes:  # up to the line that ends the response
        while not any(line.startswith((b"OK", b"NO", b"BYE")) for line in data.split(b"\r\n")):
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
        return next((line for line in data.split(b"\r\n")
                     if line.startswith((b"OK", b"NO", b"BYE"))), data)

    with mailclient.tls_handshake(address, 4190, "sieve-starttls", server, context) as tls:
        answer(tls)  # the capabilities a server repeats after STARTTLS
        tls.sendall(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')
        result = answer(tls)
        tls.sendall(b"LOGOUT\r\n")
        return result


def same_dkim_key(cli: Cli, nodes: tuple[str, ...]) -> bool:
    """Every node signs with one key: the same private key file everywhere."""
    domain = load(cli.config).mail.domain
    sums = {cli.ssh(n, f"sha256sum /etc/dkimkeys/{domain}/mail.private | cut -c1-64")
            for n in nodes}
    return len(sums) == 1 and len(next(iter(sums))) == 64


def messages(address: str, context, server: str, user: str) -> list[tuple[str, bytes]]:
    """(subject, raw message) of every message in `user`'s INBOX, read over IMAP at
    `address` (a message stored twice comes twice)."""
    imap = mailclient.IMAP4SSLTo(address, 993, server, context)
    try:
        imap.login(user, PASSWORD)
        imap.select("INBOX", readonly=True)
        _, data = imap.search(None, "ALL")
        found = []
        for number in data[0].split():
            _, parts = imap.fetch(number, "(BODY.PEEK[])")
            raw = parts[0][1]
            subject = email.message_from_bytes(raw)["Subject"] or ""
            found.append((str(subject).strip(), raw))
        return found
    finally:
        imap.logout()


def subjects(address: str, context, server: str, user: str) -> set[str]:
    return {subject for subject, _ in messages(address, context, server, user)}


