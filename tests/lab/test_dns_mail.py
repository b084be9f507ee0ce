"""DNS in the lab: two installs for two domains (a.internal on Debian 12, b.internal on Debian 13),
BIND on a third node as the lab's DNS. `dns publish` fills the zones, `dns check` finds them
correct, mail from A reaches B through B's MX with SPF, DKIM and DMARC passing, and a message
forged as A from the third node is refused by B's DMARC check. Then ACME: Pebble on the third
node issues both installs' certificates (checked through the lab DNS), every TLS port presents
them, a forced renewal reaches every service without a failed connection, and a TLS scan of
every port finds nothing below TLS 1.2 and no weak cipher."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dns.query
import dns.rcode
import dns.tsigkeyring
import dns.update
import pytest
import tomlkit

from mailfleet.config import load as load_config
from mailfleet.dns.publish import read_key
from mailfleet.engine import mailclient
from mailfleet.lab import dns as lab_dns
from mailfleet.lab.inventory import write_acme_keys
from mailfleet.lab.lab import Lab
from mailfleet.services import certs
from conftest import PASSWORD, Cli, LabNet, lab_leftovers, lab_name

LAB = lab_name(5)
ADDRESSES = {"n1": "10.77.0.11", "n2": "10.77.0.12", "n3": "10.77.0.13"}


@dataclass
class Install:
    cli: Cli
    domain: str
    node: str

    @property
    def fqdn(self) -> str:
        return f"mail.{self.domain}"

    @property
    def address(self) -> str:
        return ADDRESSES[self.node]


def _split(lab_config: Path, path: Path, domain: str, node: str) -> Cli:
    """A config of its own for one domain on one node, sharing the lab's [dns]."""
    doc = tomlkit.parse(lab_config.read_text())
    doc["mail"]["domain"] = domain
    doc["mail"]["hostname"] = f"mail.{domain}"
    doc["dns"]["dmarc_policy"] = "reject"
    hosts = tomlkit.aot()
    for host in doc["hosts"]:
        if host["name"] == node:
            hosts.append(host)
    doc["hosts"] = hosts
    path.write_text(tomlkit.dumps(doc))
    return Cli(LAB, path)


