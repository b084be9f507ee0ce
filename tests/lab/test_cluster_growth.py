"""A single Debian 12 host grows into a three-host cluster by deploy: n1 ["mail", "db", "web"]
runs alone first (no VPN, three users, a mail in a mailbox); then n2 and n3 (["mail", "db"])
join with WireGuard and `[cluster] enabled = true`, and one deploy makes n1's database the
cluster's: every account, password and mail kept, the mailboxes homed on n1 and copied to
their replicas on n2 and n3 (doveadm sync), every host an MX signing with n1's DKIM key
whose Dovecot 2.3 proxies logins and deliveries to n1. Then, on
Debian 12's Patroni 3.0 and etcd 3.4: status, a switchover, and a mail round trip to a
mailbox homed on n2 (LMTP and IMAP proxied from n1). The webmail is SOGo: on n1, a standby
after the switchover, its logins and a password change reach the primary."""

from __future__ import annotations

import copy
import time

import pytest
import tomlkit
from clusterlab import (add_user, as_cluster, cluster_status, copied, homes, imap_login,
                        mail_host, replicas, same_dkim_key, stored_messages, subjects)
from conftest import PASSWORD, Cli, LabNet, booted_lab, lab_name
from webmail import ARTIFACTS, SOGo, browser

from mailfleet.engine import mailclient
from mailfleet.lab.lab import Lab


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """n1 deployed alone with three users and a mail, then the three of them as a cluster."""
    cli = Cli(lab_name(12), tmp_path_factory.mktemp("growth") / "mailfleet.toml")
    with booted_lab(cli, "--nodes", "3", "--release", "bookworm", "--preinstall"):
        doc = tomlkit.parse(cli.config.read_text())
        others = [copy.deepcopy(h) for h in doc["hosts"][1:]]
        del doc["hosts"][1:]
        doc["features"]["backups"] = False
        doc["features"]["webmail"] = "sogo"
        cli.config.write_text(tomlkit.dumps(doc))
        report = cli.json("deploy")
        assert report["ok"], report
        net = LabNet(cli.lab)
        try:
            address, context, server, domain = mail_host(cli)
            users = [f"grow{i}@{domain}" for i in range(3)]
            for user in users:
                add_user(cli, user)
            message = mailclient.check_message(users[0], users[1], "before",
                                               subject="before growth")
            net.run(mailclient.submit, address, 587, server, context, users[0], PASSWORD,
                    message)
            assert net.run(mailclient.fetch, address, 993, server, context, users[1],
                           PASSWORD, "before growth", delete=False, wait=60)

            doc = tomlkit.parse(cli.config.read_text())
            for host in others:
                doc["hosts"].append(host)
            as_cluster(doc, doc["hosts"][1:])
            for joining in doc["hosts"][1:]:
                joining["roles"] = ["mail", "db"]
            cli.config.write_text(tomlkit.dumps(doc))
            report = cli.json("deploy")
            assert report["ok"], report
            yield cli, net, users
        finally:
            net.close()


def test_the_single_hosts_accounts_and_mail_are_the_clusters(grown):
    cli, net, users = grown
    status = cluster_status(cli)
    assert status["ok"] and status["primary"] == "n1", status
    address, context, server, _ = mail_host(cli)
    for user in users:  # passwords kept: the hashes are the cluster's now
        assert imap_login(net, address, context, server, user), user
    assert "before growth" in net.run(subjects, address, context, server, users[1])
    # the mailboxes stay where their mail is; n2 and n3 serve them through n1 (Dovecot 2.3's
    # proxy)
    assert {homes(cli)[u] for u in users} == {"n1"}
    n2_address, n2_context, n2_server, _ = mail_host(cli, "n2")
    n3_address, n3_context, n3_server, _ = mail_host(cli, "n3")
    assert "before growth" in net.run(subjects, n2_address, n2_context, n2_server, users[1])
    assert "before growth" in net.run(subjects, n3_address, n3_context, n3_server, users[1])
    assert stored_messages(cli, "n1", users[1]) == 1
    # n2 and n3 hold their replicas: Dovecot 2.3's doveadm sync copies them there
    replica = replicas(cli)[users[1]]
    assert {replicas(cli)[u] for u in users} <= {"n2", "n3"}
    print(f"replication on Debian 12: n1's mailbox on {replica} within "
          f"{copied(cli, replica, users[1], 1):.1f} s")
    assert same_dkim_key(cli, ("n1", "n2", "n3"))  # made on n1 alone, copied to n2 and n3
    mx = {r["value"] for r in cli.json("dns", "records")["records"] if r["type"] == "MX"}
    assert mx == {f"10 {server}.", f"10 {n2_server}.", f"10 {n3_server}."}, mx
    # a delivery through n3 (LMTP proxied to n1)
    message = mailclient.check_message(users[2], users[0], "via n3", subject="through n3")
    net.run(mailclient.submit, n3_address, 587, n3_server, n3_context, users[2], PASSWORD,
            message)
    assert net.run(mailclient.fetch, address, 993, server, context, users[0], PASSWORD,
                   "through n3", delete=False, wait=60)
    assert stored_messages(cli, "n1", users[0]) >= 1
    # the standbys hold the same accounts
    for standby in ("n2", "n3"):
        found = cli.ssh(standby, "sudo -u postgres psql -X -tA -d mailfleet -c "
                                 "\"SELECT count(*) FROM mailboxes WHERE email LIKE 'grow%'\"")
        assert found == "3", (standby, found)
    health = cli.json("check")
    assert health["ok"], [c for c in health["checks"] if c["status"] == "fail"]
    again = cli.json("deploy")
    assert again["changes"] == 0, {h: r["changed"] for h, r in again["hosts"].items()}


