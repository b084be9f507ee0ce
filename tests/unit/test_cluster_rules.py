"""The cluster's config rules, plans and the deploy's decisions (pure logic; the lab test
tests/lab/test_cluster.py runs the real thing)."""

from __future__ import annotations

import base64
import subprocess
from unittest import mock

import dkim
import pytest

from mailfleet import services
from mailfleet.config import parse
from mailfleet.errors import ConfigError, DeployError
from mailfleet.dns import records as dns_records
from mailfleet.engine import mailclient
from mailfleet.accounts import schema
from mailfleet.services import (backup, cluster, fail2ban, firewall, homes, mailflow, opendkim,
                                radicale, replication, restore)
from mailfleet.services.cluster import MemberProbe
from mailfleet.services.postgres import psql_script
from mailfleet.templating import TemplateValueError, render
from test_template_escaping import NGINX

BASE = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'


def _config(members: int = 3, wireguard: bool = True, enabled: bool = True):
    hosts = "".join(
        f'[[hosts]]\nname = "n{i}"\naddress = "192.0.2.{i}"\n'
        f'roles = {["mail", "db", "web"] if i == 1 else ["db"]}\n'.replace("'", '"')
        for i in range(1, members + 1))
    return parse(f"{BASE}[features]\nwireguard = {str(wireguard).lower()}\nbackups = false\n"
                 f"[cluster]\nenabled = {str(enabled).lower()}\n{hosts}")


@pytest.mark.parametrize("members, reason", [(2, "two members cannot outvote"),
                                             (4, "an odd number of members")])
def test_a_cluster_needs_three_or_five_members(members, reason):
    with pytest.raises(ConfigError) as err:
        _config(members)
    assert "needs 3 or 5 hosts with the db role" in err.value.message
    assert reason in err.value.message


def test_a_cluster_needs_wireguard_and_the_firewall():
    with pytest.raises(ConfigError) as err:
        _config(wireguard=False)
    assert "needs features.wireguard = true" in err.value.message
    with pytest.raises(ConfigError, match="needs features.firewall = true"):
        parse(BASE + "[features]\nwireguard = true\nbackups = false\nfirewall = false\n"
              "[cluster]\nenabled = true\n")


def test_a_web_only_host_beside_a_cluster_is_refused():
    config = parse(BASE + "[features]\nwireguard = true\n"
                   "backups = false\n[cluster]\nenabled = true\n" + "".join(
                       f'[[hosts]]\nname = "n{i}"\naddress = "192.0.2.{i}"\n'
                       f'roles = ["{"web" if i == 4 else "db"}"]\n' for i in (1, 2, 3, 4)))
    with pytest.raises(ConfigError, match="a web-only host beside a cluster"):
        services.plans(config, config.hosts)


def test_sogo_on_a_member_names_every_member_and_libpq_keeps_the_primary():
    config = parse(BASE + '[features]\nwireguard = true\nbackups = false\nwebmail = "sogo"\n'
                   "[cluster]\nenabled = true\n" + "".join(
                       f'[[hosts]]\nname = "n{i}"\naddress = "192.0.2.{i}"\nroles = '
                       + ('["mail", "db", "web"]' if i == 1 else '["db"]') + "\n"
                       for i in (1, 2, 3)))
    plans = services.plans(config, config.hosts)
    assert plans["n1"].cluster_peers == ("10.8.0.2", "10.8.0.3")
    assert plans["n2"].webmail_databases == ("sogo",)  # whichever member is primary has it
    conf = render("sogo/sogo.conf.j2", fqdn="n1.example.org", db_user="u", db_password="p",
                  db_address="", db_name="sogo", remote=False,
                  server="n1.example.org", accounts_db="mailfleet", domain="example.org",
                  title="Mail", port=20000, activesync=False, min_password_length=12,
                  min_password_regex=".{12,}")
    assert 'viewURL = "postgresql://u:p@/mailfleet/sogo_users"' in conf  # (no host: PGHOST)
    override = render("sogo/service-override.conf.j2", ca_file="/c", remote=False,
                      members="127.0.0.1,10.8.0.2,10.8.0.3")
    assert "Environment=PGHOST=127.0.0.1,10.8.0.2,10.8.0.3\n" in override
    assert "Environment=PGTARGETSESSIONATTRS=read-write" in override