@pytest.fixture(scope="module")
def installs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dnslab")
    lab = Cli(LAB, base / "lab.toml")
    try:
        # preinstalled: the shared two-release lab (conftest) is the one that proves a
        # deploy onto bare Debian 12 and 13; here the packages are not the point
        lab("lab", "up", "--release", "bookworm", "--release", "trixie", "--release", "trixie",
            "--preinstall", timeout=900)
        served = lab("lab", "dns", "n3", "--zone", "a.internal", "--zone", "b.internal")
        # n3 also plays a stranger's mail server: it needs a client to forge with
        lab("lab", "ssh", "n3", "--", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            "--no-install-recommends python3 >/dev/null")
        assert "n3 (10.77.0.13) serves a.internal, b.internal, 0.77.10.in-addr.arpa" in served.stderr
        a = Install(_split(lab.config, base / "a.toml", "a.internal", "n1"), "a.internal", "n1")
        b = Install(_split(lab.config, base / "b.toml", "b.internal", "n2"), "b.internal", "n2")
        with ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda i: i.cli.json("deploy"), (a, b)))
        assert all(r["ok"] for r in reports), reports
        yield a, b, lab
    finally:
        down = lab("lab", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert lab_leftovers(LAB) == {"namespaces": [], "processes": [], "mounts": []}


@pytest.fixture(scope="module")
def published(installs):
    """Both domains' records published (after the first test has seen them missing)."""
    a, b, _ = installs
    before = a.cli("dns", "check", "--json", check=False)
    assert before.returncode == 1
    dry = a.cli("dns", "publish", "--dry-run", "--json")
    for install in (a, b):
        install.cli("dns", "publish")
    return installs, json.loads(before.stdout), json.loads(dry.stdout)


@pytest.fixture(scope="module")
def net(installs):
    lab_net = LabNet(LAB)
    yield lab_net
    lab_net.close()


def test_records_are_published_once_and_then_check_correct(published):
    (a, b, _), before, dry = published
    missing = {(f["kind"], f["name"]) for f in before["findings"] if f["status"] == "missing"}
    assert {("MX", "a.internal"), ("SPF", "a.internal"), ("DKIM", "mail._domainkey.a.internal"),
            ("DMARC", "_dmarc.a.internal"), ("A", "mail.a.internal")} <= missing
    # the dry run listed the changes and sent none (the real publish then sent them)
    changes = {z["zone"]: z["changes"] for z in dry["zones"]}
    assert "+ a.internal. 3600 MX 10 mail.a.internal." in changes["a.internal"]
    assert any(c.startswith("+ mail._domainkey.a.internal. 3600 TXT \"v=DKIM1;") and '" "' in c
               for c in changes["a.internal"]), "the DKIM key is split into 255-byte strings"
    assert "+ 11.0.77.10.in-addr.arpa. 3600 PTR mail.a.internal." in changes["0.77.10.in-addr.arpa"]
    for install in (a, b):
        again = install.cli("dns", "publish", "--json").stdout
        assert all(z["changes"] == [] for z in json.loads(again)["zones"]), again
        report = install.cli.json("dns", "check")
        assert report["ok"], report
        assert all(f["status"] == "ok" for f in report["findings"]), report
        assert len(report["findings"]) == 19
        # and `mailfleet check` looks DNS up too, along with the whole mail node
        health = install.cli("check", "--json", check=False)
        results = json.loads(health.stdout)["checks"]
        dns_checks = [c for c in results if c["host"] == "dns"]
        assert len(dns_checks) == 19 and all(c["status"] == "ok" for c in dns_checks)
        assert health.returncode == 0, [c for c in results if c["status"] != "ok"]


def _ca(install: Install) -> str:
    return install.cli.ssh(install.node, "cat /etc/mailfleet/tls/ca.crt")


def _add_user(install: Install, local: str) -> str:
    address = f"{local}@{install.domain}"
    install.cli("user", "add", address, "--password-stdin", input=PASSWORD + "\n")
    return address


def test_mail_from_a_reaches_b_through_its_mx_with_spf_dkim_dmarc_pass(published, net):
    (a, b, _), _, _ = published
    alice, bob = _add_user(a, "alice"), _add_user(b, "bob")
    subject = f"dns {uuid.uuid4().hex[:8]}"
    message = mailclient.check_message(alice, bob, subject, subject=subject)
    net.run(mailclient.submit, a.address, 587, a.fqdn, mailclient.tls_context(_ca(a)), alice,
            PASSWORD, message)
    raw = net.run(mailclient.fetch, b.address, 993, b.fqdn, mailclient.tls_context(_ca(b)), bob,
                  PASSWORD, subject, delete=False, wait=60)
    assert raw, "the mail did not arrive at b.internal"
    received = email.message_from_bytes(raw, policy=email.policy.default)
    results = " ".join(" ".join(str(h).split()) for h in received.get_all("Authentication-Results"))
    assert "mail.b.internal; spf=pass smtp.mailfrom=a.internal" in results, results
    assert "dkim=pass" in results and "header.d=a.internal" in results, results
    assert "dmarc=pass (p=reject dis=none) header.from=a.internal" in results, results
    # A's Postfix found B by its MX record in the lab DNS, not by a shortcut
    log = a.cli.ssh(a.node, "journalctl -u postfix* --no-pager -o cat | grep 'to=<bob@b.internal>'")
    assert "relay=mail.b.internal[10.77.0.12]:25" in log and "status=sent" in log, log


FORGE = """\
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"], m["To"], m["Subject"] = "ceo@a.internal", "{to}", "{subject}"
m.set_content("Please pay the attached invoice today.")
s = smtplib.SMTP("mail.b.internal", 25, timeout=30)
s.ehlo("n3.lab.internal")
try:
    s.send_message(m)
    print("accepted")
except smtplib.SMTPDataError as err:
    print(err.smtp_code, err.smtp_error.decode())
"""


def test_mail_forged_as_a_from_a_third_host_is_refused_by_dmarc(published, net):
    (a, b, lab), _, _ = published
    bob = f"bob@{b.domain}"
    if not b.cli("user", "list", "--json").stdout.count(bob):
        _add_user(b, "bob")
    subject = f"forged {uuid.uuid4().hex[:8]}"
    script = FORGE.format(to=bob, subject=subject)
    answer = lab("lab", "ssh", "n3", "--", "python3", "-", input=script).stdout.strip()
    assert answer == "550 5.7.1 rejected by DMARC policy for a.internal", answer
    assert net.run(mailclient.fetch, b.address, 993, b.fqdn, mailclient.tls_context(_ca(b)), bob,
                   PASSWORD, subject, delete=False, wait=3) is None


def _by_hand(install: Install, change) -> None:
    """Change zone a.internal behind mailfleet's back, as another admin would (TSIG-signed)."""
    config = tomlkit.parse(install.cli.config.read_text())
    zone = next(z for z in config["dns"]["zones"] if z["zone"] == install.domain)
    key = read_key(zone["tsig_key_file"])
    update = dns.update.UpdateMessage(
        install.domain, keyring=dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret)}),
        keyname=key.name)
    change(update)
    response = dns.query.tcp(update, "127.0.0.1", port=int(zone["port"]), timeout=10)
    assert response.rcode() == 0


