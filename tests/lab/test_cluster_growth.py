"""A single Debian 12 host grows into a three-host cluster by deploy: n1 ["mail", "db", "web"]
runs alone first (no VPN, three users, a mail in a mailbox); then n2 and n3 (["db"]) join
with WireGuard and `[cluster] enabled = true`, and one deploy makes n1's database the
cluster's: every account, password and mail kept. Then, on Debian 12's Patroni 3.0 and
etcd 3.4: status, a switchover, and a mail round trip through the new primary's accounts."""

from __future__ import annotations

import copy

import pytest
import tomlkit
from clusterlab import add_user, as_cluster, cluster_status, imap_login, mail_host, subjects
from conftest import PASSWORD, Cli, LabNet, booted_lab, lab_name

from mailfleet.engine import mailclient


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """n1 deployed alone with three users and a mail, then the three of them as a cluster."""
    cli = Cli(lab_name(12), tmp_path_factory.mktemp("growth") / "mailfleet.toml")
    with booted_lab(cli, "--nodes", "3", "--release", "bookworm", "--preinstall"):
        doc = tomlkit.parse(cli.config.read_text())
        others = [copy.deepcopy(h) for h in doc["hosts"][1:]]
        del doc["hosts"][1:]
        doc["features"]["backups"] = False
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
    message = mailclient.check_message(users[2], newcomer, "round", subject="round trip")
    net.run(mailclient.submit, address, 587, server, context, users[2], PASSWORD, message)
    assert net.run(mailclient.fetch, address, 993, server, context, newcomer, PASSWORD,
                   "round trip", delete=False, wait=60)
