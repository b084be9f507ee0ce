"""Restoring a host from a backup: which snapshot, which paths, the root script that puts
them back and replays PostgreSQL's WAL, and the commands `backup restore` runs on the host.

Onto the host it was taken from (a rebuilt one) or onto another (`--from`); the backups
themselves are services/backup.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from mailfleet.config import Config, HostSettings
from mailfleet.engine.snapshot import SECRETS_DIR
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import ConfigError
from mailfleet.services import backup, certs, mailstore, opendkim, radicale
from mailfleet.services.plan import make_plan
from mailfleet.templating import render

RESTORE_WORK = "/var/tmp/mailfleet-restore"
# what a restore puts back, and whose it is (restic restores numeric owners; a rebuilt host
# may have numbered its system users differently)
RESTORE_OWNERS = {mailstore.VMAIL_DIR: "vmail:vmail", opendkim.KEY_DIR: "opendkim:opendkim",
                  backup.PG_DIR: "postgres:postgres", radicale.STORAGE: "radicale:radicale",
                  SECRETS_DIR: "root:root"}
STOPPED_FOR_RESTORE = ["mailfleet-backup.timer", "postfix", "dovecot", "opendkim"]


def parse_time(text: str) -> datetime:
    """An ISO 8601 moment; without a zone it is UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def snapshot_time(snapshot: dict) -> datetime:
    """restic's time (nanoseconds, the host's zone) as an aware datetime."""
    return parse_time(re.sub(r"(\.\d{1,6})\d*", r"\1", snapshot["time"]))


def choose_snapshot(snapshots: list[dict], source: str, wanted: str | None,
                    target: datetime | None) -> dict:
    """The snapshot a restore reads: the one asked for; for a point in time the first taken
    after it (its archived WAL reaches that moment, its mail is the closest after); else
    the newest. `snapshots` is restic's JSON, oldest first."""
    mine = [s for s in snapshots if s.get("hostname") == source]
    if not mine:
        raise ConfigError(f"the repository holds no snapshot of {source}"
                          + (f" (it has: {', '.join(sorted({s['hostname'] for s in snapshots}))})"
                             if snapshots else "") + "; give --from HOSTNAME.")
    if wanted and wanted != "latest":
        for s in mine:
            if wanted in (s["id"], s.get("short_id")):
                return s
        raise ConfigError(f"--snapshot {wanted}: no snapshot of {source} has this id "
                          "(see `mailfleet backup list`).")
    if target is None:
        return mine[-1]
    later = [s for s in mine if snapshot_time(s) > target]
    if not later:
        raise ConfigError(f"--to-time {target:%Y-%m-%dT%H:%M:%SZ}: the newest snapshot of {source} "
                          f"was taken at {mine[-1]['time'][:19]}Z; WAL archived after it is not in "
                          "the repository, so the latest state is as far as a restore can go.")
    return later[0]


def restore_paths(chosen: dict, same_host: bool, radicale_here: bool) -> list[str]:
    """The paths put back: data, keys, secrets, the PostgreSQL backups; Radicale's
    collections onto a host that runs it; the TLS material only onto a host of the same name
    (a certificate names its host)."""
    wanted = [mailstore.VMAIL_DIR, opendkim.KEY_DIR, SECRETS_DIR, backup.PG_DIR]
    if radicale_here:
        wanted.append(radicale.STORAGE)
    if same_host:
        wanted.append(certs.TLS_DIR)
    held = chosen.get("paths", [])
    covered = [p for p in wanted if any(p == h or p.startswith(h.rstrip("/") + "/") for h in held)]
    missing = [p for p in (mailstore.VMAIL_DIR, SECRETS_DIR, backup.PG_DIR) if p not in covered]
    if missing:
        raise ConfigError(f"snapshot {chosen.get('short_id', chosen['id'])} does not hold "
                          f"{', '.join(missing)}: it cannot rebuild a mail host.")
    return covered


