"""Backups on both lab hosts (restic 0.14 / PostgreSQL 15 on Debian 12, restic 0.18 /
PostgreSQL 17 on Debian 13): switched on through mailfleet.toml, the first backup runs at
deploy, `backup run|list|verify` work, WAL is archived, a snapshot holds a delivered message
byte for byte, and damage to the repository is found.

The repository is a path on each host (the simplest restic repository), set for this module
only (`lab_settings` puts mailfleet.toml back when it ends)."""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
import tomlkit
from conftest import (DOMAIN, PASSWORD, Cli, LabNet, LabSettings, Node, edited_config,
                      lab_bytes, lab_leftovers, lab_name, shared_node)

from mailfleet.engine import mailclient
from mailfleet.services import backup

REPOSITORY = "/var/backups/mailfleet/restic"


@pytest.fixture(scope="module")
def backups_on(lab_settings: LabSettings, tmp_path_factory) -> Cli:
    deployed = lab_settings.cli
    password = tmp_path_factory.mktemp("backup") / "backup-password"

    def repository(doc) -> None:
        doc["backup"] = {"repository": REPOSITORY, "password_file": str(password)}

    report = lab_settings.set(edit=repository)
    for host in ("n1", "n2"):
        assert "Run the first backup" in report["hosts"][host]["changed"], report
    assert password.stat().st_mode & 0o777 == 0o600  # made on this machine, kept here
    again = deployed.json("deploy")
    assert again["changes"] == 0, {h: r["changed"] for h, r in again["hosts"].items()}
    assert {h: r["fact_misses"] for h, r in again["hosts"].items()} == {"n1": [], "n2": []}
    return deployed


def test_check_reports_the_first_backup_and_wal_archiving(backups_on: Cli):
    health = json.loads(backups_on("check", "--json", check=False).stdout)
    for host in ("n1", "n2"):
        mine = {c["name"]: c for c in health["checks"] if c["host"] == host}
        assert mine["last backup"]["status"] == "ok", mine["last backup"]
        assert mine["WAL archiving"]["status"] == "ok", mine["WAL archiving"]
        assert mine["backup timer"]["status"] == "ok", mine["backup timer"]
    assert health["ok"], [c for c in health["checks"] if c["status"] != "ok"]


def test_backup_run_adds_a_snapshot_holding_the_new_mail(node: Node, backups_on: Cli):
    reader = node.user("backup-reader")
    subject = node.submit(reader, reader)
    raw = node.fetch(reader, subject)
    assert raw
    before = backups_on.json("backup", "list", "--host", node.name)["snapshots"]
    backups_on("backup", "run", "--host", node.name)
    after = backups_on.json("backup", "list", "--host", node.name)["snapshots"]
    # one snapshot per day is kept (keep_daily): today's newest replaced the one before
    newest = after[-1]["id"]
    assert newest not in {s["id"] for s in before} and after[-1]["time"] > before[-1]["time"]
    # the message file in the snapshot is the delivered message, byte for byte
    found = node.cli.ssh(node.name, f"grep -rl 'Subject: {subject}' /var/mail/vmail | head -n 1")
    assert found, "the message is not in the Maildir"
    restic = f"{backup.RESTIC} dump {newest} {found}"
    stored = node.cli.ssh(node.name, f"{restic} | sha256sum | cut -d' ' -f1")
    on_disk = node.cli.ssh(node.name, f"sha256sum {found} | cut -d' ' -f1")
    assert stored == on_disk
    # and the same message IMAP serves (Dovecot stores LF line ends, IMAP sends CRLF)
    assert hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest() == on_disk
    # the PostgreSQL base backups and archived WAL are in it too
    listing = node.cli.ssh(node.name, f"{backup.RESTIC} ls {newest} "
                                      "| grep /var/backups/mailfleet/postgres/")
    assert "/base.tar.gz" in listing and "/postgres/wal/0000" in listing, listing


def test_verify_passes_then_finds_a_damaged_repository(node: Node, backups_on: Cli):
    report = json.loads(backups_on("backup", "verify", "--host", node.name, "--json").stdout)
    assert report["ok"] and report["snapshots"] >= 1 and report["newest_age_hours"] < 1, report
    # a data file of the repository is damaged (a disk error, a careless hand). Not deleted:
    # Debian 12's restic 0.14 retries a missing pack with backoff for minutes (5 min here)
    node.cli.ssh(node.name, f"f=$(find {REPOSITORY}/data -type f | head -n 1); "
                            "cp -p \"$f\" /root/pack.bak; echo \"$f\" > /root/pack.path; "
                            "printf x >> \"$f\"")
    try:
        damaged = backups_on("backup", "verify", "--host", node.name, "--json", check=False)
        assert damaged.returncode == 1, damaged.stdout
        problems = json.loads(damaged.stdout)["problems"]
        assert problems and problems[0].startswith("restic check:"), problems
    finally:
        node.cli.ssh(node.name, "cp -p /root/pack.bak \"$(cat /root/pack.path)\"")
    assert backups_on("backup", "verify", "--host", node.name, check=False).returncode == 0


