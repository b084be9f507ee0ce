"""What the cluster's lab tests share: the CLI's view of the cluster, a mail host's
address and TLS context, IMAP logins and the subjects in a mailbox."""

from __future__ import annotations

import imaplib
import json
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


def add_user(cli: Cli, user: str) -> None:
    cli("user", "add", user, "--password-stdin", input=PASSWORD + "\n")


def subjects(address: str, context, server: str, user: str) -> set[str]:
    imap = mailclient.IMAP4SSLTo(address, 993, server, context)
    try:
        imap.login(user, PASSWORD)
        imap.select("INBOX", readonly=True)
        _, data = imap.search(None, "ALL")
        found = set()
        for number in data[0].split():
            _, parts = imap.fetch(number, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            found.add(parts[0][1].decode().split(":", 1)[1].strip())
        return found
    finally:
        imap.logout()


