"""Backups on both lab hosts (restic 0.14 / PostgreSQL 15 on Debian 12, restic 0.18 /
PostgreSQL 17 on Debian 13): switched on through mailfleet.toml, the first backup runs at
deploy, `backup run|list|verify` work, WAL is archived, a snapshot holds a delivered message
byte for byte, and damage to the repository is found.

The repository is a path on each host (the simplest restic repository); the backups stay
on for the modules that run after this one on the shared lab. (Named to run after
test_lab_deploy.py, which needs the shared lab not yet deployed.)"""

from __future__ import annotations

import hashlib
import json

import pytest
import tomlkit
from conftest import Cli, Node

REPOSITORY = "/var/backups/mailfleet/restic"


@pytest.fixture(scope="module")
def backups_on(deployed: Cli, tmp_path_factory) -> Cli:
    password = tmp_path_factory.mktemp("backup") / "backup-password"
    doc = tomlkit.parse(deployed.config.read_text())
    doc["backup"] = {"repository": REPOSITORY, "password_file": str(password)}
    deployed.config.write_text(tomlkit.dumps(doc))
    report = deployed.json("deploy")
    assert report["ok"], report
    for host in ("n1", "n2"):
        assert "Run the first backup" in report["hosts"][host]["changed"], report
    assert password.stat().st_mode & 0o777 == 0o600  # made on this machine, kept here
    again = deployed.json("deploy")
    assert again["changes"] == 0, {h: r["changed"] for h, r in again["hosts"].items()}
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
    restic = f"set -a; . /etc/mailfleet/backup.env; set +a; restic dump {newest} {found}"
    stored = node.cli.ssh(node.name, f"{restic} | sha256sum | cut -d' ' -f1")
    on_disk = node.cli.ssh(node.name, f"sha256sum {found} | cut -d' ' -f1")
    assert stored == on_disk
    # and the same message IMAP serves (Dovecot stores LF line ends, IMAP sends CRLF)
    assert hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest() == on_disk
    # the PostgreSQL base backups and archived WAL are in it too
    listing = node.cli.ssh(node.name, "set -a; . /etc/mailfleet/backup.env; set +a; "
                                      f"restic ls {newest} | grep /var/backups/mailfleet/postgres/")
    assert "/base.tar.gz" in listing and "/postgres/wal/0000" in listing, listing


def test_verify_passes_then_finds_a_damaged_repository(node: Node, backups_on: Cli):
    report = json.loads(backups_on("backup", "verify", "--host", node.name, "--json").stdout)
    assert report["ok"] and report["snapshots"] >= 1 and report["newest_age_hours"] < 1, report
    # a data file of the repository goes missing (a disk error, a careless hand)
    node.cli.ssh(node.name, f"f=$(find {REPOSITORY}/data -type f | head -n 1); "
                            "cp -p \"$f\" /root/pack.bak; echo \"$f\" > /root/pack.path; rm \"$f\"")
    try:
        damaged = backups_on("backup", "verify", "--host", node.name, "--json", check=False)
        assert damaged.returncode == 1, damaged.stdout
        problems = json.loads(damaged.stdout)["problems"]
        assert problems and problems[0].startswith("restic check:"), problems
    finally:
        node.cli.ssh(node.name, "cp -p /root/pack.bak \"$(cat /root/pack.path)\"")
    assert backups_on("backup", "verify", "--host", node.name, check=False).returncode == 0
