"""Webmail and the web server on both lab hosts (Debian 12 and 13): Roundcube in a real
browser through a loopback forward (log in, send, a Sieve filter that delivery applies, a
password change Dovecot then enforces), mail client autoconfiguration, MTA-STS, and what
nginx must never serve."""

from __future__ import annotations

import http.client
import shlex
import socket
import uuid
import xml.etree.ElementTree as ET

import pytest

from mailfleet.lab.lab import Lab
from conftest import DOMAIN, PASSWORD, Node
from webmail import ARTIFACTS, Roundcube, browser


@pytest.fixture(scope="module")
def chromium():
    with browser() as instance:
        yield instance


@pytest.fixture
def webmail(node: Node, chromium, request):
    """Open a Roundcube session on `node` through a loopback forward to its port 443."""
    port = Lab(node.cli.lab).forward(node.name, 443)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sessions: list[Roundcube] = []

    def open_session() -> Roundcube:
        session = Roundcube(chromium, f"https://127.0.0.1:{port}/", ARTIFACTS)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        session.close()


def test_log_in_send_and_see_it_in_the_other_inbox(node: Node, webmail):
    sender, recipient = node.user("web-a"), node.user("web-b")
    subject = f"from the browser {uuid.uuid4().hex[:6]}"
    alice = webmail()
    assert alice.login(sender, PASSWORD)
    alice.shot(f"{node.name}-sender-inbox")
    alice.send(recipient, subject, "Sent with Roundcube in headless Chromium.")

    bob = webmail()
    assert bob.login(recipient, PASSWORD)
    assert subject in bob.inbox_subjects()
    shot = bob.shot(f"{node.name}-recipient-inbox")
    assert shot.stat().st_size > 10_000
    # and it is a real mail: DKIM-signed by the host, readable over IMAP
    raw = node.fetch(recipient, subject)
    assert raw and b"DKIM-Signature:" in raw and f"X-Sender: {sender}".encode() in raw


def _roundcube_failures_matched(node: Node) -> int:
    """How many journal lines fail2ban's roundcube-auth filter matches on the host."""
    out = node.cli.ssh(node.name, "fail2ban-regex systemd-journal roundcube-auth | "
                                  "grep -o '[0-9]* matched'")
    return int(out.split()[0])


def test_wrong_password_is_refused_and_counted_by_fail2ban(node: Node, webmail):
    user = node.user("web-wrong")
    assert "roundcube-auth" in node.cli.ssh(node.name, "fail2ban-client status")
    before = _roundcube_failures_matched(node)
    session = webmail()
    assert not session.login(user, "not-the-password-at-all")
    assert session.page.get_by_text("Login failed").is_visible()
    # the jail's filter recognises Roundcube's real log lines for this failure
    assert _roundcube_failures_matched(node) > before


def test_a_filter_made_in_settings_applies_at_delivery(node: Node, webmail):
    owner, stranger = node.user("web-filter"), node.user("web-carol")
    folder = "From Carol"
    node.create_folder(owner, folder)
    session = webmail()
    assert session.login(owner, PASSWORD)
    session.add_filter(f"carol {uuid.uuid4().hex[:4]}", stranger, folder)
    session.shot(f"{node.name}-filters")

    subject = node.submit(stranger, owner)
    assert node.fetch(owner, subject, mailbox=folder), "the filter did not file the mail"
    assert node.fetch(owner, subject, wait=1) is None, "the mail is in the inbox as well"
    other = node.submit(node.user("web-dave"), owner)
    assert node.fetch(owner, other), "mail from others must stay in the inbox"


def test_password_change_in_settings_is_what_imap_accepts(node: Node, webmail):
    user = node.user("web-pass")
    session = webmail()
    assert session.login(user, PASSWORD)
    # too short for mail.min_password_length (12): refused, nothing changed
    session.page.goto(session.url + "?_task=settings&_action=plugin.password")
    session.page.fill("#curpasswd", PASSWORD)
    session.page.fill("#newpasswd", "Short-1x")
    session.page.fill("#confpasswd", "Short-1x")
    session.page.click("button.submit")
    session.page.locator("#messagestack").get_by_text("at least 12 characters").wait_for()
    assert node.imap_login(user, PASSWORD)

    new = "Fresh-Webmail-Pass-93"
    session.change_password(PASSWORD, new)
    assert node.imap_login(user, new)
    assert not node.imap_login(user, PASSWORD)
    hashed = node.cli.ssh(node.name, "runuser -u postgres -- psql -tA -d mailfleet -c "
                                     f"\"SELECT password FROM mailboxes WHERE email = '{user}'\"")
    assert hashed.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$"), hashed



def _as_role(node: Node, role: str, sql: str) -> str:
    """`sql` run on the node the way the webmail runs it: as `role`, with its password."""
    return node.cli.ssh(node.name, f"PGPASSWORD=$(cat /etc/mailfleet/secrets/postgres-{role}) "
                                   f"psql -X -tA -h 127.0.0.1 -U {role} -d mailfleet "
                                   f"-c {shlex.quote(sql)} 2>&1 || true")


