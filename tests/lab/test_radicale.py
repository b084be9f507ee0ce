"""Radicale on both lab hosts (Radicale 3.1 on Debian 12, 3.5 on Debian 13), enabled through
mailfleet.toml for this module only and reached like a phone reaches it: HTTPS through nginx, the mail address and
mail password as login, with the `caldav` client package. Password guessing from another lab
host gets that host banned by fail2ban, and nginx answers 429 past its burst."""

from __future__ import annotations

import base64
import json
import uuid

import caldav
import pytest
from caldav.lib import error as dav_error
from conftest import EVENT, NODES, PASSWORD, Cli, LabSettings, Node

from mailfleet.lab.lab import Lab


@pytest.fixture(scope="module")
def radicale_on(lab_settings: LabSettings) -> Cli:
    """Radicale on for this module (with Roundcube, its default webmail); off again after."""
    lab_settings.set(features={"webmail": "roundcube", "radicale": True})
    assert lab_settings.cli.json("deploy")["changes"] == 0
    return lab_settings.cli


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


OTHER = {"n1": "n2", "n2": "n1"}  # the lab host that plays the attacker

# wrong CalDAV logins, one connection each, as a password-guessing client sends them: a
# burst of 6 at once (one past maxretry), then a new connection every half second until one
# cannot be made (the ban). One after the other they would take over a minute: Dovecot delays
# repeated failures (all from this host's own address) up to 15 s each. It also sends
# X-Forwarded-For naming the lab's own address, which must not hide the real one.
GUESS = """
import base64, http.client, socket, ssl, threading, time
ctx = ssl._create_unverified_context()
start = time.monotonic()
def guess(i):
    auth = 'Basic ' + base64.b64encode(b'{user}:wrong-%d' % i).decode()
    headers = {{'Authorization': auth, 'Depth': '0', 'X-Forwarded-For': '10.77.0.1'}}
    c = http.client.HTTPSConnection('{address}', 443, timeout=60, context=ctx)
    try:
        c.sock = ctx.wrap_socket(socket.create_connection(('{address}', 443), timeout=5))
        c.sock.settimeout(60)
        c.request('PROPFIND', '/radicale/', headers=headers)
        status = c.getresponse().status
    except OSError as e:  # the ban came while this request was under way
        status = type(e).__name__
    c.close()
    print('answer', status, round(time.monotonic() - start, 1), flush=True)
burst = [threading.Thread(target=guess, args=(i,)) for i in range(6)]
for t in burst:
    t.start()
for t in burst:
    t.join()
while time.monotonic() - start < 90:
    try:
        socket.create_connection(('{address}', 443), timeout=5).close()
    except OSError as e:
        print('blocked', type(e).__name__, round(time.monotonic() - start, 1), flush=True)
        break
    time.sleep(0.5)
"""


def _run_python(cli: Cli, node: str, script: str) -> str:
    encoded = base64.b64encode(script.encode()).decode()
    return cli.ssh(node, f"echo {encoded} | base64 -d | python3")


def _connect(cli: Cli, source: str, address: str) -> str:
    """What a new TCP connection from `source` to `address`:443 meets."""
    out = cli.ssh(source, f"timeout 5 bash -c 'echo > /dev/tcp/{address}/443' 2>&1 "
                          "&& echo open || echo timeout")
    return "refused" if "refused" in out else out.splitlines()[-1]


def test_password_guessing_from_another_host_gets_it_banned(node: Node, radicale_on: Cli):
    owner = node.user("cal-guess")
    attacker, attacker_address = OTHER[node.name], NODES[OTHER[node.name]][0]
    assert _connect(radicale_on, attacker, node.address) == "open"
    try:
        out = _run_python(radicale_on, attacker, GUESS.format(user=owner, address=node.address))
        answers = [l.split() for l in out.splitlines()]
        refused = [a for a in answers if a[0] == "answer"]
        assert answers[-1][0] == "blocked", f"{attacker} was never banned:\n{out}"
        # every wrong login was a 401, unless the ban cut its answer off (Radicale logs the
        # failure before it answers, and maxretry (5) of them ban)
        statuses = [a[1] for a in refused]
        assert len(statuses) == 6 and statuses.count("401") >= 4, out
        assert set(statuses) <= {"401", "ConnectionResetError", "SSLError", "TimeoutError",
                                 "RemoteDisconnected", "BrokenPipeError", "SSLEOFError"}, out
        print(f"\n{node.name}: {len(refused)} wrong logins, banned "
              f"{answers[-1][2]} s after the first one")
        # the ban, seen from the attacker with a plain new connection
        assert _connect(radicale_on, attacker, node.address) in ("refused", "timeout")
        jail = radicale_on.ssh(node.name, "fail2ban-client status radicale")
        banned = jail.rpartition("Banned IP list:")[2].split()
        assert banned == [attacker_address], jail
        # the operator (the lab's own address, in ignore) still logs in
        assert _client(node, owner, PASSWORD).principal().calendars() == []
    finally:
        radicale_on.ssh(node.name, f"fail2ban-client set radicale unbanip {attacker_address} "
                                   ">/dev/null 2>&1 || true")
    assert _connect(radicale_on, attacker, node.address) == "open"


def test_nginx_answers_429_past_the_burst(node: Node, radicale_on: Cli):
    client = OTHER[node.name]
    # 150 requests without a login over one connection (no failed login: nothing for
    # fail2ban), faster than the 10 a second that refill the burst of 100
    url = f"https://{node.address}/radicale/"
    codes = radicale_on.ssh(client, "curl -sk -X PROPFIND -H 'Depth: 0' -w '%{http_code}\\n' "
                                    + " ".join([f"-o /dev/null {url}"] * 150)).split()
    assert len(codes) == 150, codes
    assert set(codes) == {"401", "429"}, codes
    assert codes[:90] == ["401"] * 90, codes  # a client's normal sync is far below the burst
    assert codes.count("429") >= 20, codes
    # one bucket per client address: the lab's own address still gets its answer
    assert _client(node, node.user("cal-burst"), PASSWORD).principal().calendars() == []
