"""SOGo instead of Roundcube on both lab hosts (SOGo 5.8 on Debian 12, 5.12 on Debian 13),
switched on through mailfleet.toml for this module and back off again at the end: the login page, a login
in the browser that shows the inbox, calendars with the `caldav` package, a password change
Dovecot enforces, ActiveSync, and a clean switch back to Roundcube."""

from __future__ import annotations

import base64
import html
import http.client
import json
import ssl
import uuid
from xml.etree import ElementTree

import caldav
import pytest
import tomlkit
from caldav.lib import error as dav_error
from conftest import EVENT, PASSWORD, Cli, LabSettings, Node
from webmail import ARTIFACTS, SOGo, browser

from mailfleet.lab.lab import Lab


# A title that, rendered unescaped into sogo.conf, closed its string and became a top-level
# setting: SOGo would then log in whoever a client names in x-webobjects-remote-user.
HOSTILE_TITLE = 'Bob\'s "Mail" \\ "; SOGoTrustProxyAuthentication = YES; X = "x'
DEFAULT_TITLE = "Webmail"


def _configure(settings: LabSettings, title: str, **features: object) -> dict:
    """Set these features and [web] title, and deploy (`settings` takes them back after)."""
    def web_title(doc) -> None:
        doc.setdefault("web", tomlkit.table())["title"] = title

    return settings.set(features=features, edit=web_title)


def _no_changes(cli: Cli) -> None:
    again = cli.json("deploy")
    assert again["changes"] == 0, {h: r["changed"] for h, r in again["hosts"].items()}


@pytest.fixture(scope="module")
def sogo_on(lab_settings: LabSettings) -> Cli:
    """SOGo, under a title written to break out of its config file (every test here runs
    with it); the last test switches back to Roundcube. mailfleet.toml goes back to what it
    was when the module ends (`lab_settings`), and the next module's deploy takes the hosts
    back even if that last test failed."""
    _configure(lab_settings, HOSTILE_TITLE, webmail="sogo", radicale=False, activesync=True)
    _no_changes(lab_settings.cli)
    return lab_settings.cli


@pytest.fixture(scope="module")
def chromium():
    with browser() as instance:
        yield instance


def _url(node: Node) -> str:
    return f"https://127.0.0.1:{Lab(node.cli.lab).forward(node.name, 443)}"


def _request(node: Node, method: str, path: str, user: str | None = None,
             password: str = PASSWORD) -> http.client.HTTPResponse:
    port = Lab(node.cli.lab).forward(node.name, 443)
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30,
                                             context=ssl._create_unverified_context())
    headers = {"Host": node.fqdn}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()
    connection.request(method, path, headers=headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_sogo_replaces_roundcube_and_check_covers_it(sogo_on: Cli):
    for name in ("n1", "n2"):
        left = sogo_on.ssh(name, "dpkg-query -W -f='${Package} ${Status}\\n' roundcube-core "
                                 "'php*-fpm' radicale 2>/dev/null | grep ' installed' || true")
        assert left == "", left
        assert "sogo-auth" in sogo_on.ssh(name, "fail2ban-client status")
        # SOGo's config holds a database password: not for other users to read
        assert sogo_on.ssh(name, "stat -c '%a %U %G' /etc/sogo/sogo.conf") == "640 root sogo"
    health = json.loads(sogo_on("check", "--json", check=False).stdout)
    assert health["ok"], [c for c in health["checks"] if c["status"] != "ok"]
    for name in ("n1", "n2"):
        mine = {c["name"]: c for c in health["checks"] if c["host"] == name}
        assert mine["webmail login page"]["message"].startswith("SOGo at https://")
        assert mine["sogo running"]["status"] == mine["memcached running"]["status"] == "ok"
        assert mine["database role mailfleet_sogo"]["status"] == "ok"


def test_user_logs_in_in_the_browser_and_sees_the_inbox(node: Node, sogo_on: Cli, chromium):
    reader, writer = node.user("sogo-reader"), node.user("sogo-writer")
    subject = node.submit(writer, reader, subject=f"for SOGo {uuid.uuid4().hex[:6]}")
    assert node.fetch(reader, subject)  # delivered before the browser looks

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    session = SOGo(chromium, _url(node), ARTIFACTS)
    try:
        assert session.login(reader, PASSWORD)
        session.wait_for_message(subject)
        shot = session.shot(f"{node.name}-sogo-inbox")
        assert shot.stat().st_size > 10_000
    finally:
        session.close()

    before = _failures_matched(node)
    refused = SOGo(chromium, _url(node), ARTIFACTS)
    try:
        assert not refused.login(reader, "not-the-password-at-all")
    finally:
        refused.close()
    # fail2ban's sogo-auth filter counts it, under the client's address (the lab's gateway
    # here), not nginx's 127.0.0.1, which fail2ban never bans
    assert _failures_matched(node) == before + 1
    line = node.cli.ssh(node.name, f"grep \"for user '{reader}' might not have worked\" "
                                   "/var/log/sogo/sogo.log | tail -n 1")
    assert "Login from '10.77.0.1'" in line, line


def _failures_matched(node: Node) -> int:
    out = node.cli.ssh(node.name, "fail2ban-regex /var/log/sogo/sogo.log sogo-auth | "
                                  "grep -o '[0-9]* matched'")
    return int(out.split()[0])


def _dav(node: Node, user: str, password: str = PASSWORD) -> caldav.DAVClient:
    return caldav.DAVClient(url=f"{_url(node)}/SOGo/dav/{user}/", username=user,
                            password=password, ssl_verify_cert=False)


def test_caldav_client_creates_and_reads_back_an_event(node: Node, sogo_on: Cli):
    owner, other = node.user("sogo-cal"), node.user("sogo-cal-other")
    calendar = _dav(node, owner).principal().calendars()[0]
    summary = f"Review {uuid.uuid4().hex[:6]}"
    calendar.save_event(EVENT.format(uid=uuid.uuid4(), summary=summary))
    found = [e.data for e in calendar.events()]
    assert len(found) == 1 and summary in found[0]

    # another account cannot read it (SOGo answers 404, not even admitting it exists); a
    # wrong password gets nothing
    with pytest.raises((dav_error.NotFoundError, dav_error.AuthorizationError)):
        _dav(node, other).calendar(url=calendar.url).events()
    with pytest.raises(dav_error.AuthorizationError):
        _dav(node, owner, "wrong-password-here").principal()
    # clients that start from the host name find the DAV root
    assert _request(node, "GET", "/.well-known/caldav").getheader("Location") == "/SOGo/dav/"


def test_password_changed_in_sogo_is_the_one_dovecot_checks(node: Node, sogo_on: Cli,
                                                            chromium):
    user = node.user("sogo-pw")
    new = "Another-Horse-8-staple"
    session = SOGo(chromium, _url(node), ARTIFACTS)
    try:
        assert session.login(user, PASSWORD)
        # shorter than [mail] min_password_length: refused by SOGo's policy
        assert session.change_password(user, PASSWORD, "short-7") == 403
        assert node.imap_login(user, PASSWORD)
        assert session.change_password(user, PASSWORD, new) in (200, 204)
    finally:
        session.close()
    assert node.imap_login(user, new)
    assert not node.imap_login(user, PASSWORD)
    stored = node.cli.ssh(node.name, "runuser -u postgres -- psql -d mailfleet -tAc "
                                     f"\"SELECT password FROM mailboxes WHERE email = '{user}'\"")
    assert stored.lower().startswith("{argon2id}$argon2id$"), stored


def test_activesync_answers_phones(node: Node, sogo_on: Cli):
    user = node.user("sogo-phone")
    hello = _request(node, "OPTIONS", "/Microsoft-Server-ActiveSync", user)
    assert hello.status == 200
    assert "14.1" in (hello.getheader("MS-ASProtocolVersions") or "")
    assert _request(node, "OPTIONS", "/Microsoft-Server-ActiveSync", user,
                    "wrong-password").status == 401


def _get(node: Node, path: str, headers: dict[str, str]) -> tuple[int, str]:
    port = Lab(node.cli.lab).forward(node.name, 443)
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=60,
                                             context=ssl._create_unverified_context())
    connection.request("GET", path, headers={"Host": node.fqdn, **headers})
    response = connection.getresponse()
    body = response.read().decode(errors="replace")
    connection.close()
    return response.status, body


