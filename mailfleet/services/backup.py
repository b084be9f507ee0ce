"""Backups: restic snapshots of everything a rebuilt host needs, and PostgreSQL's WAL
archived continuously between its base backups (restore to any moment).

The repository password lives on the operator's machine ([backup] password_file, made by
the first deploy) and is copied to each host: a host lost with its disk loses nothing the
restore needs. A timer runs /usr/local/lib/mailfleet/backup.sh; its last success is dated in
STAMP for `mailfleet check`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shlex
from datetime import datetime, timezone
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import Directory, File
from pyinfra.facts.server import Command
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import files, systemd

from mailfleet.accounts.schema import DATABASE
from mailfleet.config import HostSettings
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.facts import FactRead
from mailfleet.engine.snapshot import SECRETS_DIR, FileState
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import ConfigError, DeployError
from mailfleet.localfile import write_private
from mailfleet.services import certs, mailstore, opendkim, patroni, postgres, radicale
from mailfleet.services.checks import CheckResult
from mailfleet.services.platform import platform
from mailfleet.services.shape import HostPlan, Service
from mailfleet.templating import render

PACKAGES = ["restic"]
ROOT = "/var/backups/mailfleet"
PG_DIR = f"{ROOT}/postgres"
WAL_DIR = postgres.WAL_ARCHIVE
SCRIPT = "/usr/local/lib/mailfleet/backup.sh"
# restic reads its settings from files itself: the repository address (which can hold a
# password and any character) never passes through a shell or an env file a shell sources
REPOSITORY_FILE = "/etc/mailfleet/backup-repository"
PASSWORD_FILE = f"{SECRETS_DIR}/backup-password"
# written by mailfleet before: the repository address as shell code, sourced (now removed)
OLD_ENV_FILE = "/etc/mailfleet/backup.env"
STAMP = "/var/lib/mailfleet/backup-last-success"
# the sha256 of the repository address that was initialised (the address may hold a password)
REPOSITORY_MARK = "/var/lib/mailfleet/backup-repository"
RESTORED = "/var/lib/mailfleet/backup-restored"
UNIT = "mailfleet-backup"
UNIT_FILES = tuple(f"/etc/systemd/system/{UNIT}.{kind}" for kind in ("service", "timer"))
CACHE_DIR = "/var/cache/mailfleet/restic"
# constant paths only, quoted anyway: the prefix of every restic command on a host
ENVIRONMENT = " ".join(f"{name}={shlex.quote(value)}" for name, value in {
    "RESTIC_REPOSITORY_FILE": REPOSITORY_FILE, "RESTIC_PASSWORD_FILE": PASSWORD_FILE,
    "RESTIC_CACHE_DIR": CACHE_DIR}.items())
RESTIC = f"{ENVIRONMENT} restic"
# what a rebuilt host needs besides the packages and mailfleet.toml
PATHS = [mailstore.VMAIL_DIR, opendkim.KEY_DIR, certs.TLS_DIR, "/etc/mailfleet", PG_DIR,
         "/var/lib/mailfleet"]

SNAPSHOT = {"backup": f"printf 'repository '; cat {REPOSITORY_MARK} 2>/dev/null; echo; "
                            f"printf 'last '; cat {STAMP} 2>/dev/null; echo; "
                            # before its first backup: has this name a history to restore?
                            f"if [ ! -e {STAMP} ] && [ ! -e {RESTORED} ] && [ -e {REPOSITORY_FILE} ]; "
                            f"then printf 'history '; ({RESTIC} snapshots --json --tag mailfleet "
                            f"--host \"$(hostname -f)\" 2>/dev/null || true) | grep -o '\"id\"' "
                            f"| wc -l; fi"}


def paths(plan: HostPlan) -> list[str]:
    """What the snapshots hold: PATHS, and Radicale's calendars where it runs."""
    return PATHS + ([radicale.STORAGE] if plan.radicale else [])


def local_password(config) -> str:
    """The repository password from this machine, made (0600) the first time."""
    path = Path(config.backup.password_file).expanduser()
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(path, secrets.token_urlsafe(32) + "\n")
        password = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(f"backup.password_file: cannot use {path} ({err.strerror}).") from None
    if len(password) < 16:
        raise ConfigError(f"backup.password_file: {path} holds fewer than 16 characters.")
    return password


def repository_digest(url: str) -> str:
    """What REPOSITORY_MARK holds: the address's sha256, not the address (it may hold a
    password and the mark is not a secret file)."""
    return hashlib.sha256(url.encode()).hexdigest()


@operation()
def repository(digest: str, marked: str):
    """Initialise the restic repository once (an existing one is only checked to open)."""
    if marked == digest:
        host.noop("the restic repository is initialised")
        return
    yield (f"{{ {RESTIC} cat config >/dev/null 2>&1 || {RESTIC} init --quiet; }} && "
           f"echo {digest} > {REPOSITORY_MARK}")


