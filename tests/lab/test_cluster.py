"""The replicated accounts database (Debian 13, three fresh nodes): n1 ["mail", "db", "web"],
n2 ["mail", "db"], n3 ["db"], `[cluster] enabled = true` over WireGuard. One deploy forms the
cluster (etcd on the VPN, Patroni taking over n1's PostgreSQL, n2 and n3 streaming standbys);
a second changes nothing. A user added through the CLI logs in on n1 at once, whichever host
is primary. Both mail hosts are MXs with one DKIM key: a mailbox homed on n2 gets mail and
logins (IMAP, ManageSieve) through n1 (Dovecot 2.4's proxy), and its replica on n1 follows
within seconds; a mailbox moves from n1 to n2 while 50 messages arrive. The primary's node
(n2) is powered off while mail streams into n1's port 25: no message is bounced, a standby
takes over within a minute, every accepted message is in the mailbox; after
cluster.takeover_after n2's mailboxes live on their replica (n1) with their earlier mail and
the mail that waited in the queue, and n2 comes back as a standby and as their replica. n1 backs up whichever role it has, and its backup restores onto a fresh host (n4,
alone, outside the cluster)."""

from __future__ import annotations

import json
import smtplib
import threading
import time

import pytest
import tomlkit
from clusterlab import (add_user, as_cluster, cluster_status, copied, homes, imap_login,
                        mail_host, replicas, same_dkim_key, sieve_login, stored_messages,
                        stored_subjects, subjects, whole)
from conftest import PASSWORD, Cli, LabNet, booted_lab, lab_bytes, lab_name
from webmail import ARTIFACTS, Roundcube, browser

from mailfleet.config import load
from mailfleet.engine import mailclient
from mailfleet.lab.lab import Lab

FAILOVER_LIMIT = 60
TAKEOVER_AFTER = 30  # cluster.takeover_after (the default is 120)
REPOSITORY = "/var/backups/mailfleet/restic"  # on n1, the mail member


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    cli = Cli(lab_name(11), work / "mailfleet.toml")
    with booted_lab(cli, "--nodes", "4", "--preinstall"):
        doc = tomlkit.parse(cli.config.read_text())
        fresh = doc["hosts"][3]
        del doc["hosts"][3]
        as_cluster(doc, doc["hosts"][1:])
        doc["hosts"][1]["roles"] = ["mail", "db"]
        doc["cluster"]["takeover_after"] = TAKEOVER_AFTER
        doc["backup"] = {"repository": REPOSITORY, "password_file": str(work / "backup-password")}
        cli.config.write_text(tomlkit.dumps(doc))
        # the restore drill's host: n4 alone, a mail host of its own (deployed by that test)
        lone = tomlkit.parse(tomlkit.dumps(doc))
        fresh["roles"] = ["mail", "db"]
        lone["hosts"] = tomlkit.aot()
        lone["hosts"].append(fresh)
        lone["cluster"]["enabled"] = False
        lone["features"]["wireguard"] = False
        (work / "lone.toml").write_text(tomlkit.dumps(lone))
        report = cli.json("deploy")
        assert report["ok"], report
        net = LabNet(cli.lab)
        try:
            yield cli, net
        finally:
            net.close()


def test_one_deploy_forms_the_cluster_and_a_second_changes_nothing(cluster):
    cli, _ = cluster
    status = cluster_status(cli)
    assert status["ok"], status
    roles = {m["host"]: m["role"] for m in status["members"]}
    assert sorted(roles.values()) == ["primary", "standby", "standby"], roles
    primary = next(m for m in status["members"] if m["role"] == "primary")
    assert {name: s["state"] for name, s in primary["standbys"].items()} == \
        {name: "streaming" for name, role in roles.items() if role == "standby"}
    health = cli.json("check")
    assert health["ok"], [c for c in health["checks"] if c["status"] == "fail"]
    names = {(c["host"], c["name"]) for c in health["checks"]}
    assert ("n1", "accounts database cluster") in names
    assert {("n1", "etcd quorum"), ("n2", "etcd quorum"), ("n3", "etcd quorum")} <= names
    again = cli.json("deploy")
    assert again["changes"] == 0, {h: r["changed"] for h, r in again["hosts"].items()}
    assert {h: r["fact_misses"] for h, r in again["hosts"].items()} == \
        {"n1": [], "n2": [], "n3": []}
    # mailfleet set up no mail service on n3 (its preinstalled image has the packages);
    # the cluster's ports are open on the VPN only
    assert cli.ssh("n3", "ls /etc/postfix/pgsql /etc/dovecot/mailfleet-sql.conf.ext 2>&1 | "
                         "grep -c 'No such file'") == "2"
    rules = cli.ssh("n1", "sudo ufw show added")
    assert "allow in on wg0 from 10.8.0.2 to any port 2379 proto tcp" in rules, rules
    assert "allow in on wg0 from 10.8.0.2 to any port 24 proto tcp" in rules, rules
    assert "allow in on wg0 from 10.8.0.2 to any port 12345 proto tcp" in rules, rules
    assert "allow 5432" not in rules and "allow 8008" not in rules, rules
    assert "allow 24" not in rules, rules