# a valid directory name full of shell syntax: if any shell parsed it, /tmp/pwned would appear
# and restic would get another path (${IFS}: the config refuses whitespace in a repository)
ODD_REPOSITORY = "/srv/restic-$(touch${IFS}/tmp/pwned)&x`id`'\"$HOME"


def test_a_repository_with_shell_syntax_reaches_restic_byte_for_byte(backups_on: Cli):
    """The repository setting is data, never shell code: on both releases restic creates its
    repository at exactly that path, `backup run` and `backup list` work, no command in it
    runs."""
    original = backups_on.config.read_text()
    quoted = shlex.quote(ODD_REPOSITORY)
    doc = tomlkit.parse(original)
    doc["backup"]["repository"] = ODD_REPOSITORY
    backups_on.config.write_text(tomlkit.dumps(doc))
    try:
        report = backups_on.json("deploy")
        assert report["ok"], report
        for host in ("n1", "n2"):
            backups_on("backup", "run", "--host", host)
            snapshots = backups_on.json("backup", "list", "--host", host)["snapshots"]
            assert [s for s in snapshots if s["host"].startswith(f"{host}.")], snapshots
            # at exactly that path (its `/` make it three directories deep), nowhere else
            made = backups_on.ssh(host, f"test -f {quoted}/config && ls -A /srv")
            assert made == ODD_REPOSITORY.split("/")[2], made
            assert backups_on.ssh(host, "ls /tmp/pwned 2>/dev/null || echo absent") == "absent"
    finally:
        backups_on.config.write_text(original)
        for host in ("n1", "n2"):
            backups_on.ssh(host, f"rm -rf {shlex.quote('/srv/' + ODD_REPOSITORY.split('/')[2])} "
                                 "/tmp/pwned")
        restored = backups_on.json("deploy")
        assert restored["ok"], restored


def test_deploy_diff_never_prints_the_repository_credentials(backups_on: Cli):
    """A repository URL can hold a password: `deploy --diff` says the file changed, not how."""
    original = backups_on.config.read_text()
    doc = tomlkit.parse(original)
    doc["backup"]["repository"] = "rest:https://backup:Pa$$w0rd&x@127.0.0.1:1/mail"
    backups_on.config.write_text(tomlkit.dumps(doc))
    try:
        shown = backups_on("deploy", "--check", "--diff", "--limit", "n1", check=False)
    finally:
        backups_on.config.write_text(original)
    assert "(not shown)" in shown.stdout + shown.stderr, shown.stdout + shown.stderr
    assert "Pa$$w0rd" not in shown.stdout + shown.stderr, shown.stdout + shown.stderr


# -- the restore drill: host A (the shared lab's Debian 13 node) onto a fresh host B ---------

NEW_PASSWORD = "Battery-Staple-9-correct"


@dataclass
class Rebuilt(Node):
    """Host B: a single-host lab whose host is named mail.example.internal."""

    @property
    def fqdn(self) -> str:
        return f"mail.{DOMAIN}"


def stored(node: Node, user: str, subjects: list[str], password: str = PASSWORD) -> dict[str, str]:
    """sha256 of each message as IMAP serves it (subject -> hash; missing ones left out)."""
    found = {}
    for subject in subjects:
        raw = node.fetch(user, subject, wait=5, password=password)
        if raw is not None:
            found[subject] = hashlib.sha256(raw).hexdigest()
    return found


