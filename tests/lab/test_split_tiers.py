"""The web tier on its own host (Debian 13, two fresh nodes): n1 has roles ["mail", "db"],
n2 ["web"]. n2 runs nginx and Roundcube (then SOGo) and talks to n1's IMAP, submission,
ManageSieve and PostgreSQL over TLS verified against n1's CA; n1 runs no web tier. A user
logs in on n2 in the browser, sends a mail that arrives DKIM-signed over IMAP on n1, and
changes the password, which n1's IMAP then takes. The ports each host opens are probed from
the lab network (a third machine): n1 only mail and SSH, n2 only HTTP(S) and SSH;
PostgreSQL on n1 is open to n2 alone."""

from __future__ import annotations

import socket
import uuid

import pytest
import tomlkit
from conftest import PASSWORD, Cli, LabNet, Node, lab_leftovers, lab_name
from webmail import ARTIFACTS, Roundcube, SOGo, browser

from mailfleet.config import load
from mailfleet.engine import mailclient
from mailfleet.lab.lab import Lab
from mailfleet.services import opendkim

# what the probes try on each host: every port a mailfleet host may listen on
PROBED = (22, 25, 80, 143, 443, 465, 587, 993, 995, 4190, 5232, 5432, 20000)
MAIL_PORTS = {22, 25, 143, 465, 587, 993, 4190}
WEB_PORTS = {22, 80, 443}


def _installed(cli: Cli, node: str, package: str) -> bool:
    return cli.ssh(node, f"dpkg-query -W -f '${{Status}}' {package} 2>/dev/null || true") \
        == "install ok installed"


def _no_changes(cli: Cli) -> None:
    again = cli.json("deploy")
    assert again["changes"] == 0, {h: r["changed"] for h, r in again["hosts"].items()}
    # the web-only host's and the database host's pyinfra facts came from their snapshots
    assert {h: r["fact_misses"] for h, r in again["hosts"].items()} == {"n1": [], "n2": []}


def _healthy(cli: Cli) -> dict:
    health = cli.json("check")
    assert health["ok"], [c for c in health["checks"] if c["status"] != "ok"]
    return health