def test_a_record_changed_by_hand_is_reported_then_repaired(published):
    (a, _, _), _, _ = published

    def sabotage(update):
        update.replace("_dmarc.a.internal.", 300, "TXT", '"v=DMARC1; p=none"')
        update.add("a.internal.", 300, "TXT", '"v=spf1 +all"')  # a second, dangerous SPF record
        update.add("a.internal.", 300, "TXT", '"site-verification=123"')  # someone else's

    _by_hand(a, sabotage)
    result = a.cli("dns", "check", "--json", check=False)
    assert result.returncode == 1
    findings = {(f["kind"], f["name"]): f for f in json.loads(result.stdout)["findings"]}
    dmarc = findings[("DMARC", "_dmarc.a.internal")]
    assert dmarc["status"] == "wrong" and "p=none" in dmarc["message"]
    assert "p=reject" in dmarc["fix"]
    spf = findings[("SPF", "a.internal")]
    assert spf["status"] == "wrong" and "2 SPF records" in spf["message"]

    repaired = a.cli("dns", "publish").stdout
    assert "a.internal: 3 change(s) sent" in repaired, repaired  # -DMARC +DMARC -SPF
    assert a.cli.json("dns", "check")["ok"]
    # the TXT record mailfleet does not own is still there
    txt = a.cli.ssh("n3", "dig +short @127.0.0.1 a.internal TXT")
    assert '"site-verification=123"' in txt, txt


def _with_key(install: Install, tmp_path: Path, key_text: str) -> Cli:
    key = tmp_path / f"{uuid.uuid4().hex[:6]}.key"
    key.write_text(key_text)
    doc = tomlkit.parse(install.cli.config.read_text())
    for zone in doc["dns"]["zones"]:
        zone["tsig_key_file"] = str(key)
    path = tmp_path / f"{key.stem}.toml"
    path.write_text(tomlkit.dumps(doc))
    return Cli(LAB, path)