def test_every_mail_host_takes_mail_and_logins_for_a_mailbox_homed_on_another(cluster):
    cli, net = cluster
    address, context, server, domain = mail_host(cli)
    n2_address, n2_context, n2_server, _ = mail_host(cli, "n2")
    sender, roamer = f"stays@{domain}", f"roams@{domain}"
    add_user(cli, sender, home="n1")
    add_user(cli, roamer, home="n2")
    assert {homes(cli)[u] for u in (sender, roamer)} == {"n1", "n2"}
    homed = {m["host"]: m["mailboxes_homed"] for m in cluster_status(cli)["members"]}
    assert homed["n1"] >= 1 and homed["n2"] >= 1, homed
    refused = cli("user", "add", f"nowhere@{domain}", "--home", "n3", "--password-stdin",
                  input=PASSWORD + "\n", check=False)
    assert refused.returncode == 2 and "'n3' is not a mail host" in refused.stderr, refused.stderr
    net.run(mailclient.submit, address, 587, server, context, sender, PASSWORD,
            mailclient.check_message(sender, roamer, "roam", subject="to n2 through n1"))
    raw = net.run(mailclient.fetch, address, 993, server, context, roamer, PASSWORD,
                  "to n2 through n1", delete=False, wait=60)
    assert raw, "not delivered to n2 or not readable through n1"
    assert stored_messages(cli, "n2", roamer) == 1
    # n1 holds the replica: the home (n2) copies the delivery there within seconds
    assert replicas(cli)[roamer] == "n1"
    print(f"replication: a delivery on n2 reached its replica on n1 within "
          f"{copied(cli, 'n1', roamer, 1):.1f} s")
    assert net.run(sieve_login, address, context, server, roamer).startswith(b"OK")
    # SMTP AUTH at n2 for a mailbox homed on n1 (checked on n2), delivered back to n1
    net.run(mailclient.submit, n2_address, 587, n2_server, n2_context, sender, PASSWORD,
            mailclient.check_message(sender, sender, "auth", subject="submitted at n2"))
    assert net.run(mailclient.fetch, address, 993, server, context, sender, PASSWORD,
                   "submitted at n2", delete=False, wait=60)
    assert not net.run(sieve_login, n2_address, n2_context, n2_server, f"x{roamer}").startswith(b"OK")
    # one key: n1's signature verifies against the record `dns records` publishes
    assert same_dkim_key(cli, ("n1", "n2"))
    records = cli.json("dns", "records")["records"]
    keys = {r["name"].split("._domainkey.")[1]: r["value"] for r in records
            if r["type"] == "TXT" and "._domainkey." in r["name"]}
    assert mailclient.verify_dkim(raw, keys)[0]
    assert {r["value"] for r in records if r["type"] == "MX"} == {f"10 {server}.",
                                                                  f"10 {n2_server}."}
    # deleted at the home (through n1's proxy): gone from the replica too, and stays gone
    net.run(mailclient.fetch, address, 993, server, context, roamer, PASSWORD,
            "to n2 through n1", delete=True, wait=5)
    copied(cli, "n1", roamer, 0)
    time.sleep(12)  # another pass: nothing is copied back
    assert stored_messages(cli, "n1", roamer) == 0 and stored_messages(cli, "n2", roamer) == 0
    mine = {c["name"]: c for c in cli.json("check")["checks"] if c["host"] == "n2"}
    assert mine["replication"]["status"] == "ok", mine["replication"]