def test_a_cluster_backs_up_on_its_mail_member_which_archives_as_a_standby_too():
    config = parse(BASE + '[features]\nwireguard = true\n[backup]\nrepository = "/srv/r"\n'
                   "[cluster]\nenabled = true\n" + "".join(
                       f'[[hosts]]\nname = "n{i}"\naddress = "192.0.2.{i}"\nroles = '
                       + ('["mail", "db"]' if i == 1 else '["db"]') + "\n" for i in (1, 2, 3)))
    plans = services.plans(config, config.hosts)
    assert [name for name, plan in plans.items() if "backup" in plan.services] == ["n1"]
    archive = render("backup/archive.conf.j2", wal_dir="/w", mode="always")
    assert "\narchive_mode = always\n" in archive
    script = render("backup/mailfleet-backup.sh.j2", environment="", pg_dir="/p", pg_bin="/b",
                    paths=["/x"], restored_file="/r", keep_daily=1, keep_weekly=1,
                    keep_monthly=1, stamp_file="/s", home="")
    assert "--exclude-file" not in script
    # one of several mail hosts: the replicas it keeps for the others are left out
    several = render("backup/mailfleet-backup.sh.j2", environment="", pg_dir="/p", pg_bin="/b",
                     paths=["/x"], restored_file="/r", keep_daily=1, keep_weekly=1,
                     keep_monthly=1, stamp_file="/s", home="n1", vmail_dir="/var/mail/vmail",
                     database="mailfleet")
    assert "-v home=n1" in several and '--exclude-file "$exclude"' in several
    assert subprocess.run(["sh", "-n"], input=several, text=True).returncode == 0
    # the standby's backup names its first segment from backup_label and switches no WAL
    assert "pg_walfile_name(pg_current_wal_lsn())" not in script
    assert 'if [ "$standby" = f ]; then' in script.split("pg_switch_wal")[0]


def test_a_db_only_host_is_refused_outside_a_cluster():
    with pytest.raises(ConfigError) as err:
        config = _config(enabled=False)
        services.plans(config, config.hosts)
    assert "host 'n2' has roles [\"db\"]" in err.value.message


def test_members_run_etcd_and_patroni_and_open_their_ports_on_the_vpn_to_each_other():
    config = _config()
    plans = services.plans(config, config.hosts)
    assert plans["n2"].cluster == (("n1", "10.8.0.1"), ("n2", "10.8.0.2"), ("n3", "10.8.0.3"))
    for name in ("n1", "n2", "n3"):
        assert {"etcd", "patroni", "postgres"} <= set(plans[name].services)
    assert not {"postfix", "dovecot", "nginx"} & set(plans["n2"].services)
    # whichever member is primary makes n1's webmail database
    assert plans["n2"].webmail_databases == ("roundcube",)
    rules = firewall.wanted_rules(config, plans["n2"], {22}, False)
    for port in (2379, 2380, 5432, 8008):
        for peer in ("10.8.0.1", "10.8.0.3"):
            assert f"allow in on wg0 from {peer} to any port {port} proto tcp" in rules
    assert not any(r.startswith(("allow 5432", "allow 8008", "allow 2379")) for r in rules)
    packages = services.packages(plans["n2"])
    assert {"etcd-server", "patroni", "python3-etcd", "postgresql"} <= set(packages)
    assert "postfix" not in packages