def test_bad_or_unknown_tsig_key_changes_nothing(published, tmp_path):
    (a, _, _), _, _ = published
    garbage = _with_key(a, tmp_path, "not a key\n")
    result = garbage("dns", "publish", check=False)
    assert result.returncode == 2
    assert "is not a TSIG key file" in result.stderr and "Traceback" not in result.stderr
    assert not result.stdout.strip()

    _by_hand(a, lambda update: update.delete("_smtp._tls.a.internal.", "TXT"))
    intruder = _with_key(a, tmp_path, 'key "intruder" {\n\talgorithm hmac-sha256;\n'
                                      '\tsecret "c2VjcmV0c2VjcmV0c2VjcmV0";\n};\n')
    result = intruder("dns", "publish", check=False)
    assert result.returncode == 1, result
    assert "a.internal" in result.stderr and "Traceback" not in result.stderr
    findings = json.loads(a.cli("dns", "check", "--json", check=False).stdout)["findings"]
    (tlsrpt,) = [f for f in findings if f["kind"] == "TLS-RPT"]
    assert tlsrpt["status"] == "missing"  # the refused update changed nothing
    assert "a.internal: 1 change(s) sent" in a.cli("dns", "publish").stdout
    assert a.cli.json("dns", "check")["ok"]


def test_second_deploy_changes_nothing(installs):
    a, b, _ = installs
    for install in (a, b):
        report = install.cli.json("deploy")
        assert report["ok"] and report["changes"] == 0, report


# -- ACME: Pebble on n3 checks the names through the lab DNS ---------------------------------

PORTS = {25: "smtp-starttls", 587: "smtp-starttls", 465: "smtp-tls", 143: "imap-starttls",
         993: "imap-tls", 4190: "sieve-starttls", 443: "https"}


@pytest.fixture(scope="module")
def acme_on(published):
    """[acme] pointing at Pebble in both installs (after the DNS tests: records published)."""
    (a, b, lab), _, _ = published
    lab("lab", "acme", "n3")
    settings = tomlkit.parse(lab.config.read_text())["acme"]
    for install in (a, b):
        doc = tomlkit.parse(install.cli.config.read_text())
        doc["acme"] = settings
        install.cli.config.write_text(tomlkit.dumps(doc))
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda i: i.cli.json("deploy"), (a, b)))
    for report in reports:
        assert report["ok"], report
        assert "Obtain the ACME certificate" in next(iter(report["hosts"].values()))["changed"]
    management = Lab(LAB).forward("n3", 15000)
    context = ssl._create_unverified_context()  # Pebble's management port: a test listener
    with urllib.request.urlopen(f"https://127.0.0.1:{management}/roots/0",
                                context=context, timeout=30) as answer:
        root = answer.read().decode()
    assert "BEGIN CERTIFICATE" in root
    return a, b, root


def _handshake(install: Install, port: int, context: ssl.SSLContext) -> dict:
    """The certificate `port` presents to a client that trusts `context`'s CAs."""
    if PORTS[port] == "https":
        with socket.create_connection((install.address, port), timeout=20) as sock, \
                context.wrap_socket(sock, server_hostname=install.fqdn) as tls:
            return tls.getpeercert()
    with mailclient.tls_handshake(install.address, port, PORTS[port], install.fqdn,
                                context) as tls:
        return tls.getpeercert()


def _serials(net, install: Install, context: ssl.SSLContext) -> dict[int, str]:
    return {port: net.run(_handshake, install, port, context)["serialNumber"]
            for port in (25, 587, 993, 443)}


def test_acme_certificate_is_what_every_service_presents(acme_on, net):
    a, b, root = acme_on
    trusting_pebble = mailclient.tls_context(root)
    for install in (a, b):
        for port in PORTS:
            cert = net.run(_handshake, install, port, trusting_pebble)
            issuer = dict(item[0] for item in cert["issuer"])
            assert issuer["commonName"].startswith("Pebble Intermediate CA"), (port, issuer)
            names = {value for kind, value in cert["subjectAltName"] if kind == "DNS"}
            assert {install.fqdn, f"autoconfig.{install.domain}",
                    f"mta-sts.{install.domain}"} <= names, (port, names)
        health = json.loads(install.cli("check", "--json", check=False).stdout)
        assert health["ok"], [c for c in health["checks"] if c["status"] != "ok"]
        (tls,) = [c for c in health["checks"] if c["name"] == "TLS certificate"]
        assert "from CN=Pebble Intermediate CA" in tls["message"], tls
        (timer,) = [c for c in health["checks"] if c["name"] == "certificate renewal timer"]
        assert timer["status"] == "ok", timer
        again = install.cli.json("deploy")
        assert again["changes"] == 0, again


