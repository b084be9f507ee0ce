"""Which snapshot and which paths a restore uses, and the script it runs (pure logic; the
restore itself is tested on lab hosts in tests/lab/test_mail_backup.py)."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone

import pytest

from mailfleet.config import parse
from mailfleet.errors import ConfigError
from mailfleet.services import backup, restore

CONFIG = parse('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
               '[backup]\nrepository = "/srv/restic"\n')
PATHS = backup.PATHS


def snap(id_: str, time: str, host: str = "mail.example.org", paths=PATHS) -> dict:
    return {"id": id_ * 8, "short_id": id_, "time": time, "hostname": host, "paths": paths}


SNAPSHOTS = [snap("a1", "2026-11-24T03:00:05.123456789Z"),
             snap("b2", "2026-11-25T03:00:04.5+00:00"),
             snap("c3", "2026-11-25T04:00:00Z", host="other.example.org"),
             snap("d4", "2026-11-26T03:00:02.000000001Z")]


def at(text: str) -> datetime:
    return restore.parse_time(text)


def test_latest_is_the_newest_of_that_host():
    assert restore.choose_snapshot(SNAPSHOTS, "mail.example.org", "latest", None)["short_id"] == "d4"
    assert restore.choose_snapshot(SNAPSHOTS, "other.example.org", None, None)["short_id"] == "c3"


def test_a_point_in_time_reads_the_first_snapshot_after_it():
    # its archived WAL reaches the moment; a time between two snapshots takes the later one
    assert restore.choose_snapshot(SNAPSHOTS, "mail.example.org", None,
                                  at("2026-11-24T12:00:00Z"))["short_id"] == "b2"
    assert restore.choose_snapshot(SNAPSHOTS, "mail.example.org", None,
                                  at("2026-11-25T03:00:04"))["short_id"] == "b2"  # UTC without zone


def test_a_point_after_the_newest_snapshot_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"newest snapshot of mail.example.org was taken at "
                                          r"2026-11-26T03:00:02Z; WAL archived after it"):
        restore.choose_snapshot(SNAPSHOTS, "mail.example.org", None, at("2026-11-26T04:00:00Z"))


def test_unknown_host_or_id_names_what_exists():
    with pytest.raises(ConfigError, match=r"no snapshot of gone.example.org \(it has: "
                                          r"mail.example.org, other.example.org\); give --from"):
        restore.choose_snapshot(SNAPSHOTS, "gone.example.org", None, None)
    with pytest.raises(ConfigError, match=r"--snapshot zz: no snapshot of mail.example.org"):
        restore.choose_snapshot(SNAPSHOTS, "mail.example.org", "zz", None)
    assert restore.choose_snapshot(SNAPSHOTS, "mail.example.org", "b2", None)["short_id"] == "b2"


def test_tls_material_only_returns_to_a_host_of_the_same_name():
    chosen = SNAPSHOTS[-1]
    same = restore.restore_paths(chosen, True, CONFIG.features.radicale)
    other = restore.restore_paths(chosen, False, CONFIG.features.radicale)
    assert "/etc/mailfleet/tls" in same and "/etc/mailfleet/tls" not in other
    assert {"/var/mail/vmail", "/etc/dkimkeys", "/etc/mailfleet/secrets",
            "/var/backups/mailfleet/postgres"} <= set(other)
    with pytest.raises(ConfigError, match=r"does not hold /var/backups/mailfleet/postgres"):
        restore.restore_paths(snap("e5", "2026-11-26T03:00:00Z", paths=["/var/mail/vmail",
                                                                      "/etc/mailfleet"]),
                             False, CONFIG.features.radicale)


def test_restore_script_is_valid_shell_and_targets_the_moment():
    target = datetime(2026, 11, 25, 12, 30, tzinfo=timezone.utc)
    paths = restore.restore_paths(SNAPSHOTS[-1], False, CONFIG.features.radicale)
    script = restore.restore_script(SNAPSHOTS[-1], paths,
                                   target, "17")
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "recovery_target_time = '2026-11-25 12:30:00+00'" in script
    assert 't="20261125T123000Z"' in script  # a base backup from before the moment
    assert "/var/lib/postgresql/17/main" in script and "chown -R vmail:vmail /var/mail/vmail" in script
    latest = restore.restore_script(SNAPSHOTS[-1], ["/var/mail/vmail"], None, "15")
    assert "recovery_target_time" not in latest and "awk" not in latest