def _probes(**kinds: str) -> dict[str, MemberProbe]:
    """n1..n3 with kinds: "member-primary", "member", "accounts", "fresh"."""
    return {name: MemberProbe(member=kind.startswith("member"), release="13",
                              primary=kind == "member-primary", has_pgdata=True,
                              databases=() if kind == "fresh" else ("mailfleet", "roundcube"))
            for name, kind in kinds.items()}


def test_the_first_host_with_accounts_becomes_the_cluster_and_the_others_join():
    state = cluster.decide(["n1", "n2", "n3"], _probes(n1="fresh", n2="accounts", n3="fresh"))
    assert state.source == "n2" and state.joining == ("n1", "n3") and state.bootstraps("n2")
    state = cluster.decide(["n1", "n2", "n3"], _probes(n1="fresh", n2="fresh", n3="fresh"))
    assert state.source == "n1" and state.joining == ("n2", "n3")


def test_a_formed_cluster_writes_on_its_primary_and_bootstraps_nothing():
    state = cluster.decide(["n1", "n2", "n3"],
                           _probes(n1="member", n2="member-primary", n3="fresh"))
    assert state.source == "n2" and state.joining == ("n3",)
    assert state.writes_here("n2") and not state.bootstraps("n2")


def test_a_host_with_its_own_accounts_is_never_wiped_to_join():
    with pytest.raises(DeployError) as err:
        cluster.decide(["n1", "n2", "n3"], _probes(n1="accounts", n2="accounts", n3="fresh"))
    assert "n2 holds databases of its own (mailfleet, roundcube)" in err.value.message
    # any database, not only mailfleet's; and a PostgreSQL that does not answer is no "empty"
    probes = _probes(n1="accounts", n2="fresh", n3="fresh")
    probes["n3"].databases = ("shop",)
    with pytest.raises(DeployError, match=r"n3 holds databases of its own \(shop\)"):
        cluster.decide(["n1", "n2", "n3"], probes)
    probes["n3"].databases = None
    with pytest.raises(DeployError, match="PostgreSQL on n3 does not answer"):
        cluster.decide(["n1", "n2", "n3"], probes)
    probes["n3"].has_pgdata = False  # not installed yet: nothing to lose
    assert cluster.decide(["n1", "n2", "n3"], probes).joining == ("n2", "n3")


def test_the_probe_tells_an_unanswered_postgresql_from_an_empty_one():
    silent = MemberProbe.parse("release 13\nrecovery \npgdata\n")
    assert silent.databases is None and silent.has_pgdata and not silent.has_accounts
    empty = MemberProbe.parse("release 13\nrecovery f\npgdata\ndatabases \n")
    assert empty.databases == () and empty.primary
    full = MemberProbe.parse("member\ndatabases mailfleet roundcube\netcd-member n1\n"
                             "secret cluster-rest Abcdefghijklmnop_1\n"
                             "secret cluster-replication short\n"
                             "secret postgres-mailfleet_admin a'b;c\\set-x-yyyyyyyy\n")
    assert full.has_accounts and full.etcd_members == ("n1",)
    assert full.secrets == {"cluster-rest": "Abcdefghijklmnop_1"}  # the odd ones are made anew


def test_changing_the_members_or_two_primaries_are_refused():
    probes = _probes(n1="member-primary", n2="member", n3="member")
    probes["n1"].etcd_members = ("n1", "n2", "n4")
    with pytest.raises(DeployError, match="adding, removing or renaming a member"):
        cluster.decide(["n1", "n2", "n3"], probes)
    probes["n1"].etcd_members = ("n1", "n2", "?")  # a member not started yet: no verdict
    assert cluster.decide(["n1", "n2", "n3"], probes).source == "n1"
    probes["n2"].primary = True
    with pytest.raises(DeployError, match="two primaries"):
        cluster.decide(["n1", "n2", "n3"], probes)