def test_forced_renewal_reaches_every_service_without_a_failed_connection(acme_on, net):
    a, b, root = acme_on
    context = mailclient.tls_context(root)
    for install in (a, b):
        before = _serials(net, install, context)
        assert len(set(before.values())) == 1, before
        failures: list[str] = []
        handshakes = 0
        stop = threading.Event()

        def hammer() -> None:
            nonlocal handshakes
            while not stop.is_set():
                for port in (25, 587, 993, 443):
                    try:
                        net.run(_handshake, install, port, context)
                        handshakes += 1
                    except (OSError, ssl.SSLError, ConnectionError) as err:
                        failures.append(f"{time.strftime('%H:%M:%S')} {port}: {err}")

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            # what certbot.timer runs, with its environment: forced, and without the random
            # wait of up to 8 minutes certbot adds when no one is at a terminal
            install.cli.ssh(install.node, "env $(systemctl show certbot.service -p Environment "
                                          "--value) certbot renew --force-renewal "
                                          "--no-random-sleep-on-renew -q")
            # keep connecting a while after the reloads (a slow machine makes few handshakes)
            renewed_at, deadline = handshakes, time.monotonic() + 60
            while handshakes < renewed_at + 12 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            stop.set()
            worker.join()
        if failures:  # say what the services logged meanwhile
            log = install.cli.ssh(install.node, "journalctl --since -3min --no-pager -o short-precise "
                                                "-u 'postfix*' -u dovecot -u nginx | "
                                                "grep -Evi 'connect from|disconnect from|"
                                                "Anonymous TLS|lost connection after STARTTLS' "
                                                "| tail -n 40")
            raise AssertionError(f"{failures}\n{log}")
        assert handshakes >= 12, handshakes
        after = _serials(net, install, context)
        assert len(set(after.values())) == 1 and after[25] != before[25], (before, after)


def _accepts(net, install: Install, port: int, version: ssl.TLSVersion, cipher: str) -> bool:
    """Does `port` complete a handshake with only this protocol version and cipher?"""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    context.set_ciphers(f"{cipher}:@SECLEVEL=0")
    try:
        net.run(_handshake, install, port, context)
        return True
    except (ssl.SSLError, ConnectionError, OSError):
        return False


def test_tls_scan_finds_no_old_protocol_and_no_weak_cipher(acme_on, net):
    a, b, _ = acme_on
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    tls12 = [c["name"] for c in client.get_ciphers() if c["protocol"] == "TLSv1.2"]
    legacy = [c["name"] for c in client.get_ciphers() if c["protocol"] in ("TLSv1", "SSLv3")]
    assert len(tls12) > 20 and legacy, "this machine's OpenSSL offers too few ciphers to scan"
    for install in (a, b):
        for port in PORTS:
            for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
                assert not _accepts(net, install, port, old, "ALL"), (install.fqdn, port, old)
            accepted = [c for c in tls12
                        if _accepts(net, install, port, ssl.TLSVersion.TLSv1_2, c)]
            assert accepted, (install.fqdn, port)
            # forward secret (ECDHE/DHE) and AEAD (GCM, ChaCha20-Poly1305) only
            weak = [c for c in accepted if not c.startswith(("ECDHE-", "DHE-"))
                    or not ("GCM" in c or "CHACHA20" in c)]
            assert not weak, (install.fqdn, port, weak)