def test_webmail_roles_change_only_active_user_passwords_and_leave_a_trace(node: Node):
    """What a stolen webmail database password can do (finding 9): no direct write to the
    mailboxes table; through webmail_set_password only an ARGON2ID hash, only of an active
    user mailbox, at most 3 times an hour per mailbox, each change recorded."""
    victim, target = node.user("role-victim"), node.user("role-target")
    health = node.cli.ssh(node.name, "runuser -u postgres -- psql -tA -d mailfleet -c "
                                     "'SELECT email FROM mailboxes WHERE system LIMIT 1'")
    assert health, "the deploy makes a system mailbox"
    weak = "{PLAIN}taken-over"
    good = ("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdG5ld3NhbHQ$"
            "bmV3aGFzaG5ld2hhc2huZXdoYXNobmV3aGFzaG5ld2g")
    for role in ("mailfleet_password", "mailfleet_sogo"):
        # the table itself: no write, whatever the row
        answer = _as_role(node, role, f"UPDATE mailboxes SET password = '{weak}' "
                                      f"WHERE email = '{victim}'")
        assert "permission denied" in answer, (role, answer)
    # the function: a hash Dovecot would take as cleartext is refused
    answer = _as_role(node, "mailfleet_password",
                      f"SELECT webmail_set_password('{victim}', '{weak}')")
    assert "only {ARGON2ID} hashes" in answer, answer
    # the health-check mailbox is no webmail user's, through the function or SOGo's view
    answer = _as_role(node, "mailfleet_password",
                      f"SELECT webmail_set_password('{health}', '{good}')")
    assert "no active user mailbox" in answer, answer
    assert node.imap_login(victim, PASSWORD)
    # SOGo's way in: its view, now behind the same function
    answer = _as_role(node, "mailfleet_sogo", f"UPDATE sogo_users SET c_password = '{weak}' "
                                              f"WHERE c_uid = '{victim}'")
    assert "only {ARGON2ID} hashes" in answer, answer
    assert node.imap_login(victim, PASSWORD)
    # a real change: three an hour per mailbox, the fourth refused
    for attempt in range(3):
        answer = _as_role(node, "mailfleet_password",
                          f"SELECT webmail_set_password('{target}', '{good}')")
        assert answer == "t", (attempt, answer)
    answer = _as_role(node, "mailfleet_password",
                      f"SELECT webmail_set_password('{target}', '{good}')")
    assert "3 times in the last hour" in answer, answer
    log = node.cli.ssh(node.name, "runuser -u postgres -- psql -tA -d mailfleet -c "
                                  "\"SELECT email || ' ' || changed_by FROM password_changes "
                                  f"WHERE email IN ('{victim}', '{target}')\"")
    assert log.splitlines() == [f"{target} mailfleet_password"] * 3, log


# -- the web server itself, as clients and strangers see it -----------------------------

def _https(node: Node, name: str, path: str, method: str = "GET",
           body: str | None = None) -> http.client.HTTPResponse:
    """A request to the node by `name` (SNI and Host), its certificate checked against the
    host's CA for that name: the certificate must cover every web name."""
    def request():
        sock = node.context().wrap_socket(socket.create_connection((node.address, 443), 20),
                                          server_hostname=name)
        conn = http.client.HTTPConnection(name, 443, timeout=20)
        conn.sock = sock
        conn.request(method, path, body=body, headers={"Host": name})
        response = conn.getresponse()
        response.data = response.read()
        conn.close()
        return response

    return node.run(request)


def test_thunderbird_finds_its_settings_for_a_user(node: Node):
    # Thunderbird asks autoconfig.DOMAIN first, then DOMAIN/.well-known/autoconfig
    answers = [
        _https(node, f"autoconfig.{DOMAIN}", f"/mail/config-v1.1.xml?emailaddress=u%40{DOMAIN}"),
        _https(node, node.fqdn, "/.well-known/autoconfig/mail/config-v1.1.xml"),
    ]
    for answer in answers:
        assert answer.status == 200 and "xml" in answer.getheader("Content-Type")
        provider = ET.fromstring(answer.data).find("emailProvider")
        assert provider is not None and provider.get("id") == DOMAIN
        assert DOMAIN in [d.text for d in provider.findall("domain")]
        servers = {(s.get("type"), s.findtext("port"), s.findtext("socketType"))
                   for s in [*provider.findall("incomingServer"), *provider.findall("outgoingServer")]}
        assert servers == {("imap", "993", "SSL"), ("imap", "143", "STARTTLS"),
                           ("smtp", "465", "SSL"), ("smtp", "587", "STARTTLS")}
        assert {s.findtext("hostname") for s in provider.iter() if s.tag.endswith("Server")} == {node.fqdn}
        assert {s.findtext("username") for s in provider.iter() if s.tag.endswith("Server")} == {"%EMAILADDRESS%"}