def test_a_cluster_without_a_primary_or_of_two_releases_is_refused():
    with pytest.raises(DeployError, match="has no primary now"):
        cluster.decide(["n1", "n2", "n3"], _probes(n1="member", n2="member", n3="member"))
    probes = _probes(n1="accounts", n2="fresh", n3="fresh")
    probes["n3"].release = "12"
    with pytest.raises(DeployError, match="different Debian releases"):
        cluster.decide(["n1", "n2", "n3"], probes)


def test_shared_secrets_come_from_the_source_first():
    probes = _probes(n1="fresh", n2="accounts", n3="fresh")
    probes["n1"].secrets = {"cluster-rest": "from-n1"}
    probes["n2"].secrets = {"cluster-rest": "from-n2", "postgres-mailfleet_admin": "admin"}
    state = cluster.decide(["n1", "n2", "n3"], probes)
    values = cluster.shared_secrets(state, probes)
    assert values["cluster-rest"] == "from-n2"
    assert values["postgres-mailfleet_admin"] == "admin"
    assert len(values["cluster-replication"]) >= 32  # made once, for all of them


def test_status_parsing_and_what_keeps_the_cluster_from_being_whole():
    primary = cluster.parse_status("n1", 'patroni {"role": "master", "state": "running", '
                                   '"timeline": 3}\nstandby n2 streaming 0 0.01\n'
                                   "standby n3 catchup 99999999 4.5\n"
                                   "etcd http://127.0.0.1:2379 is healthy: ok")
    assert (primary.role, primary.timeline, primary.etcd_healthy) == ("primary", 3, True)
    n2 = cluster.parse_status("n2", 'patroni {"role": "replica", "state": "streaming"}\n'
                              "etcd http://127.0.0.1:2379 is healthy: ok")
    n3 = cluster.MemberStatus("n3", reachable=False, role="unreachable")
    found = cluster.problems([primary, n2, n3], max_lag_bytes=1024)
    assert found == ["n3 does not answer"]
    n3 = cluster.parse_status("n3", 'patroni {"role": "replica", "state": "running"}')
    assert cluster.problems([primary, n2, n3], 1024) == ["n3 is not streaming from the "
                                                         "primary (standby, running)"]
    # mailboxes whose home and replica are both down: no mail host can serve them
    primary = cluster.parse_status("n1", 'patroni {"role": "master"}\npair n2 n3 4\n'
                                   "pair n2 n1 2\npair n3 n2 1\npair n2 5\n"
                                   "etcd x is healthy\n")
    n2 = cluster.MemberStatus("n2", reachable=False, role="unreachable")
    n3 = cluster.MemberStatus("n3", reachable=False, role="unreachable")
    assert primary.pairs == {("n2", "n3"): 4, ("n2", "n1"): 2, ("n3", "n2"): 1, ("n2", ""): 5}
    assert [p for p in cluster.problems([primary, n2, n3], 1024) if "mailbox" in p] == [
        "5 mailbox(es) homed on n2 are unavailable: they have no replica",
        "4 mailbox(es) homed on n2 are unavailable: their replica n3 is down too",
        "1 mailbox(es) homed on n3 are unavailable: their replica n2 is down too"]


def test_a_restore_onto_a_cluster_member_is_refused_before_any_host_is_asked():
    config = _config()
    with pytest.raises(ConfigError) as err:
        restore.plan(config.hosts[1], config, "n1.example.org", None, None)
    assert "n2 is a member of the accounts database's cluster" in err.value.message