def test_dns01_challenge_through_the_zone_server_replaces_the_certificate(published, acme_on,
                                                                          net):
    (_, _, lab), _, _ = published
    a, b, root = acme_on
    context = mailclient.tls_context(root)
    before = _serials(net, b, context)
    # b's host gets a key of its own for its challenge records (finding 9); n1 and n2 are
    # deployed, so the lab logs in to them as their admins
    users = {i.node: next(h["ssh_user"] for h in tomlkit.parse(i.cli.config.read_text())["hosts"])
             for i in (a, b)}
    names = certs.certificate_names(load_config(b.cli.config), b.fqdn)
    served = lab_dns.setup(Lab(LAB), "n3", [a.domain, b.domain], users, {b.node: names})
    write_acme_keys(b.cli.config, {b.node: served.acme_keys[b.node]})
    doc = tomlkit.parse(b.cli.config.read_text())
    doc["acme"]["challenge"] = "dns-01"
    doc["acme"]["dns_propagation_seconds"] = 2  # the lab's one name server has it at once
    b.cli.config.write_text(tomlkit.dumps(doc))
    report = b.cli.json("deploy")
    assert report["ok"], report
    assert "Obtain the ACME certificate" in report["hosts"][b.node]["changed"]
    renewal = b.cli.ssh(b.node, "cat /etc/letsencrypt/renewal/mailfleet.conf")
    assert "authenticator = dns-rfc2136" in renewal, renewal
    # the TSIG secret on the host is root's alone
    assert b.cli.ssh(b.node, "stat -c '%a %U' /etc/mailfleet/acme/rfc2136.ini") == "600 root"
    # the host holds its own key, not the zone's: that one stays on this machine
    zone_key = read_key(tomlkit.parse(b.cli.config.read_text())["dns"]["zones"][0]["tsig_key_file"])
    host_key = read_key(str(served.acme_keys[b.node]))
    found = b.cli.ssh(b.node, f"grep -rlsF -- '{zone_key.secret}' /etc /root /home /usr/local "
                              "/var/lib /var/backups /tmp || true")
    assert found == "", f"the zone's TSIG key is on {b.node}: {found}"
    assert host_key.secret in b.cli.ssh(b.node, "cat /etc/mailfleet/acme/rfc2136.ini")
    after = _serials(net, b, context)
    assert len(set(after.values())) == 1 and after[443] != before[443], (before, after)
    # certbot removed its challenge records again
    left = lab("lab", "ssh", "n3", "--", "dig +short @127.0.0.1 _acme-challenge.mail.b.internal TXT")
    assert left.stdout.strip() == "", left.stdout
    assert b.cli.json("deploy")["changes"] == 0
    # what that key may change: its own challenge records, nothing else
    assert _signed(b, host_key, b.domain, lambda u: u.add(f"_acme-challenge.{b.fqdn}.", 60,
                                                           "TXT", '"token"')) == "NOERROR"
    assert _signed(b, host_key, b.domain, lambda u: u.delete(f"_acme-challenge.{b.fqdn}.",
                                                              "TXT")) == "NOERROR"
    refused = {
        "A record": (b.domain, lambda u: u.replace(f"{b.fqdn}.", 60, "A", "10.77.0.99")),
        "MX": (b.domain, lambda u: u.replace(f"{b.domain}.", 60, "MX", "10 evil.test.")),
        "apex TXT": (b.domain, lambda u: u.add(f"{b.domain}.", 60, "TXT", '"v=spf1 +all"')),
        "other name's challenge": (b.domain, lambda u: u.add(f"_acme-challenge.evil.{b.domain}.",
                                                             60, "TXT", '"x"')),
        "other host's challenge": (a.domain, lambda u: u.add(f"_acme-challenge.{a.fqdn}.", 60,
                                                             "TXT", '"x"')),
    }
    for what, (zone, change) in refused.items():
        assert _signed(b, host_key, zone, change) in ("REFUSED", "NOTAUTH"), what
    assert "10.77.0.99" not in lab("lab", "ssh", "n3", "--", f"dig +short @127.0.0.1 {b.fqdn} A").stdout


def _signed(install: Install, key, zone: str, change) -> str:
    """The answer's rcode to an update of `zone` signed with `key`."""
    port = tomlkit.parse(install.cli.config.read_text())["dns"]["zones"][0]["port"]
    update = dns.update.UpdateMessage(
        zone, keyring=dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret)}),
        keyname=key.name)
    change(update)
    response = dns.query.tcp(update, "127.0.0.1", port=int(port), timeout=10)
    return dns.rcode.to_text(response.rcode())