def test_a_hostile_title_stays_a_title_and_no_header_logs_anyone_in(node: Node, sogo_on: Cli):
    conf = node.cli.ssh(node.name, "grep -E '^ *(SOGoPageTitle|SOGoTrustProxyAuthentication) ' "
                                   "/etc/sogo/sogo.conf")
    assert [line.strip() for line in conf.splitlines()] == [
        'SOGoPageTitle = "Bob\'s \\"Mail\\" \\\\ \\"; SOGoTrustProxyAuthentication = YES; X = \\"x";',
        "SOGoTrustProxyAuthentication = NO;"], conf
    # SOGo read it as one string: its login page shows the title as written
    status, page = _get(node, "/SOGo/", {})
    assert status == 200 and HOSTILE_TITLE in html.unescape(page), page[:2000]
    # Thunderbird's autoconfig, XML, names the provider with the same title
    status, xml = _get(node, "/.well-known/autoconfig/mail/config-v1.1.xml", {})
    shown = ElementTree.fromstring(xml.encode()).find("emailProvider/displayName").text
    assert status == 200 and shown == f"{HOSTILE_TITLE} (example.internal)", shown
    # a client naming a user in SOGo's proxy headers gets no session: SOGo answers that user's
    # mail view with its login page (the MainUI app, 200), not the mail app with the user in it
    user = node.user("sogo-victim")
    for header in ("x-webobjects-remote-user", "X-WebObjects-Remote-User"):
        status, page = _get(node, f"/SOGo/so/{user}/Mail/view",
                            {header: user, "x-webobjects-auth-type": "Basic"})
        assert 'ng-app="SOGo.MainUI"' in page and "SOGo.MailerUI" not in page, (header, page[:2000])
        assert user not in page, (header, status, page[:2000])


def test_switching_back_to_roundcube_removes_sogo(sogo_on: Cli, lab_settings: LabSettings):
    _configure(lab_settings, DEFAULT_TITLE, webmail="roundcube", activesync=False)
    for name in ("n1", "n2"):
        left = sogo_on.ssh(name, "dpkg-query -W -f='${Package} ${Status}\\n' 'sogo*' "
                                 "memcached 2>/dev/null | grep ' installed' || true")
        assert left == "", left
        assert sogo_on.ssh(name, "ls /etc/sogo 2>&1 || true").endswith("No such file or directory")
        assert "sogo-auth" not in sogo_on.ssh(name, "fail2ban-client status")
        # the users' calendars and contacts stay until dropped by hand
        assert sogo_on.ssh(name, "runuser -u postgres -- psql -tAc \"SELECT 1 FROM pg_database "
                                 "WHERE datname = 'sogo'\"") == "1"
        page = sogo_on.ssh(name, "curl -sk --resolve "
                                 f"{name}.example.internal:443:127.0.0.1 https://{name}.example.internal/")
        assert "rcmloginuser" in page
    _no_changes(sogo_on)
