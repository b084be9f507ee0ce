"""The mail of a removed mailbox or domain on its host: kept, packed into an archive, or
deleted; and the end of removed or disabled users' open sessions. The host commands the
account commands (cli/users.py, cli/domains.py) run besides their database changes.
"""

from __future__ import annotations

import shlex

from mailfleet.config import HostSettings
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import UsageError
from mailfleet.services.backup import ROOT as BACKUP_ROOT
from mailfleet.services.replication import DOVEADM_PORT, IO_TIMEOUT, LOCK_TIMEOUT
from mailfleet.services.mailstore import VMAIL_DIR

ARCHIVE_DIR = f"{BACKUP_ROOT}/mailboxes"


def path_component(value: str, what: str) -> str:
    """`value` as one directory name under the mail store, or a usage error: a database
    from before today's rules may hold a mailbox named "/" or "..", whose "mail directory"
    would be the whole domain's (rm -rf /var/mail/vmail/DOMAIN//)."""
    if value in ("", ".", "..") or "/" in value or "\0" in value:
        raise UsageError(f"The {what} {value!r} is not a single path component, so mailfleet "
                         "will not archive or delete a mail directory named after it; "
                         "nothing was changed.",
                         hint="Remove it without --archive or --purge (its mail is kept), "
                              "then look after that mail by hand.")
    return value


def mail_dir(domain: str, local: str | None = None, vmail: str = VMAIL_DIR) -> str:
    """The mail directory of a mailbox (or of a whole domain), each part checked to be a
    single path component."""
    path = f"{vmail}/{path_component(domain, 'domain')}"
    return path + (f"/{path_component(local, 'mailbox name')}" if local is not None else "")


def kick(settings: HostSettings, mask: str) -> None:
    """End the IMAP/ManageSieve sessions of removed or disabled users (`*@domain` for a
    whole domain): without it an open session keeps reading mail until it logs out."""
    ssh_run(settings, f"doveadm kick {shlex.quote(mask)} >/dev/null 2>&1 || true")


def copy_to(settings: HostSettings, email: str, address: str) -> bool:
    """Copy a mailbox from this host to the mail host at `address` (its VPN address) now,
    the way replication does (two-way `doveadm sync`); False when that failed."""
    out = ssh_run(settings, f"doveadm sync -T {IO_TIMEOUT} -l {LOCK_TIMEOUT} "
                            f"-u {shlex.quote(email)} "
                            f"{shlex.quote(f'tcp:{address}:{DOVEADM_PORT}')} && echo copied || true",
                  timeout=3600)
    return "copied" in out


def dispose_command(domain: str, local: str | None, how: str, vmail: str = VMAIL_DIR,
                    backup_root: str = BACKUP_ROOT, archive_dir: str = ARCHIVE_DIR) -> str | None:
    """The root shell command that archives ("archive") or deletes ("purge") a mailbox's
    (or domain's) mail; None for "keep". Every value is shlex-quoted (names come from the
    database, which may predate today's rules); the directories are parameters so a test
    can run the command against a temporary directory."""
    if how == "keep":
        return None
    path = mail_dir(domain, local, vmail)
    if how == "purge":
        return f"rm -rf -- {shlex.quote(path)}"
    parent, name = path.rsplit("/", 1)
    who = f"{local}@{domain}" if local is not None else domain
    archive = shlex.quote(f"{archive_dir}/{who}-") + '"$(date -u +%Y%m%d-%H%M%S)".tar.gz'
    return (
        f'if [ -d {shlex.quote(path)} ]; then '
        # the parent stays traversable: PostgreSQL's backups live there too
        f'install -d -m 755 {shlex.quote(backup_root)} && '
        f'install -d -m 700 {shlex.quote(archive_dir)} && '
        f'umask 077 && '
        f'a={archive} && tar -C {shlex.quote(parent)} -czf "$a" -- {shlex.quote(name)} && '
        f'rm -rf -- {shlex.quote(path)} && printf "%s\\n" "$a"; fi')


def dispose(settings: HostSettings, domain: str, local: str | None, how: str) -> str:
    """Keep, archive or delete a removed mailbox's (or whole domain's) mail on the host;
    one clause saying what happened to it."""
    command = dispose_command(domain, local, how)
    path = f"{VMAIL_DIR}/{domain}" + (f"/{local}" if local is not None else "")
    who = f"{local}@{domain}" if local is not None else domain
    if command is None:
        again = f"adding {who} again" if local else f"adding {domain} and its users again"
        return (f"its mail is kept in {path} on {settings.name} ({again} gives it back; "
                f"--archive or --purge removes it)")
    if how == "purge":
        ssh_run(settings, command)
        return f"its mail in {path} on {settings.name} was deleted"
    out = ssh_run(settings, command).strip()
    if not out:
        return f"it had no mail on {settings.name} yet ({path} did not exist)"
    return f"its mail was archived to {out} on {settings.name} and removed from {path}"