def _open_ports(address: str) -> set[int]:
    found = set()
    for port in PROBED:
        try:
            socket.create_connection((address, port), timeout=3).close()
            found.add(port)
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Two bare Debian 13 nodes, n1 ["mail", "db"] and n2 ["web"], deployed once."""
    cli = Cli(lab_name(10), tmp_path_factory.mktemp("split") / "mailfleet.toml")
    net = None
    try:
        cli("lab", "up", "--nodes", "2", timeout=600)
        doc = tomlkit.parse(cli.config.read_text())
        doc["hosts"][0]["roles"] = ["mail", "db"]
        doc["hosts"][1]["roles"] = ["web"]
        cli.config.write_text(tomlkit.dumps(doc))
        report = cli.json("deploy")
        assert report["ok"], report
        net = LabNet(cli.lab)
        yield cli, net
    finally:
        if net:
            net.close()
        down = cli("lab", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert lab_leftovers(cli.lab) == {"namespaces": [], "processes": [], "mounts": []}


@pytest.fixture(scope="module")
def mail_node(split) -> Node:
    cli, net = split
    config = load(cli.config)
    n1 = next(h for h in config.hosts if h.name == "n1")
    domain = config.mail.domain
    record = opendkim.public_key_record(cli.ssh("n1", f"cat /etc/dkimkeys/{domain}/mail.txt"))
    return Node(cli, net, "n1", n1.ipv4, "2.4", cli.ssh("n1", "cat /etc/mailfleet/tls/ca.crt"),
                record)


@pytest.fixture(scope="module")
def chromium():
    with browser() as instance:
        yield instance


def _user(node: Node, local: str) -> str:
    address = f"{local}@{load(node.cli.config).mail.domain}"
    node.cli.account("n1", "mailbox", address, PASSWORD)
    return address


def test_each_tier_has_only_its_own_packages_and_a_second_deploy_changes_nothing(split):
    cli, _ = split
    for package in ("postfix", "dovecot-core", "postgresql"):
        assert not _installed(cli, "n2", package), f"n2 has {package}"
        assert _installed(cli, "n1", package), f"n1 lacks {package}"
    for package in ("nginx", "php-fpm", "roundcube-core"):
        assert not _installed(cli, "n1", package), f"n1 has {package}"
        assert _installed(cli, "n2", package), f"n2 lacks {package}"
    _no_changes(cli)
    # the mail host's CA is a file Roundcube names, not in Debian's trust store (SOGo's need)
    assert cli.ssh("n2", "openssl x509 -noout -subject -in /etc/mailfleet/tls/upstream/n1.crt") \
        .endswith("mailfleet local CA for n1.example.internal")
    assert cli.ssh("n2", "ls /usr/local/share/ca-certificates/mailfleet 2>&1 || true") \
        .endswith("No such file or directory")
    assert cli.json("deploy", "--limit", "n2")["changes"] == 0  # the web host alone, later
    names = {(c["host"], c["name"]) for c in _healthy(cli)["checks"]}
    assert ("n2", "IMAP on n1") in names and ("n2", "PostgreSQL on n1") in names, names
    assert ("n2", "webmail login page") in names and ("n1", "webmail login page") not in names


def test_ports_seen_from_a_third_machine_are_only_each_tiers_own(split, mail_node):
    cli, net = split
    hosts = {h.name: h.ipv4 for h in load(cli.config).hosts}  # (address: a loopback forward)
    assert net.run(_open_ports, hosts["n1"]) == MAIL_PORTS
    assert net.run(_open_ports, hosts["n2"]) == WEB_PORTS
    # PostgreSQL on n1 is n2's alone: reachable from there, with n1's certificate
    assert cli.ssh("n2", f"timeout 5 bash -c '</dev/tcp/{hosts['n1']}/5432' && echo open") == "open"


def test_roundcube_on_the_web_host_sends_dkim_signed_mail_and_changes_the_password(
        split, mail_node, chromium):
    cli, _ = split
    sender, recipient = _user(mail_node, "split-a"), _user(mail_node, "split-b")
    port = Lab(cli.lab).forward("n2", 443)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    session = Roundcube(chromium, f"https://127.0.0.1:{port}/", ARTIFACTS)
    try:
        assert session.login(sender, PASSWORD)
        session.shot("split-n2-roundcube-inbox")
        subject = f"from the web host {uuid.uuid4().hex[:6]}"
        session.send(recipient, subject, "Sent with Roundcube on n2 through n1.")
        raw = mail_node.fetch(recipient, subject, wait=60)
        assert raw, "the mail did not arrive on n1"
        ok, why = mailclient.verify_dkim(raw, {load(cli.config).mail.domain: mail_node.dkim_record})
        assert ok, why

        new = "Another-Horse-8-staple"
        session.change_password(PASSWORD, new)
        assert mail_node.imap_login(sender, new)
        assert not mail_node.imap_login(sender, PASSWORD)
    finally:
        session.close()


def test_sogo_on_the_web_host_logs_in_and_shows_a_mail(split, mail_node, chromium):
    cli, _ = split
    doc = tomlkit.parse(cli.config.read_text())
    doc.setdefault("features", tomlkit.table())["webmail"] = "sogo"
    cli.config.write_text(tomlkit.dumps(doc))
    report = cli.json("deploy")
    assert report["ok"], report
    assert not _installed(cli, "n2", "roundcube-core") and _installed(cli, "n2", "sogo")
    assert not _installed(cli, "n1", "sogo")
    assert cli.ssh("n2", "ls /usr/local/share/ca-certificates/mailfleet") == "n1.crt"
    _no_changes(cli)
    _healthy(cli)

    user = _user(mail_node, "split-sogo")
    subject = mail_node.submit(user, user)
    port = Lab(cli.lab).forward("n2", 443)
    session = SOGo(chromium, f"https://127.0.0.1:{port}/", ARTIFACTS)
    try:
        assert session.login(user, PASSWORD)
        session.wait_for_message(subject)
        session.shot("split-n2-sogo-inbox")
    finally:
        session.close()