def test_every_mail_member_proxies_to_the_others_on_the_vpn():
    config = parse(BASE + "[features]\nwireguard = true\n[cluster]\nenabled = true\n" + "".join(
        f'[[hosts]]\nname = "n{i}"\naddress = "192.0.2.{i}"\nroles = '
        + ('["mail", "db"]' if i < 3 else '["db"]') + "\n" for i in (1, 2, 3)))
    plans = services.plans(config, config.hosts)
    mail_cluster = (("n1", "10.8.0.1"), ("n2", "10.8.0.2"))
    assert [plans[n].mail_cluster for n in ("n1", "n2")] == [mail_cluster, mail_cluster]
    assert plans["n3"].mail_cluster == mail_cluster and "dovecot" not in plans["n3"].services
    assert "homes" in plans["n3"].services  # the primary may be a db-only member
    lmtp = [p for p in plans["n2"].ports if p.number == 24]
    assert [p.exposure for p in lmtp] == ["cluster"]
    rules = firewall.wanted_rules(config, plans["n2"], {22}, False)
    assert "allow in on wg0 from 10.8.0.1 to any port 24 proto tcp" in rules
    # the db-only member's take-over watch probes it too (it may be the primary)
    assert "allow in on wg0 from 10.8.0.3 to any port 24 proto tcp" in rules
    assert not [r for r in rules if " 24 " in r and "wg0" not in r]
    # a single host has no proxy, no port 24
    lone = parse(BASE + '[[hosts]]\nname = "n1"\naddress = "192.0.2.1"\n')
    plan = services.plans(lone, lone.hosts)["n1"]
    assert plan.mail_cluster == () and 24 not in {p.number for p in plan.ports}


# -- several mail hosts: homes, one DKIM key, equal MXs ---------------------------------

def _two_mail_hosts():
    return parse(BASE + "[features]\nwireguard = true\nbackups = false\n[cluster]\nenabled = true\n"
                 + "".join(f'[[hosts]]\nname = "n{i}"\naddress = "192.0.2.{i}"\nipv4 = "192.0.2.{i}"\n'
                           f'roles = {["mail", "db"] if i < 3 else ["db"]}\n'.replace("'", '"')
                           for i in (1, 2, 3)))


def test_the_homes_state_is_read_from_the_snapshot():
    text = ("host n1 10.8.0.1\nhost n2 10.8.0.2\nhomeless 3\nhomed n1 7\n\n"
            "check mailfleet-check-n1@example.org n1\nnoise\nhomeless x\nunreplicated 4\n")
    assert homes.HomesState.parse(text) == homes.HomesState(
        {"n1": "10.8.0.1", "n2": "10.8.0.2"}, 3, {"n1": 7}, 4,
        {"mailfleet-check-n1@example.org": "n1"})
    assert homes.HomesState.parse("") == homes.HomesState()


class _Host:
    @staticmethod
    def noop(description: str) -> None:
        pass


def _sql(op_function, **kwargs) -> str:
    """The commands a pyinfra operation function yields (its body, run outside pyinfra)."""
    with mock.patch.object(homes, "host", _Host):
        return "\n".join(str(c) for c in op_function._inner(**kwargs))


