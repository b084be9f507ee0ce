"""The mail store: /var/mail/vmail, owned by a dedicated vmail user, Maildir per user.

Dovecot enforces quotas (per user, from the database). Filesystem quotas are only
reported here: they need a kernel quota format and a remount, which mailfleet never does
on its own (and never inside a container, where / is the machine's own disk).
"""

from __future__ import annotations

from pyinfra.facts.files import Directory
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from mailfleet.engine import Engine, HostContext
from mailfleet.engine.facts import USER_FACTS
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service

VMAIL_DIR = "/var/mail/vmail"
VMAIL_USER = "vmail"
DISK_WARN_PERCENT = 80
DISK_FAIL_PERCENT = 95
_DISK = f"df -P {VMAIL_DIR} 2>/dev/null | tail -n 1; findmnt -no FSTYPE,OPTIONS -T {VMAIL_DIR} 2>/dev/null; systemd-detect-virt --container 2>/dev/null || true"


def deploy(ctx: HostContext) -> None:
    mail = ctx.config.mail
    ctx.op(server.group, name="Create the vmail group", group=VMAIL_USER, gid=mail.vmail_gid,
           system=True)
    ctx.op(server.user, name="Create the vmail user", user=VMAIL_USER, uid=mail.vmail_uid,
           group=VMAIL_USER, home=VMAIL_DIR, shell="/usr/sbin/nologin", system=True,
           create_home=False, ensure_home=False)
    ctx.op(files.directory, name="Create the mail store", path=VMAIL_DIR, user=VMAIL_USER,
           group=VMAIL_USER, mode="2770")  # setgid: /var/mail's is inherited and kept by chmod


def parse_disk(text: str) -> tuple[int | None, int | None, str, str, str]:
    """(used %, available KiB, filesystem type, mount options, container) from `_DISK`:
    df's data line, then findmnt's "TYPE OPTIONS", then systemd-detect-virt's answer."""
    lines = [l.split() for l in text.splitlines() if l.strip()]
    df = lines[0] if lines and len(lines[0]) >= 6 and lines[0][4].endswith("%") else None
    if df is None:
        return None, None, "", "", ""
    mount = lines[1] if len(lines) > 1 and len(lines[1]) == 2 else ["", ""]
    container = lines[-1][0] if len(lines) > 2 and len(lines[-1]) == 1 else ""
    return int(df[4].rstrip("%")), int(df[3]), mount[0], mount[1], container


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, text in engine.facts(Command, command=_DISK).items():
        used, avail, fstype, options, container = parse_disk(text or "")
        if used is None:
            results.append(CheckResult(name, "mail store disk", "fail", f"{VMAIL_DIR} is missing",
                                       "run `mailfleet deploy`"))
            continue
        message = f"{used}% used, {avail // 1024} MiB free"
        status = "ok" if used < DISK_WARN_PERCENT else "warn" if used < DISK_FAIL_PERCENT else "fail"
        results.append(CheckResult(name, "mail store disk", status, message,
                                   "free disk space or grow the volume"))
        opts = set(options.split(","))
        if opts & {"usrquota", "grpquota", "quota", "usrjquota", "grpjquota"}:
            quota = CheckResult(name, "filesystem quota", "ok", f"enabled on {fstype}")
        elif container and container != "none":
            quota = CheckResult(name, "filesystem quota", "ok",
                                f"not available in a {container} container; Dovecot quotas apply")
        else:
            quota = CheckResult(name, "filesystem quota", "ok",
                                f"not enabled on {fstype or 'this filesystem'}; Dovecot quotas apply")
        results.append(quota)
    return results


SERVICE = Service("mailstore", applies=lambda plan: plan.mail, deploy=deploy, checks=checks,
                  reads=(_DISK,),
                  facts=lambda ctx: [*USER_FACTS, (Directory, {"path": VMAIL_DIR})])