def restore_script(chosen: dict, paths: list[str], target: datetime | None,
                   postgresql: str) -> str:
    # what writes to the restored paths stops first (Radicale when its collections return)
    units = STOPPED_FOR_RESTORE + (["radicale"] if radicale.STORAGE in paths else [])
    return render("backup/mailfleet-restore.sh.j2", snapshot=chosen["id"],
                  short_id=chosen.get("short_id", chosen["id"][:8]),
                  source_host=chosen["hostname"], environment=backup.ENVIRONMENT,
                  work_dir=RESTORE_WORK,
                  data_dir=f"/var/lib/postgresql/{postgresql}/main",
                  restore_conf=f"/etc/postgresql/{postgresql}/main/conf.d/mailfleet-restore.conf",
                  paths=paths, owners=[(p, RESTORE_OWNERS[p]) for p in paths if p in RESTORE_OWNERS],
                  pg_dir=backup.PG_DIR, units=units,
                  target_time=target and f"{target:%Y-%m-%d %H:%M:%S}+00",
                  base_before=target and f"{target:%Y%m%dT%H%M%SZ}",
                  restored_file=backup.RESTORED, secrets_dir=SECRETS_DIR,
                  unit=f"postgresql@{postgresql}-main",
                  log=f"/var/log/postgresql/postgresql-{postgresql}-main.log")


def check_restore_values(chosen: dict, postgresql: str) -> None:
    """What the restore script is built from comes from the repository (any host that can
    write to it names its snapshots) and from the host: each must be what restic and Debian
    make (hex ids, a host name, a PostgreSQL version) before it goes into a root script."""
    wanted = [("snapshot id", chosen.get("id", ""), r"[0-9a-f]{8,64}"),
              ("snapshot id", chosen.get("short_id", chosen.get("id", "")[:8]), r"[0-9a-f]{8,64}"),
              ("snapshot host name", chosen.get("hostname", ""), r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}"),
              ("PostgreSQL version on the host", postgresql, r"[0-9]{1,3}")]
    for what, value, pattern in wanted:
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise ConfigError(f"The {what} {value!r} is not one restic or Debian would make; "
                              "nothing was restored.")


# -- on the host ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RestorePlan:
    """What `backup restore` will do, decided before it asks for confirmation."""
    source: str  # whose snapshots (a host's full name)
    chosen: dict  # restic's JSON of the snapshot
    paths: list[str]
    target: datetime | None
    postgresql: str  # the host's PostgreSQL version

    def script(self) -> str:
        return restore_script(self.chosen, self.paths, self.target, self.postgresql)


def plan(settings: HostSettings, config: Config, source: str | None, wanted: str | None,
         target: datetime | None) -> RestorePlan:
    """Read the host and the repository (two SSH commands) and choose what to restore; a
    ConfigError, before anything is changed, when it cannot be done."""
    if settings.name in {m.name for m in config.cluster_members()}:
        raise ConfigError(f"{settings.name} is a member of the accounts database's cluster: its "
                          "database is the cluster's (Patroni copies it from the primary), and a "
                          "restore would replace it behind Patroni's back. Restore onto a host "
                          "outside the cluster (docs/cluster.md).")
    own_name, postgresql, deployed = host_state(settings)
    if not deployed:
        raise ConfigError(f"{settings.name} has no backup set-up yet: run `mailfleet deploy "
                          f"--limit {settings.name}` first, then restore.")
    source = source or own_name
    chosen = choose_snapshot(backup.snapshots(settings), source, wanted, target)
    check_restore_values(chosen, postgresql)
    radicale_here = make_plan(config, settings).radicale
    return RestorePlan(source, chosen, restore_paths(chosen, source == own_name, radicale_here),
                       target, postgresql)


def host_state(settings: HostSettings) -> tuple[str, str, bool]:
    """(the host's full name, its newest PostgreSQL version, whether deploy set up its
    backups) in one SSH command."""
    state = ssh_run(settings, f"hostname -f; ls /etc/postgresql 2>/dev/null | sort -n | tail -n 1; "
                              f"test -e {backup.REPOSITORY_FILE} && echo deployed || true")
    own_name, postgresql, deployed = (state.split() + ["", "", ""])[:3]
    return own_name, postgresql, deployed == "deployed"


def run(settings: HostSettings, script: str) -> str:
    """Run a restore script (restore_script) on the host; its output."""
    return ssh_run(settings, script, timeout=6 * 3600)