def test_homes_writes_only_what_differs_and_never_drops_a_host_still_home_to_mailboxes():
    state = homes.HomesState({"n1": "10.8.0.1", "old": "10.8.0.9", "kept": "10.8.0.8"}, 2,
                             {"kept": 3})
    sql = _sql(homes.homes, wanted={"n1": "10.8.0.1", "n2": "10.8.0.2"}, found=state,
               first="n1", stale_checks=["mailfleet-check@example.org"],
               check_mailboxes={"mailfleet-check-n2@example.org": "n2"}, password_hash="{X}y",
               schema_version=7)
    assert "VALUES ('n2', '10.8.0.2')" in sql and "VALUES ('n1'" not in sql
    assert "DELETE FROM mail_hosts WHERE name IN ('old');" in sql  # not 'kept': home to 3
    assert sql.index("DELETE FROM mail_hosts") < sql.index("INSERT INTO mail_hosts")
    assert "UPDATE mailboxes SET home = 'n1' WHERE home IS NULL;" in sql
    assert "DELETE FROM mailboxes WHERE system AND email IN ('mailfleet-check@example.org')" in sql
    assert "'mailfleet-check-n2@example.org', 'example.org'" in sql and "'n2')" in sql
    # a new mail host: the mailboxes without a replica get one, after their homes
    fill = "UPDATE mailboxes SET replica = NULL WHERE home IS NOT NULL AND replica IS NULL;"
    assert sql.index("SET home = 'n1'") < sql.index(fill)
    # all in place: nothing to do; before a migration the snapshot cannot count
    done = homes.HomesState({"n1": "10.8.0.1"}, 0, {"n1": 5})
    assert _sql(homes.homes, wanted={"n1": "10.8.0.1"}, found=done, first="n1",
                stale_checks=[], check_mailboxes={}, password_hash="", schema_version=7) == ""
    assert "UPDATE mailboxes SET home = 'n1'" in _sql(
        homes.homes, wanted={"n1": "10.8.0.1"}, found=done, first="n1", stale_checks=[],
        check_mailboxes={}, password_hash="", schema_version=5)
    pair = {"n1": "10.8.0.1", "n2": "10.8.0.2"}
    assert _sql(homes.homes, wanted=pair, found=homes.HomesState(pair, 0, {"n1": 5}),
                first="n1", stale_checks=[], check_mailboxes={}, password_hash="",
                schema_version=7) == ""
    for found, version in ((homes.HomesState(pair, 0, {"n1": 5}, 2), 7),
                           (homes.HomesState(pair, 0, {"n1": 5}), 6)):
        assert _sql(homes.homes, wanted=pair, found=found, first="n1", stale_checks=[],
                    check_mailboxes={}, password_hash="", schema_version=version) == \
            psql_script(fill + "\n", "mailfleet")
    # one mail host: no replica to give
    assert _sql(homes.homes, wanted={"n1": "10.8.0.1"},
                found=homes.HomesState({"n1": "10.8.0.1"}, 0, {"n1": 5}, 5), first="n1",
                stale_checks=[], check_mailboxes={}, password_hash="", schema_version=7) == ""


def test_a_cluster_of_mail_hosts_has_equal_mxs_and_a_check_mailbox_each():
    config = _two_mail_hosts()
    mx = [r.value for r in dns_records.generate(config, {}) if r.type == "MX"]
    assert mx == ["10 n1.example.org.", "10 n2.example.org."]
    lone = parse(BASE + '[[hosts]]\nname = "a"\naddress = "192.0.2.1"\nipv4 = "192.0.2.1"\n'
                 '[[hosts]]\nname = "b"\naddress = "192.0.2.2"\nipv4 = "192.0.2.2"\n')
    assert [r.value for r in dns_records.generate(lone, {}) if r.type == "MX"] == \
        ["10 a.example.org.", "20 b.example.org."]
    assert mailflow.check_address("example.org", "n2") == "mailfleet-check-n2@example.org"
    assert mailflow.check_address("example.org") == "mailfleet-check@example.org"


def test_the_clusters_dkim_key_is_read_back_and_its_record_matches_it():
    pem = opendkim.new_private_key()
    text = f"example.org {base64.b64encode(pem.encode()).decode()}\nexample.net !!!\nbad\n"
    assert opendkim.parse_private_keys(text) == {"example.org": pem}
    record = opendkim.public_key_record(opendkim.key_record_file(pem, "example.org", "mail"))
    assert record.startswith("v=DKIM1; h=sha256; k=rsa; p=MIIB")
    message = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    signed = dkim.sign(message, b"mail", b"example.org", pem.encode()) + message
    assert mailclient.verify_dkim(signed, {"example.org": record})[0]
    command = opendkim.print_private_keys_command(_two_mail_hosts())
    assert "base64 -w0 /etc/dkimkeys/example.org/mail.private" in command


# -- several mail hosts: replicas, take-over -------------------------------------------