def test_outlook_autodiscover_answers_its_post(node: Node):
    request = ('<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.'
               'microsoft.com/exchange/autodiscover/outlook/requestschema/2006"><Request>'
               f'<EMailAddress>u@{DOMAIN}</EMailAddress></Request></Autodiscover>')
    answer = _https(node, f"autodiscover.{DOMAIN}", "/Autodiscover/Autodiscover.xml", "POST", request)
    assert answer.status == 200, answer.status
    text = answer.data.decode()
    assert f"<Server>{node.fqdn}</Server>" in text and "<Port>993</Port>" in text
    ET.fromstring(answer.data)  # well-formed


def test_mta_sts_policy_is_served_for_the_domain(node: Node):
    answer = _https(node, f"mta-sts.{DOMAIN}", "/.well-known/mta-sts.txt")
    assert answer.status == 200 and answer.getheader("Content-Type").startswith("text/plain")
    policy = answer.data.decode()
    assert policy.startswith("version: STSv1\r\nmode: testing\r\n")
    assert f"mx: {node.fqdn}" in policy and "max_age: 604800" in policy


def test_nginx_serves_https_only_and_never_roundcube_internals(node: Node):
    def plain_http(path: str):
        conn = http.client.HTTPConnection(node.address, 80, timeout=20)
        conn.request("GET", path, headers={"Host": node.fqdn})
        response = conn.getresponse()
        response.read()
        conn.close()
        return response

    redirect = node.run(plain_http, "/?_task=mail")
    assert redirect.status == 301
    assert redirect.getheader("Location") == f"https://{node.fqdn}/?_task=mail"
    assert node.run(plain_http, "/.well-known/acme-challenge/nothing").status == 404

    page = _https(node, node.fqdn, "/")
    assert page.status == 200 and b"rcmloginuser" in page.data
    assert page.getheader("Strict-Transport-Security") == "max-age=31536000"
    assert page.getheader("X-Content-Type-Options") == "nosniff"
    assert "nginx/" not in (page.getheader("Server") or "") and not page.getheader("X-Powered-By")
    for secret in ("/plugins/password/config.inc.php", "/config/config.inc.php",
                   "/plugins/password/config.inc.php.dist", "/program/lib/Roundcube/rcube.php",
                   "/SQL/postgres.initial.sql", "/logs/errors.log", "/.htaccess",
                   "/program/js/app.js/../../../config/config.inc.php", "/installer/"):
        answer = _https(node, node.fqdn, secret)
        assert answer.status == 404, (secret, answer.status)
        assert b"db_dsnw" not in answer.data and b"password_db_dsn" not in answer.data


def test_roundcube_secrets_are_never_readable_while_a_deploy_rewrites_them(node: Node):
    """The PHP files holding database passwords are never readable beyond root:www-data: a
    watcher on the host stats them (and the new file before it replaces the old) in a loop
    while a deploy rewrites them, and sees 0640 root:www-data, or the new file for a moment
    0600 root:root (`install` creates it so, then sets owner and mode), nothing else."""
    files = "/etc/roundcube/config.inc.php* /etc/roundcube/plugins/password/config.inc.php*"
    watcher = (f"while [ ! -e /root/watch.stop ]; do stat -c '%n %a %U:%G' {files} "
               "2>/dev/null; done > /root/watch.log")
    node.cli.ssh(node.name, "rm -f /root/watch.stop /root/watch.log; "
                            "echo '// changed by hand' >> /etc/roundcube/config.inc.php; "
                            "echo '// changed by hand' >> /etc/roundcube/plugins/password/config.inc.php; "
                            f"nohup sh -c {shlex.quote(watcher)} >/dev/null 2>&1 &")
    try:
        report = node.cli.json("deploy", "--limit", node.name)
    finally:
        node.cli.ssh(node.name, "touch /root/watch.stop; sleep 1")
    assert report["ok"], report
    seen = node.cli.ssh(node.name, "sort /root/watch.log | uniq -c; rm -f /root/watch.*")
    modes = {" ".join(line.split()[1:]) for line in seen.splitlines()}
    assert any(mode.endswith(" 640 root:www-data") for mode in modes), seen
    assert all(mode.endswith(" 640 root:www-data") or
               (mode.split()[0].endswith(".mailfleet-new") and mode.endswith(" 600 root:root"))
               for mode in modes), seen
    # the watcher ran all through the deploy; the new file lives for one shell command only
    # (`install -m 640 -o root -g www-data` from the staged copy, then `mv`), and the staged
    # copy lies in a directory only root can enter
    assert sum(int(line.split()[0]) for line in seen.splitlines()) >= 50, seen
    assert node.cli.ssh(node.name, "stat -c '%a %U' /var/lib/mailfleet/staging") == "700 root"
    assert "changed by hand" not in node.cli.ssh(node.name, "cat /etc/roundcube/config.inc.php")