def test_a_mailbox_moves_to_another_mail_host_while_mail_arrives(cluster):
    cli, net = cluster
    address, context, server, domain = mail_host(cli)
    n2_address, _, _, _ = mail_host(cli, "n2")
    mover = f"mover@{domain}"
    add_user(cli, mover, home="n1")
    sent: list[str] = []

    def send() -> None:  # 50 messages into n2's port 25 while the mailbox moves
        smtp = smtplib.SMTP(n2_address, 25, timeout=60)
        smtp.ehlo("client.outside.test")
        for number in range(50):
            subject = f"moving {number:02d}"
            smtp.sendmail("someone@outside.test", [mover], f"From: someone@outside.test\r\n"
                          f"To: {mover}\r\nSubject: {subject}\r\n\r\n{subject}\r\n")
            sent.append(subject)
            time.sleep(0.1)
        smtp.quit()

    sender = threading.Thread(target=lambda: net.run(send))
    sender.start()
    try:
        time.sleep(2)
        moved = cli("user", "move", mover, "n2")
    finally:
        sender.join(300)
    assert "lives on n2 now; n1 holds its replica" in moved.stdout, moved.stdout
    assert (homes(cli)[mover], replicas(cli)[mover]) == ("n2", "n1")
    assert len(sent) == 50
    deadline = time.monotonic() + 120
    while len(stored_subjects(cli, "n2", mover)) < 50 and time.monotonic() < deadline:
        time.sleep(2)
    assert stored_subjects(cli, "n2", mover) == sorted(sent)  # all 50, none twice
    copied(cli, "n1", mover, 50)  # and the replica caught up
    assert sorted(net.run(subjects, address, context, server, mover)) == sorted(sent)
    for bad, words in ((("user", "move", mover, "n3"), "'n3' is not a mail host"),
                       (("user", "move", mover, "n2"), "lives on n2 already"),
                       (("cluster", "takeover", "n3"), "'n3' is not a mail host")):
        refused = cli(*bad, check=False)
        assert refused.returncode == 2 and words in refused.stderr, (bad, refused.stderr)


def test_a_user_added_logs_in_on_n1_at_once_whichever_host_is_primary(cluster):
    cli, net = cluster
    address, context, server, domain = mail_host(cli)
    for target in ("n3", "n1"):
        cli("cluster", "switchover", "--to", target)
        assert cluster_status(cli)["primary"] == target
        user = f"at-once-{target}@{domain}"
        add_user(cli, user)
        # no retry: the command returned once every standby (n1's too) had replayed it
        assert imap_login(net, address, context, server, user)
        if target == "n3":  # n1 is a standby: its Roundcube writes (session, user) on n3
            port = Lab(cli.lab).forward("n1", 443)
            with browser() as chromium:
                session = Roundcube(chromium, f"https://127.0.0.1:{port}/", ARTIFACTS)
                try:
                    assert session.login(user, PASSWORD)
                    session.shot("cluster-n1-standby-roundcube")
                finally:
                    session.close()
            rows = cli.ssh("n3", "sudo -u postgres psql -X -tA -d roundcube -c "
                                 f"\"SELECT count(*) FROM users WHERE username = '{user}'\"")
            assert rows == "1", rows  # written on the primary


def _stream(address: str, recipient: str, stop: threading.Event) -> tuple[list[str], list]:
    """Messages on port 25 as a stranger sends them, until `stop` (≤ 5 min)."""
    accepted, refused, smtp = [], [], None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not stop.is_set():
        subject = f"failover {len(accepted) + len(refused):04d}"
        try:
            if smtp is None:
                smtp = smtplib.SMTP(address, 25, timeout=30)
                smtp.ehlo("client.outside.test")
            smtp.sendmail("someone@outside.test", [recipient],
                          f"From: someone@outside.test\r\nTo: {recipient}\r\n"
                          f"Subject: {subject}\r\n\r\n{subject}\r\n")
            accepted.append(subject)
        except (smtplib.SMTPException, OSError) as err:
            code = (next(iter(err.recipients.values()))[0]
                    if isinstance(err, smtplib.SMTPRecipientsRefused)
                    else getattr(err, "smtp_code", None))
            refused.append((code, f"{subject}: {err}"))
            if smtp is not None:
                smtp.close()
            smtp = None
            time.sleep(0.5)
        time.sleep(0.1)
    if smtp is not None:
        smtp.quit()
    return accepted, refused


