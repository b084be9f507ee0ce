"""Settings and secrets: the backup repository address never reaches a shell, and secret
files (here and on the hosts) are never readable by others, not even while being written."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest


from mailfleet.config import HostSettings, parse
from mailfleet.engine.operations import config_file
from mailfleet.services import backup, plan_host, restore
from mailfleet.services.plan import full_plan
from mailfleet.templating import TEMPLATES

# a valid repository address full of shell syntax (the config refuses only whitespace)
ODD = "rest:https://u:pa$$w0rd&x@host/$(touch${IFS}/tmp/pwned)`id`'\"x;y|z"


class RecordingContext:
    """What backup.deploy asks of a HostContext, recording the operations it adds."""

    def __init__(self, config):
        self.config = config
        self.settings = HostSettings(name="mx1", address="192.0.2.1")
        self.plan = plan_host(config, self.settings)
        self.ops: list[tuple[object, dict]] = []

    def snapshot(self, name: str) -> str:
        return {"os": "debian 13 x86_64"}.get(name, "")

    def op(self, function, **kwargs):
        self.ops.append((function, kwargs))
        return len(self.ops)

    def changed(self, *ops) -> bool:
        return False

    def service(self, *args, **kwargs) -> None:
        pass


def deployed(tmp_path: Path, repository: str) -> RecordingContext:
    config = parse('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
                   f"[backup]\nrepository = '''{repository}'''\n"
                   f'password_file = "{tmp_path}/backup-password"\n')
    assert config.backup.repository == repository
    ctx = RecordingContext(config)
    backup.deploy(ctx)
    return ctx


def test_the_repository_address_is_a_file_restic_reads_byte_for_byte(tmp_path):
    ctx = deployed(tmp_path, ODD)
    files = {kw["dest"]: kw for fn, kw in ctx.ops if fn is config_file}
    written = files[backup.REPOSITORY_FILE]
    assert written["content"] == ODD  # byte for byte, no quoting, no newline to strip
    assert written["mode"] == "600" and written["secret"] is True  # --diff never shows it
    # nothing else that is written or run holds it: no shell ever parses it
    for fn, kw in ctx.ops:
        if kw is not written:
            assert "pa$$w0rd" not in repr(kw), kw
    assert "pa$$w0rd" not in backup.RESTIC + backup.STATUS
    # the old env file (shell code that scripts sourced) goes away
    assert any(kw.get("path") == backup.OLD_ENV_FILE and kw.get("present") is False
               for _, kw in ctx.ops)


def test_no_backup_script_sources_a_file():
    sourcing = re.compile(r"(^|[;&|({]\s*)(\.|source)\s+\S", re.MULTILINE)
    for template in (TEMPLATES / "backup").glob("*.j2"):
        assert not sourcing.search(template.read_text()), template
    config = parse('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
                   f"[backup]\nrepository = '''{ODD}'''\n")
    chosen = {"id": "a" * 64, "short_id": "aaaaaaaa", "hostname": "mail.example.org",
              "time": "2026-11-26T03:00:02Z", "paths": backup.PATHS}
    for text in (backup.script(config, full_plan(), "17"), backup.RESTIC,
                 backup.STATUS,
                 restore.restore_script(chosen, ["/var/mail/vmail"], None, "17")):
        assert not sourcing.search(text), text
        assert "pa$$w0rd" not in text


def test_restic_finds_its_settings_in_the_environment_the_script_exports():
    config = parse('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
                   '[backup]\nrepository = "/srv/restic"\n')
    line = next(l for l in backup.script(config, full_plan(),
                                         "17").splitlines()
                if l.startswith("export "))
    shown = subprocess.run(["sh", "-c", f"{line}; env"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert f"RESTIC_REPOSITORY_FILE={backup.REPOSITORY_FILE}" in shown
    assert f"RESTIC_PASSWORD_FILE={backup.PASSWORD_FILE}" in shown
    assert not [l for l in shown if l.startswith("RESTIC_REPOSITORY=")]


# -- files on this machine ------------------------------------------------------------------

def test_a_private_file_is_0600_before_its_content_is_written(tmp_path, monkeypatch):
    from mailfleet import localfile
    target = tmp_path / "client.conf"
    target.write_text("old\n")
    target.chmod(0o644)  # an existing file with a looser mode
    seen = []
    real_replace = os.replace

    def replace(src, dst):  # the moment the new content takes the name
        seen.append((stat.S_IMODE(os.stat(src).st_mode), Path(src).read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(localfile.os, "replace", replace)
    old_umask = os.umask(0)  # whatever the umask
    try:
        localfile.write_private(target, "PrivateKey = secret\n")
    finally:
        os.umask(old_umask)
    assert seen == [(0o600, "PrivateKey = secret\n")]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "PrivateKey = secret\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client.conf"]  # no temp file left


def test_the_local_backup_password_file_is_made_0600(tmp_path):
    config = parse('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
                   f'[backup]\nrepository = "/srv/restic"\npassword_file = "{tmp_path}/d/pw"\n')
    old_umask = os.umask(0)
    try:
        password = backup.local_password(config)
    finally:
        os.umask(old_umask)
    path = tmp_path / "d" / "pw"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(password) >= 16
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_failed_private_write_leaves_no_temp_file(tmp_path, monkeypatch):
    from mailfleet import localfile
    monkeypatch.setattr(localfile.os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(13, "no")))
    with pytest.raises(OSError):
        localfile.write_private(tmp_path / "x", "secret")
    assert list(tmp_path.iterdir()) == []