def test_mail_hosts_among_several_replicate_and_every_member_watches_for_a_dead_one():
    plans = services.plans(config := _two_mail_hosts(), config.hosts)
    assert plans["n1"].replicated and plans["n2"].replicated and not plans["n3"].replicated
    assert "replication" in plans["n1"].services and "replication" not in plans["n3"].services
    assert all("takeover" in plans[n].services for n in ("n1", "n2", "n3"))
    rules = firewall.wanted_rules(config, plans["n2"], {22}, False)
    assert "allow in on wg0 from 10.8.0.1 to any port 12345 proto tcp" in rules
    assert not [r for r in rules if " 12345 " in r and "10.8.0.1" not in r]
    lone = parse(BASE + '[[hosts]]\nname = "n1"\naddress = "192.0.2.1"\n')
    plan = services.plans(lone, lone.hosts)["n1"]
    assert not plan.replicated and "takeover" not in plan.services
    assert 12345 not in {p.number for p in plan.ports}


def test_several_web_members_show_the_calendars_of_the_first_one():
    config = parse(BASE + "[features]\nwireguard = true\nbackups = false\nradicale = true\n"
                   "[cluster]\nenabled = true\n" + "".join(
                       f'[[hosts]]\nname = "n{i}"\naddress = "192.0.2.{i}"\n'
                       'roles = ["mail", "db", "web"]\n' for i in (1, 2, 3)))
    plans = services.plans(config, config.hosts)
    assert [plans[n].radicale for n in ("n1", "n2", "n3")] == [True, False, False]
    assert all(plans[n].calendars and "radicale" in plans[n].services for n in plans)
    assert [plans[n].radicale_address for n in plans] == ["127.0.0.1", "10.8.0.1", "10.8.0.1"]
    assert {plans[n].calendar_host for n in plans} == {"n1"}
    assert "radicale" in services.packages(plans["n1"])
    assert "radicale" not in services.packages(plans["n2"])
    rules = firewall.wanted_rules(config, plans["n1"], {22}, False)
    assert {r for r in rules if " 5232 " in r} == {
        f"allow in on wg0 from 10.8.0.{i} to any port 5232 proto tcp" for i in (2, 3)}
    assert not [r for r in firewall.wanted_rules(config, plans["n2"], {22}, False)
                if " 5232 " in r]
    site = render("nginx/mailfleet.conf.j2", **{
        **NGINX, "radicale_address": plans["n2"].radicale_address})
    assert "proxy_pass http://10.8.0.1:5232/;" in site
    # its failed logins are logged by nginx for the jail there (Radicale logs them on n1)
    assert f"access_log {radicale.FAILED_LOG} mailfleet_dav_failed if=$mailfleet_dav_failed;" \
        in site
    assert fail2ban.jails(plans["n2"])[-1] == "radicale-proxy"
    assert "radicale" in fail2ban.jails(plans["n1"])
    assert "radicale-proxy" not in fail2ban.jails(plans["n1"])
    # the backup of a mail host without Radicale names no calendars to save
    assert backup.paths(plans["n1"]) == [*backup.PATHS, radicale.STORAGE]
    assert backup.paths(plans["n2"]) == backup.PATHS
    # alone, Radicale listens on localhost only, as it always did
    lone = parse(BASE + '[features]\nradicale = true\n[[hosts]]\nname = "n1"\n'
                 'address = "192.0.2.1"\n')
    plan = services.plans(lone, lone.hosts)["n1"]
    assert plan.radicale and plan.radicale_address == "127.0.0.1"
    assert radicale.units(plan)[0].ports == ()