def test_the_primary_host_powered_off_loses_no_mail_and_a_standby_takes_over(cluster):
    cli, net = cluster
    address, context, server, domain = mail_host(cli)
    cli("cluster", "switchover", "--to", "n2")  # n1 takes the mail: another host must fail
    recipient, waiting = f"failover@{domain}", f"waits@{domain}"
    add_user(cli, recipient, home="n1")
    add_user(cli, waiting, home="n2")
    # mail on n2 before it fails, copied to its replica (n1)
    earlier = [f"before n2 fails {n}" for n in range(3)]
    for subject in earlier:
        net.run(mailclient.submit, address, 587, server, context, recipient, PASSWORD,
                mailclient.check_message(recipient, waiting, "early", subject=subject))
    copied(cli, "n1", waiting, len(earlier))
    stop, result = threading.Event(), {}
    sender = threading.Thread(target=lambda: result.update(zip(
        ("accepted", "refused"), net.run(_stream, address, recipient, stop))))
    sender.start()
    try:
        time.sleep(3)  # the stream is going
        cli("lab", "stop", "n2")
        started = time.monotonic()
        while True:  # a write (the CLI finds the new primary itself) works again
            done = cli("user", "add", f"after-failover@{domain}", "--password-stdin",
                       input=PASSWORD + "\n", check=False)
            seconds = time.monotonic() - started
            if done.returncode == 0 or seconds > FAILOVER_LIMIT + 30:
                break
            if "exists" in done.stderr:  # an attempt committed, its wait for n2 failed
                break
            time.sleep(1)
        print(f"failover: a write works again {seconds:.1f} s after n2 was powered off")
        # mail for a mailbox whose home is down is accepted (and waits in n1's queue)
        before = time.monotonic()
        net.run(mailclient.submit, address, 587, server, context, recipient, PASSWORD,
                mailclient.check_message(recipient, waiting, "wait", subject="waits for n2"))
        print(f"a submission for n2's mailbox was accepted in {time.monotonic() - before:.1f} s")
        assert (done.returncode == 0 or "exists" in done.stderr) and seconds < FAILOVER_LIMIT, \
            (seconds, done.stderr)
        time.sleep(3)
    finally:
        stop.set()
        sender.join(120)
    accepted, refused = result["accepted"], result["refused"]
    assert len(accepted) >= 20, (len(accepted), refused)
    assert all(code is None or 400 <= code < 500 for code, _ in refused), refused
    assert cluster_status(cli)["primary"] in ("n1", "n3")
    deadline = time.monotonic() + 120
    while True:  # Postfix delivers what it accepted (retrying what it had to defer)
        missing = set(accepted) - net.run(subjects, address, context, server, recipient)
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not missing, sorted(missing)

    # n2 stays off: after cluster.takeover_after its mailboxes live on their replica (n1),
    # which had the earlier mail and now gets the mail that waited for n2
    wanted = {*earlier, "waits for n2"}
    while homes(cli)[waiting] != "n1":  # (a login now would wait on n2 until it times out)
        assert time.monotonic() - started < TAKEOVER_AFTER + 60, cli.ssh(
            cluster_status(cli)["primary"], "sudo journalctl -u mailfleet-takeover -n 20")
        time.sleep(2)
    print(f"take-over: n2's mailboxes live on n1 {time.monotonic() - started:.0f} s after n2 "
          f"was powered off (takeover_after {TAKEOVER_AFTER} s)")
    while not wanted <= net.run(subjects, address, context, server, waiting):
        assert time.monotonic() - started < TAKEOVER_AFTER + 60 + 30, cli.ssh("n1", "postqueue -p")
        time.sleep(3)
    print(f"take-over: n2's mailbox read at n1, complete, {time.monotonic() - started:.0f} s "
          f"after n2 was powered off (takeover_after {TAKEOVER_AFTER} s)")
    assert (homes(cli)[waiting], replicas(cli)[waiting]) == ("n1", "n2")
    assert stored_subjects(cli, "n1", waiting) == sorted(wanted)
    # n2 (now home to the fewest mailboxes) is marked down: a new mailbox goes to n1
    add_user(cli, f"while-n2-is-down@{domain}")
    assert homes(cli)[f"while-n2-is-down@{domain}"] == "n1"

    cli("backup", "run", "--host", "n1")  # n1 backs up after the failover, either role
    cli("lab", "start", "n2")  # the old primary comes back as a standby, by itself
    status = whole(cli)
    assert status["ok"], status
    assert {m["host"]: m["role"] for m in status["members"]}["n2"] == "standby"
    # ... and as the replica of the mailboxes it lost: it catches up, nothing twice
    copied(cli, "n2", waiting, len(wanted))
    assert stored_subjects(cli, "n2", waiting) == sorted(wanted)
    assert stored_subjects(cli, "n1", waiting) == sorted(wanted)