def test_a_switchover_on_debian_12_and_a_mail_round_trip(grown):
    cli, net, users = grown
    cli("cluster", "switchover", "--to", "n2")
    status = cluster_status(cli)
    assert status["ok"] and status["primary"] == "n2", status
    assert {m["host"]: m["timeline"] for m in status["members"]}["n1"] >= 2
    address, context, server, domain = mail_host(cli)
    newcomer = f"after-switch@{domain}"
    add_user(cli, newcomer)  # written on n2, replayed on n1 before the command returned
    home = homes(cli)[newcomer]
    assert home in ("n2", "n3")  # a mail host with the fewest mailboxes
    message = mailclient.check_message(users[2], newcomer, "round", subject="round trip")
    net.run(mailclient.submit, address, 587, server, context, users[2], PASSWORD, message)
    raw = net.run(mailclient.fetch, address, 993, server, context, newcomer, PASSWORD,
                  "round trip", delete=False, wait=60)
    assert raw  # delivered on its home (LMTP proxied from n1), read through n1 (IMAP proxied)
    assert stored_messages(cli, home, newcomer) == 1
    copied(cli, replicas(cli)[newcomer], newcomer, 1)  # its replica
    # and the other way round: submitted on n2 (SMTP AUTH there) by n1's user, signed there
    n2_address, n2_context, n2_server, _ = mail_host(cli, "n2")
    back = mailclient.check_message(newcomer, users[2], "back", subject="and back")
    net.run(mailclient.submit, n2_address, 587, n2_server, n2_context, newcomer, PASSWORD, back)
    raw = net.run(mailclient.fetch, n2_address, 993, n2_server, n2_context, users[2], PASSWORD,
                  "and back", delete=False, wait=60)
    assert raw and stored_messages(cli, "n1", users[2]) >= 1
    keys = {r["name"].split("._domainkey.")[1]: r["value"]
            for r in cli.json("dns", "records")["records"]
            if r["type"] == "TXT" and "._domainkey." in r["name"]}
    assert mailclient.verify_dkim(raw, keys)[0]  # n2's signature, the published key


def test_sogo_on_a_standby_member_writes_on_the_primary(grown):
    cli, net, users = grown
    address, context, server, _ = mail_host(cli)
    user, new = users[1], "Another-Horse-8-staple"

    def stored(host: str) -> str:
        return cli.ssh(host, "sudo -u postgres psql -X -tA -d mailfleet -c "
                             f"\"SELECT password FROM mailboxes WHERE email = '{user}'\"")

    def sogo_started() -> str:
        return cli.ssh("n1", "systemctl show -P ExecMainStartTimestampMonotonic sogo")

    started = sogo_started()
    cli("cluster", "switchover", "--to", "n3")  # n1 (SOGo, the mail) is a standby
    # the new primary restarted SOGo (mailfleet-sogo-reconnect watches the leader key): its
    # pooled connections to the old primary died with its restart. The page is back soon.
    page = (f"curl -sk -o /dev/null -w '%{{http_code}}' --resolve {server}:443:127.0.0.1 "
            f"https://{server}/SOGo/")
    deadline = time.monotonic() + 60
    while (restarted := sogo_started()) == started or cli.ssh("n1", page) != "200":
        assert time.monotonic() < deadline, "SOGo was not restarted after the switchover"
        time.sleep(1)
    before = stored("n3")
    port = Lab(cli.lab).forward("n1", 443)
    with browser() as chromium:
        session = SOGo(chromium, f"https://127.0.0.1:{port}/", ARTIFACTS)
        try:
            assert session.login(user, PASSWORD)  # its session is written on n3
            session.wait_for_message("before growth")
            session.shot("cluster-n1-standby-sogo")
            assert session.change_password(user, PASSWORD, new) in (200, 204)
        finally:
            session.close()
    assert stored("n3") != before  # the primary took the change
    deadline = time.monotonic() + 30  # n1 replays it (SOGo does not wait for the standbys)
    while not imap_login(net, address, context, server, user, new):
        assert time.monotonic() < deadline, "the new password does not work on n1"
        time.sleep(1)
    assert not imap_login(net, address, context, server, user)
    time.sleep(12)  # more than two of Patroni's loops: the leader key's renewals restart nothing
    assert sogo_started() == restarted