def script(config, plan: HostPlan, postgresql: str, home: str = "") -> str:
    """The backup script (run by the timer and by `backup run`); `home`: this mail host's
    name among several, whose snapshots leave out the replicas it keeps for the others."""
    settings = config.backup
    return render("backup/mailfleet-backup.sh.j2", environment=ENVIRONMENT, pg_dir=PG_DIR,
                  pg_bin=f"/usr/lib/postgresql/{postgresql}/bin",
                  paths=paths(plan), restored_file=RESTORED,
                  keep_daily=settings.keep_daily, keep_weekly=settings.keep_weekly,
                  keep_monthly=settings.keep_monthly, stamp_file=STAMP, home=home,
                  vmail_dir=mailstore.VMAIL_DIR, database=DATABASE)


@operation()
def stop_backups(paths: list[str]):
    """Backups switched off: the timer stops, mailfleet's units, script, repository address,
    password copy and restic cache go. The repository itself and the local base backups and
    WAL in ROOT stay: they are the user's data (a restore may still need them)."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    yield (f"systemctl disable --now {UNIT}.timer >/dev/null 2>&1; "
           f"systemctl stop {UNIT}.service >/dev/null 2>&1; "
           f"rm -f {quoted} && rm -rf {shlex.quote(CACHE_DIR)} && systemctl daemon-reload")


def retire(ctx: HostContext) -> None:
    """Undo what deploy set up, where backups are off (features.backups = false, no [backup]
    repository, no mail role): only when mailfleet's setup is there (per the snapshot), so a
    second deploy changes nothing. PostgreSQL stops archiving WAL (archive_mode needs a
    restart: once, only when the archive file was there)."""
    archive = postgres.archive_conf(ctx)
    present = [path for path in (REPOSITORY_FILE, PASSWORD_FILE, OLD_ENV_FILE, SCRIPT,
                                 *UNIT_FILES, archive)
               if isinstance(ctx.file_state(path), FileState)]
    if not present:
        return
    ctx.op(stop_backups, name=f"Stop backups (the repository and {ROOT} are kept)",
           paths=present)
    if archive in present:
        patroni.restart_postgresql(ctx, "WAL archiving off", undo="")


def deploy(ctx: HostContext) -> None:
    if not ctx.plan.backup_repository:
        # `check` warns: backups are wanted but have nowhere to go; what an earlier
        # repository set up goes, as when backups are switched off
        retire(ctx)
        return
    settings = ctx.config.backup
    release = platform(ctx)
    ctx.op(config_file, name="Keep the backup repository password", dest=PASSWORD_FILE,
           content=local_password(ctx.config) + "\n", mode="600", secret=True)
    # root's, but PostgreSQL must pass through it (an account archive could have made it 700)
    ctx.op(files.directory, name=f"Create {ROOT}", path=ROOT, user="root", group="root",
           mode="755")
    for path in (PG_DIR, WAL_DIR):  # PostgreSQL writes both (pg_basebackup, archive_command)
        ctx.op(files.directory, name=f"Create {path}", path=path, user="postgres",
               group="postgres", mode="700")
    # a joining member's PostgreSQL is still being copied: it starts archiving with the
    # settings written before Patroni started it (postgres.cluster_members_only), and its
    # first backup runs once it streams (cli/deploy.py, first_backups)
    joining = joins(ctx)
    if not joining:
        archive = postgres.archive_settings(ctx)
        patroni.restart_postgresql(ctx, "archiving", undo=postgres.archive_conf(ctx),
                                   _if=ctx.changed(archive))
    # the address byte for byte (restic reads it itself), root's only: it may hold a password
    ctx.op(config_file, name=f"Write {REPOSITORY_FILE}", dest=REPOSITORY_FILE, mode="600",
           content=settings.repository, secret=True)
    ctx.op(files.file, name=f"Remove {OLD_ENV_FILE} (shell code; restic reads files now)",
           path=OLD_ENV_FILE, present=False)
    state = parse_status(ctx.snapshot("backup"))
    ctx.op(repository, name="Initialise the backup repository",
           digest=repository_digest(settings.repository), marked=state.get("repository", ""))
    ctx.op(config_file, name="Install the backup script", dest=SCRIPT, mode="755",
           content=script(ctx.config, ctx.plan, release.postgresql,
                          ctx.plan.host if ctx.plan.replicated else ""))
    units = [ctx.op(config_file, name=f"Write {UNIT}.{kind}",
                    dest=f"/etc/systemd/system/{UNIT}.{kind}",
                    content=render(f"backup/{UNIT}.{kind}.j2", script=SCRIPT,
                                   schedule=settings.schedule))
             for kind in ("service", "timer")]
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(*units))
    ctx.service(f"{UNIT}.timer", restart_when=(units[1],))
    if not joining and not state.get("last") and state.get("history", "0") == "0":
        # a host is not backed up until a backup has worked: the first one runs now (a
        # rebuilt host whose name has snapshots waits for `backup restore` instead)
        ctx.op(first_backup, name="Run the first backup")


@operation()
def first_backup():
    yield FIRST_BACKUP


# the script itself, not its unit: in a container a quick second start of the unit can
# fail with 219/CGROUP while systemd still tears down the first run's cgroup. Exit 3:
# the script found this name's history in the repository and waits for a restore.
FIRST_BACKUP = f"{SCRIPT} || [ $? -eq 3 ]"


def joins(ctx: HostContext) -> bool:
    """This host joins the cluster in this deploy (its database is copied meanwhile)."""
    return bool(ctx.plan.cluster) and ctx.plan.host in postgres.cluster_state(ctx).joining


def first_backups(config, hosts: list[HostSettings]) -> dict[str, str]:
    """The first backup of hosts that joined a cluster, once their database streams (after
    the deploy): {host: why it failed}."""
    failed = {}
    for settings in hosts:
        try:
            ssh_run(settings, FIRST_BACKUP, timeout=900)
        except DeployError as err:
            failed[settings.name] = f"its first backup failed: {err.message}"
    return failed


# -- what `check` and `backup verify` read ---------------------------------------------------

STATUS = (f"printf 'last '; cat {STAMP} 2>/dev/null; echo; "
          + postgres.psql_query("SELECT 'wal ' || coalesce(to_char(last_archived_time AT TIME "
                                "ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '') || ' ' || "
                                "failed_count FROM pg_stat_archiver")
          + f"; printf 'timer '; systemctl is-active {UNIT}.timer || true")


def parse_status(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            found[key] = value.strip()
    return found


def checks(engine: Engine) -> list[CheckResult]:
    config = engine.config
    results = []
    now = datetime.now(timezone.utc)
    for name, text in engine.facts(Command, command=STATUS).items():
        if config.backup.repository is None:
            results.append(CheckResult(name, "backups", "warn", "no [backup] repository set",
                                       "set [backup] repository in mailfleet.toml and deploy"))
            continue
        status = parse_status(text or "")
        last = status.get("last", "")
        fix = f"see `journalctl -u {UNIT}` on the host; run `mailfleet backup run`"
        if not last:
            results.append(CheckResult(name, "last backup", "fail", "none yet", fix))
        else:
            hours = (now - datetime.fromisoformat(last.replace("Z", "+00:00"))).total_seconds() / 3600
            ok = hours <= config.backup.max_age_hours
            results.append(CheckResult(name, "last backup", "ok" if ok else "fail",
                                       f"{hours:.1f} hours ago ({last})", None if ok else fix))
        wal, _, failed = status.get("wal", "").partition(" ")
        wal_ok = bool(wal) and failed in ("", "0")
        results.append(CheckResult(name, "WAL archiving", "ok" if wal_ok else "warn",
                                   f"last segment archived {wal or 'never'}, {failed or 0} failures",
                                   None if wal_ok else "see `journalctl -u postgresql` on the host"))
        timer = status.get("timer", "unknown")
        results.append(CheckResult(name, "backup timer", "ok" if timer == "active" else "fail",
                                   f"{UNIT}.timer {timer}", None if timer == "active" else
                                   "run `mailfleet deploy`"))
    return results


# -- what `backup run`, `backup list` and `backup verify` run on the host ---------------------

def run_now(settings: HostSettings, force: bool = False) -> None:
    """The backup script as the timer's unit runs it (and serialised with it by a lock); with
    `force`, also on a rebuilt host that has not been restored yet."""
    ssh_run(settings, ("MAILFLEET_BACKUP_FORCE=1 " if force else "")
            + f"nice -n 10 ionice -c 3 {SCRIPT}", timeout=6 * 3600)


def snapshots(settings: HostSettings) -> list[dict]:
    """restic's JSON list of mailfleet's snapshots in the repository, oldest first."""
    text = ssh_run(settings, f"{RESTIC} snapshots --json --tag mailfleet", timeout=600)
    return json.loads(text or "[]") or []


def integrity_problem(settings: HostSettings) -> str | None:
    """`restic check` on the repository: None when intact, else its last line."""
    out = ssh_run(settings, f"{RESTIC} check 2>&1 && echo MAILFLEET-CHECK-OK || true",
                  timeout=3600)
    if "MAILFLEET-CHECK-OK" in out:
        return None
    return (out.strip().splitlines() or ["failed"])[-1]


def facts(ctx: HostContext) -> list[FactRead]:
    """What deploy's pyinfra operations ask (engine/facts.py)."""
    timer = [f"{UNIT}.timer"]  # systemd.service: not one of the snapshot's units
    return [*((Directory, {"path": path}) for path in (ROOT, PG_DIR, WAL_DIR)),
            (File, {"path": OLD_ENV_FILE}),
            *([(SystemdStatus, {"services": timer}), (SystemdEnabled, {"services": timer})]
              if ctx.plan.backup_repository else [])]


SERVICE = Service("backup", applies=lambda plan: plan.backups,
                  packages=lambda plan: PACKAGES if plan.backup_repository else [],
                  deploy=deploy, retire=retire, checks=checks, reads=(STATUS,), snapshot=SNAPSHOT,
                  facts=facts,
                  # the units (the rest of its files lie below other services' paths): the
                  # snapshot lists them, so retire knows whether mailfleet's setup is there
                  managed_paths=UNIT_FILES)