def test_an_import_during_a_switchover_is_all_or_none_and_can_be_run_again(cluster, tmp_path):
    cli, _ = cluster
    domain = load(cli.config).mail.domain
    rows = tmp_path / "many.csv"
    rows.write_text("email,password\n" + "".join(f"bulk{i:04d}@{domain},{PASSWORD}\n"
                                                  for i in range(1000)))
    before = cluster_status(cli)["primary"]
    target = next(h for h in ("n3", "n1", "n2") if h != before)
    result: dict = {}
    importing = threading.Thread(target=lambda: result.update(
        done=cli("user", "import", str(rows), check=False)))
    importing.start()
    try:
        time.sleep(2)  # the import is under way (hashing, then one transaction)
        cli("cluster", "switchover", "--to", target)
    finally:
        importing.join(600)
    done = result["done"]

    def imported() -> int:
        return sum(u["email"].startswith("bulk") for u in cli.json("user", "list"))

    count = imported()
    print(f"import during a switchover: exit {done.returncode}, {count} users imported")
    assert count in (0, 1000), (count, done.stdout, done.stderr)
    if done.returncode != 0:  # it failed with one sentence, no traceback
        assert "Traceback" not in done.stderr and done.stderr.strip(), done.stderr
    again = cli("user", "import", str(rows))
    assert imported() == 1000, again.stdout


def test_the_mail_member_backs_up_as_a_standby_and_its_backup_restores_onto_a_fresh_host(
        cluster):
    cli, net = cluster
    address, context, server, domain = mail_host(cli)
    cli("cluster", "switchover", "--to", "n3")  # n1, where the mail and backups are: a standby
    user = f"kept@{domain}"
    add_user(cli, user, home="n1")  # n1 backs up the mailboxes homed there
    subject = "kept through a restore"
    net.run(mailclient.submit, address, 587, server, context, user, PASSWORD,
            mailclient.check_message(user, user, "kept", subject=subject))
    deadline = time.monotonic() + 60
    while subject not in net.run(subjects, address, context, server, user):
        assert time.monotonic() < deadline, "the message was not delivered on n1"
        time.sleep(1)
    cli("backup", "run", "--host", "n1")
    base = cli.ssh("n1", "ls -1d /var/backups/mailfleet/postgres/base-*Z | tail -n 1")
    label = cli.ssh("n1", f"tar -xzOf {base}/base.tar.gz backup_label")
    assert "BACKUP FROM: standby" in label, label  # taken on the standby, not the primary
    assert cli.ssh("n1", "runuser -u postgres -- psql -XAtc 'SHOW archive_mode'") == "always"
    health = cli.json("check")
    mine = {c["name"]: c for c in health["checks"] if c["host"] == "n1"}
    assert mine["last backup"]["status"] == "ok", mine["last backup"]
    assert mine["WAL archiving"]["status"] == "ok", mine["WAL archiving"]
    assert health["ok"], [c for c in health["checks"] if c["status"] == "fail"]
    refused = cli("backup", "restore", "--host", "n2", "--yes", check=False)
    assert refused.returncode == 2 and "is a member of the accounts database's cluster" \
        in refused.stderr, refused.stderr

    # the restore drill: the repository reaches n4, deployed alone, restored from n1's backup
    lone = Cli(cli.lab, cli.config.with_name("lone.toml"))
    lab_bytes(lone, "n4", "tar -C / -xzf -",
              lab_bytes(cli, "n1", f"tar -C / -czf - {REPOSITORY.lstrip('/')}"))
    assert lone.json("deploy")["ok"]
    done = lone("backup", "restore", "--host", "n4", "--from", server, "--yes", "--json",
                check=False)
    result = json.loads(done.stdout)
    assert done.returncode == 0 and result["ok"], (
        [c for c in result.get("checks", []) if c["status"] != "ok"], done.stderr)
    n4_address, n4_context, n4_server, _ = mail_host(lone, "n4")
    assert subject in net.run(subjects, n4_address, n4_context, n4_server, user)
    # n1's snapshots hold the mailboxes homed there, not the replicas it keeps for n2
    replica = f"/var/mail/vmail/{domain}/mailfleet-check-n2"
    assert cli.ssh("n1", f"test -d {replica} && echo kept") == "kept"
    assert lone.ssh("n4", f"test -d {replica} && echo kept || echo left out") == "left out"
    # a lone host now: a primary of its own, archiving as one, no cluster secret kept
    assert lone.ssh("n4", "runuser -u postgres -- psql -XAtc "
                          "'SELECT pg_is_in_recovery(), current_setting($$archive_mode$$)'") == "f|on"
    assert lone.ssh("n4", "ls /etc/mailfleet/secrets | grep -c '^cluster-' || true") == "0"
    again = lone.json("deploy")
    assert again["changes"] == 0, again["hosts"]["n4"]["changed"]