def test_the_replication_and_take_over_scripts_are_valid_bash_with_their_values():
    config = _two_mail_hosts()
    scripts = {
        "replicate": render("replication/mailfleet-replicate.sh.j2", host="n1",
                            state_dir=replication.STATE_DIR, vmail_dir="/var/mail/vmail",
                            port=12345, database="mailfleet", interval=10, full_minutes=10,
                            sync_timeout=3600, io_timeout=60, lock_timeout=60),
        "takeover": render("replication/mailfleet-takeover.sh.j2", host="n1", interval=10,
                           after=config.cluster.takeover_after, database="mailfleet",
                           lmtp_port=24, mail=True, take_over=schema.take_over_sql(":'host'"),
                           flushes=18),
    }
    for name, text in scripts.items():
        done = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
        assert done.returncode == 0, (name, done.stderr)
    assert "WHERE home = :'host' AND replica IS NOT NULL AND NOT system AND replica <> ALL" \
        in scripts["takeover"]
    # two copies of one mailbox at once would both bring over the same message: dsync's lock
    assert '-l 60 -u "$user"' in scripts["replicate"]
    assert "after=120" in scripts["takeover"] and "postqueue -f" in scripts["takeover"]
    assert "UPDATE mail_hosts SET down_since = to_timestamp" in scripts["takeover"]
    with pytest.raises(TemplateValueError):  # a host name is one word
        render("replication/mailfleet-replicate.sh.j2", host="n1; rm -rf /", state_dir="/x",
               vmail_dir="/v", port=1, database="mailfleet", interval=1, full_minutes=1,
               sync_timeout=1, io_timeout=1, lock_timeout=1)


def test_replication_status_and_its_check():
    text = "pass 1000\nreplica 10.8.0.2 0\nreplica 10.8.0.3 400\nnoise\nnow 1005\n"
    assert replication.parse_status(text) == (1000, 1005, {"10.8.0.2": 0, "10.8.0.3": 400})
    config = _two_mail_hosts()
    plans = services.plans(config, config.hosts)

    class Engine:
        def __init__(self, answers):
            self.plans, self.answers = plans, answers

        def facts(self, fact, command):
            assert command == replication.STATUS
            return self.answers

    results = {r.host: r for r in replication.checks(Engine({
        "n1": "pass 1000\nreplica 10.8.0.2 12\nnow 1010\n",
        "n2": "pass 1000\nreplica 10.8.0.1 301\nnow 1010\n",
        "n3": "",  # no mail: no check
    }))}
    assert set(results) == {"n1", "n2"}
    assert results["n1"].status == "ok" and results["n1"].message == "replicas: n2 12 s behind"
    assert results["n2"].status == "fail" and "journalctl -u mailfleet-replicate" in results["n2"].fix
    stalled = replication.checks(Engine({"n1": "pass 1000\nnow 1400\n", "n2": "now 5\n"}))
    assert [(r.status, r.message) for r in stalled] == [("fail", "last pass 400 s ago"),
                                                       ("fail", "no pass yet")]
    command = cluster.status_command("10.8.0.1", "n1")
    assert f"{{ {replication.STATUS}; }} | sed 's/^/copies /'" in command
    assert subprocess.run(["sh", "-n", "-c", command]).returncode == 0
    member = cluster.parse_status("n1", 'patroni {"role": "replica"}\n'
                                  "copies pass 100\ncopies replica 10.8.0.2 7\ncopies now 130\n")
    assert (member.replicas, member.last_pass) == ({"10.8.0.2": 7}, 30)


def test_a_firewall_comment_reaches_ufw_as_one_quoted_word():
    with mock.patch.object(firewall, "host", _Host):
        commands = list(firewall.firewall._inner(
            wanted={"allow 25/tcp": "it's; rm -rf /"}, active=True, rules=[],
            policies={"DEFAULT_INPUT_POLICY": "DROP", "DEFAULT_OUTPUT_POLICY": "ACCEPT"}))
    assert commands == ["ufw allow 25/tcp comment 'mailfleet: it'\"'\"'s; rm -rf /'"]
    # ufw refuses an apostrophe in a comment: no port's description has one
    for plan in services.plans(config := _two_mail_hosts(), config.hosts).values():
        assert not [p.what for p in plan.ports if "'" in p.what]
