"""Radicale on both lab hosts (Radicale 3.1 on Debian 12, 3.5 on Debian 13), enabled through
mailfleet.toml and reached like a phone reaches it: HTTPS through nginx, the mail address and
mail password as login, with the `caldav` client package."""

from __future__ import annotations

import json
import uuid

import caldav
import pytest
import tomlkit
from caldav.lib import error as dav_error
from conftest import PASSWORD, Cli, Node

from mailfleet.lab.lab import Lab

EVENT = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//mailfleet tests//EN
BEGIN:VEVENT
UID:{uid}
DTSTAMP:20261126T080000Z
DTSTART:20261201T090000Z
DTEND:20261201T100000Z
SUMMARY:{summary}
END:VEVENT
END:VCALENDAR
"""


@pytest.fixture(scope="module")
def radicale_on(deployed: Cli) -> Cli:
    doc = tomlkit.parse(deployed.config.read_text())
    doc["features"]["radicale"] = True
    deployed.config.write_text(tomlkit.dumps(doc))
    report = deployed.json("deploy")
    assert report["ok"], report
    assert deployed.json("deploy")["changes"] == 0
    return deployed


def _client(node: Node, user: str, password: str) -> caldav.DAVClient:
    port = Lab(node.cli.lab).forward(node.name, 443)
    return caldav.DAVClient(url=f"https://127.0.0.1:{port}/radicale/", username=user,
                            password=password, ssl_verify_cert=False)


def test_owner_creates_and_reads_an_event_others_cannot(node: Node, radicale_on: Cli):
    owner, other = node.user("cal-owner"), node.user("cal-other")
    calendar = _client(node, owner, PASSWORD).principal().make_calendar(name="Work")
    summary = f"Planning {uuid.uuid4().hex[:6]}"
    calendar.save_event(EVENT.format(uid=uuid.uuid4(), summary=summary))
    events = calendar.events()
    assert len(events) == 1 and summary in events[0].data

    with pytest.raises((dav_error.AuthorizationError, dav_error.NotFoundError,
                        dav_error.ReportError)) as refused:
        _client(node, other, PASSWORD).calendar(url=calendar.url).events()
    assert "403" in str(refused.value) or "Forbidden" in str(refused.value), refused.value
    # the other user has a home of their own, empty
    assert _client(node, other, PASSWORD).principal().calendars() == []


def test_wrong_password_and_unknown_user_are_refused(node: Node, radicale_on: Cli):
    owner = node.user("cal-wrong")
    for user, password in ((owner, "not-the-password-1"), (f"nobody@{node.fqdn}", PASSWORD)):
        with pytest.raises(dav_error.AuthorizationError) as refused:
            _client(node, user, password).principal()
        assert "401" in str(refused.value) or "Unauthorized" in str(refused.value)


def test_check_covers_radicale_and_clients_find_it(node: Node, radicale_on: Cli):
    checks = json.loads(radicale_on("check", "--json", check=False).stdout)["checks"]
    (found,) = [c for c in checks if c["host"] == node.name and c["name"].startswith("CalDAV")]
    assert found["status"] == "ok", found
    moved = radicale_on.ssh(node.name, "curl -sk -o /dev/null -w '%{http_code} %{redirect_url}' "
                                       f"--resolve {node.fqdn}:443:127.0.0.1 "
                                       f"https://{node.fqdn}/.well-known/caldav")
    assert moved == f"301 https://{node.fqdn}/radicale/", moved