@pytest.fixture(scope="module")
def drill(backups_on: Cli, lab_net: LabNet, tmp_path_factory):
    """A: mail, backup 1, more mail, the moment T, a password change, backup 2. Then a
    fresh Debian 13 host B (its own lab) gets a copy of the repository and is deployed."""
    a = shared_node(backups_on, lab_net, "n2")
    user = a.user("drill")
    early = [a.submit(user, user) for _ in range(3)]
    backups_on("backup", "run", "--host", "n2")
    later = [a.submit(user, user) for _ in range(2)]
    hashes = stored(a, user, early + later)
    assert len(hashes) == 5
    time.sleep(2)
    moment = datetime.now(timezone.utc)
    time.sleep(2)
    backups_on("user", "passwd", user, "--password-stdin", "--host", "n2", input=NEW_PASSWORD + "\n")
    assert a.imap_login(user, NEW_PASSWORD) and not a.imap_login(user, PASSWORD)
    backups_on("backup", "run", "--host", "n2")
    repository = lab_bytes(backups_on, "n2", f"tar -C / -czf - {REPOSITORY.lstrip('/')}")

    config = tmp_path_factory.mktemp("rebuilt") / "mailfleet.toml"
    b_cli = Cli(lab_name(6), config)
    b_net = None
    try:
        # booted before its config exists: the same preinstalled image as test_lab_deploy's
        b_cli("lab", "up", "--preinstall", timeout=600)
        doc = tomlkit.parse(backups_on.config.read_text())  # A's settings, B's [[hosts]]
        doc["hosts"] = tomlkit.parse(config.read_text())["hosts"]
        config.write_text(tomlkit.dumps(doc))
        lab_bytes(b_cli, "n1", "tar -C / -xzf -", repository)  # the repository reaches B
        report = b_cli.json("deploy")
        assert report["ok"], report
        address = b_cli.json("lab", "status")["nodes"][0]["address"]
        b_net = LabNet(b_cli.lab)
        b = Rebuilt(b_cli, b_net, "n1", address, "2.4", b_cli.ssh("n1", "cat /etc/mailfleet/tls/ca.crt"),
                    a.dkim_record)
        yield {"a": a, "b": b, "user": user, "early": early, "later": later, "hashes": hashes,
               "moment": moment}
    finally:
        if b_net:
            b_net.close()
        down = b_cli("lab", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert lab_leftovers(lab_name(6)) == {"namespaces": [], "processes": [], "mounts": []}


def test_restore_onto_a_fresh_host_brings_back_mail_logins_and_dkim(drill):
    b, user = drill["b"], drill["user"]
    done = b.cli("backup", "restore", "--host", "n1", "--from", "n2.example.internal", "--yes",
                 "--json", check=False)
    result = json.loads(done.stdout)
    assert done.returncode == 0 and result["ok"], (
        result.get("deploy"), [c for c in result.get("checks", []) if c["status"] != "ok"], done.stderr)
    assert "/etc/mailfleet/tls" not in result["paths"]  # B keeps its own certificate
    # every message, byte for byte; the password of the newest state
    assert stored(b, user, drill["early"] + drill["later"], NEW_PASSWORD) == drill["hashes"]
    assert not b.imap_login(user, PASSWORD)
    # mail sent on B is signed with A's DKIM key: the published record still verifies it
    subject = b.submit(user, user, password=NEW_PASSWORD)
    raw = b.fetch(user, subject, password=NEW_PASSWORD)
    ok, why = mailclient.verify_dkim(raw, {DOMAIN: drill["a"].dkim_record})
    assert ok, why
    assert b.cli.json("deploy")["changes"] == 0


def test_point_in_time_restore_returns_to_before_the_password_change(drill):
    b, user = drill["b"], drill["user"]
    moment = drill["moment"].strftime("%Y-%m-%dT%H:%M:%SZ")
    done = b.cli("backup", "restore", "--host", "n1", "--from", "n2.example.internal",
                 "--to-time", moment, "--yes", "--json", check=False)
    result = json.loads(done.stdout)
    assert done.returncode == 0 and result["ok"], (
        [c for c in result.get("checks", []) if c["status"] != "ok"], done.stderr)
    assert b.imap_login(user, PASSWORD) and not b.imap_login(user, NEW_PASSWORD)
    # the mail is the snapshot's after the moment: nothing delivered before it is missing
    assert stored(b, user, drill["early"] + drill["later"]) == drill["hashes"]
    # a moment after the newest snapshot cannot be reached: said, exit 2, nothing touched
    late = b.cli("backup", "restore", "--host", "n1", "--from", "n2.example.internal",
                 "--to-time", "2099-01-01T00:00:00Z", "--yes", check=False)
    assert late.returncode == 2 and "the latest state is as far as a restore can go" in late.stderr
    assert b.imap_login(user, PASSWORD)


# -- switched off (last: the module's other tests need the backups) --------------------------

def test_removing_the_repository_stops_backups_and_wal_archiving(backups_on: Cli):
    """Without [backup] a deploy undoes the backup setup on both releases: no WAL archiving,
    no timer, no repository address or password on the host; the local base backups and WAL
    (and the repository) stay, being the user's data. `check` passes, a second deploy
    changes nothing."""
    def no_repository(doc) -> None:
        del doc["backup"]

    with edited_config(backups_on, no_repository):
        report = backups_on.json("deploy")
        assert report["ok"], report
        for host in ("n1", "n2"):
            mode = backups_on.ssh(host, "runuser -u postgres -- psql -XAtc 'SHOW archive_mode'")
            assert mode == "off", mode
            timer = backups_on.ssh(host, f"systemctl is-active {backup.UNIT}.timer || true")
            assert timer in ("inactive", "unknown"), timer
            gone = backups_on.ssh(host, f"ls {backup.REPOSITORY_FILE} {backup.PASSWORD_FILE} "
                                        f"{backup.SCRIPT} 2>/dev/null || true")
            assert gone == "", gone
            kept = backups_on.ssh(host, f"test -d {backup.WAL_DIR} && test -f {REPOSITORY}/config "
                                        "&& echo kept")
            assert kept == "kept"
        health = json.loads(backups_on("check", "--json", check=False).stdout)
        names = {c["name"] for c in health["checks"]}
        assert "last backup" not in names and "WAL archiving" not in names, names
        assert health["ok"], [c for c in health["checks"] if c["status"] == "fail"]
        again = backups_on.json("deploy")
        assert again["changes"] == 0, {h: r["changed"] for h, r in again["hosts"].items()}
