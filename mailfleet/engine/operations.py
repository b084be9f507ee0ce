"""mailfleet's own pyinfra operations: the few that every service needs and pyinfra lacks.

- `config_file`: write a config file only after the service's own checker accepts it
  (a broken Postfix or sshd config must never replace a working one).
- `debconf`: preseed answers before a package's first install.
`service` in services is plain `pyinfra.operations.systemd.service`.
"""

from __future__ import annotations

import difflib
import hashlib
import posixpath
import shlex
from io import StringIO

from pyinfra import host, logger
from pyinfra.api import FileUploadCommand, MaskString, QuoteString, StringCommand, operation
from pyinfra.api.exceptions import OperationValueError
from pyinfra.facts.files import Directory, File, FileContents, Sha1File
from pyinfra.facts.server import Command
from pyinfra.operations import apt

from mailfleet.engine.snapshot import STAGING_DIR, FileState

NEW_SUFFIX = ".mailfleet-new"
# owned by the SSH user when it is not root (0700): pyinfra's sudo uploads land here before
# they are copied into place, instead of a predictable name in /tmp
UPLOAD_DIR = "/var/lib/mailfleet/upload"


@operation()
def config_file(
    dest: str,
    content: str,
    validate: str | None = None,
    mode: str = "644",
    user: str = "root",
    group: str = "root",
    known: FileState | None | str = "unknown",
    secret: bool = False,
):
    """Install `content` at `dest` if it differs; run `validate` first on the new file.

    + validate: a shell command with `{path}` where the candidate file goes, e.g.
      `sshd -t -f {path}`. If it fails, the old file stays and the operation fails.
    + known: the file's state from the host snapshot (None: absent); "unknown" reads facts.
    + secret: the file holds a password; --diff says that it changed, never the content.
    """
    if "{path}" not in (validate or "{path}"):
        raise OperationValueError("validate must contain {path}")
    wanted_sha = hashlib.sha1(content.encode()).hexdigest()
    fast = known != "unknown"  # known from the snapshot: the staging directory exists
    if known == "unknown":
        info = host.get_fact(File, path=dest)
        known = FileState(str(info["mode"]), info["user"], info["group"],
                          host.get_fact(Sha1File, path=dest)) if info else None
    current = known
    if isinstance(current, FileState) and current.sha1 == wanted_sha:
        meta_cmds = []
        if current.mode != mode.lstrip("0"):
            meta_cmds.append(StringCommand("chmod", QuoteString(mode), QuoteString(dest)))
        if current.user != user or current.group != group:
            meta_cmds.append(StringCommand("chown", QuoteString(f"{user}:{group}"), QuoteString(dest)))
        if not meta_cmds:
            host.noop(f"{dest} is up to date")
            return
        yield from meta_cmds
        return

    if host.state.config.DIFF and secret:
        logger.info("  %s: content with secrets changed (not shown)", dest)
    elif host.state.config.DIFF:
        old = host.get_fact(FileContents, path=dest) if current else []
        for line in difflib.unified_diff(
            [f"{l}\n" for l in (old or [])], content.splitlines(keepends=True),
            fromfile=dest, tofile=f"{dest} (new)",
        ):
            logger.info("  %s", line.rstrip("\n"))

    if fast:
        # one upload into mailfleet's root-only staging directory, then one command:
        # `install -D` makes missing parent directories and sets owner and mode
        stage = f"{STAGING_DIR}/{hashlib.sha1(dest.encode()).hexdigest()}"
        yield FileUploadCommand(StringIO(content), stage,
                                remote_temp_filename=host.get_temp_filename(stage))
        new, q_dest = shlex.quote(dest + NEW_SUFFIX), shlex.quote(dest)
        owner = " ".join(shlex.quote(v) for v in ("-m", mode, "-o", user, "-g", group))
        steps = [f"install -D {owner} {stage} {new}", f"rm -f {stage}"]
        if validate:  # braces: a validator with `;` must not break the && chain
            steps.append("{ " + validate.replace("{path}", new) + "; }")
        steps.append(f"mv -f {new} {q_dest}")
        script = " && ".join(steps) + f" || {{ rm -f {stage} {new}; exit 1; }}"
        yield StringCommand("sh", "-c", QuoteString(script))
        return

    parent = posixpath.dirname(dest)
    if parent and not host.get_fact(Directory, path=parent):
        yield StringCommand("mkdir", "-p", "-m", "0755", QuoteString(parent))
    tmp = dest + NEW_SUFFIX
    # the new file is made empty with its final owner and mode first (`install` creates it
    # 0600, then sets both), and the upload writes into it, keeping them: SFTP opens an
    # existing file, a sudo upload `cp`s onto it. A secret is never readable by others, not
    # even between the upload and a chmod.
    yield StringCommand("install", "-m", QuoteString(mode), "-o", QuoteString(user), "-g",
                        QuoteString(group), "/dev/null", QuoteString(tmp))
    yield FileUploadCommand(StringIO(content), tmp,
                            remote_temp_filename=host.get_temp_filename(tmp))
    if validate:
        check = validate.replace("{path}", shlex.quote(tmp))
        yield StringCommand(
            "sh", "-c",
            QuoteString(f"{check} || {{ rm -f {shlex.quote(tmp)}; exit 1; }}"),
        )
    yield StringCommand("mv", "-f", QuoteString(tmp), QuoteString(dest))


def debconf_shown(package: str) -> str:
    """The read `debconf` makes (a snapshot can answer it: engine/facts.py)."""
    return f"debconf-show {shlex.quote(package)} 2>/dev/null || true"


FIX_DB = "/usr/share/debconf/fix_db.pl"  # (in debconf, which every Debian has)


@operation()
def debconf(package: str, answers: dict[str, tuple[str, str | bool]], secret: bool = False):
    """Preseed debconf `answers` {question: (type, value)} for `package`.

    Values already set are left alone. With `secret`, values never appear in logs.
    """
    shown = host.get_fact(Command, command=debconf_shown(package)) or ""
    current: dict[str, str] = {}
    for line in shown.splitlines():
        question, _, value = line.lstrip("* ").partition(":")
        current[question.strip()] = value.strip()
    lines = []
    for question, (kind, value) in answers.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if kind != "password" and current.get(question) == text:
            continue
        if kind == "password" and question in current and current[question] != "":
            continue  # debconf-show hides passwords: set once, never churn
        lines.append(f"{package} {question} {kind} {text}")
    if not lines:
        host.noop(f"debconf answers for {package} are set")
        return
    payload = "\n".join(lines) + "\n"
    quoted = shlex.quote(payload)
    value = MaskString(quoted) if secret else quoted
    # a package installed and purged again leaves its templates without questions, and
    # debconf-set-selections then fails ("Cannot find a question"): debconf's own fix_db.pl
    # drops such orphans, after which the answers go in as on a fresh system
    yield StringCommand(
        "{", "printf", "%s", value, "|", "debconf-set-selections", "2>/dev/null", "||", "{",
        FIX_DB, ">/dev/null", "2>&1", ";", "printf", "%s", value, "|",
        "debconf-set-selections", ";", "}", ";", "}")


POLICY_RC_D = "/usr/sbin/policy-rc.d"
# the first comment line of mailfleet's own (templates/system/policy-rc.d.j2)
POLICY_MARK = "# mailfleet:"


# true when the policy-rc.d there is mailfleet's
LEFTOVER = f"grep -qs {shlex.quote('^' + POLICY_MARK)} {POLICY_RC_D}"


@operation()
def leftover_policy_removed():
    """Remove mailfleet's policy-rc.d that an install killed before its end left behind
    (it would keep package upgrades from starting the services)."""
    yield f"if {LEFTOVER}; then rm -f {POLICY_RC_D}; fi"


@operation()
def packages_installed(packages: list[str], policy: str):
    """apt.packages (no recommends), with `policy` as /usr/sbin/policy-rc.d for the length
    of the install: the services mailfleet configures are not started by their packages
    (it starts each once, configured). The script is removed when the install ends, however
    it ends (a deploy removes one that a killed install left: `leftover_policy`); a host
    with a policy-rc.d of its own keeps it and it alone."""
    commands = [str(command) for command in apt.packages._inner(packages=packages,
                                                               no_recommends=True)]
    if not commands:
        host.noop("the packages are installed")
        return
    if not policy.startswith(f"#!/bin/sh\n{POLICY_MARK}"):
        raise OperationValueError("policy must be mailfleet's own policy-rc.d")
    script = (f"if [ ! -e {POLICY_RC_D} ] || {LEFTOVER}; then "
              f"trap 'rm -f {POLICY_RC_D}' EXIT; trap 'rm -f {POLICY_RC_D}; exit 1' HUP INT TERM; "
              f"printf '%s' {shlex.quote(policy)} > {POLICY_RC_D} && chmod 755 {POLICY_RC_D}; "
              f"fi; {' && '.join(commands)}")
    yield StringCommand("sh", "-c", QuoteString(script))


@operation()
def unit_running(unit: str, was_active: bool, no_block: bool = False):
    """Start a systemd unit that the host snapshot saw stopped, unless its package's
    install has started it since (checked again on the host). `no_block`: do not wait for
    it to be up (a cluster member that is ready only once the others run too)."""
    if was_active or host.get_fact(
            Command, command=f"systemctl is-active {shlex.quote(unit)} || true") == "active":
        host.noop(f"{unit} is running")
        return
    yield StringCommand("systemctl", "start", *(["--no-block"] if no_block else []), unit)


@operation()
def unit_restarted(unit: str, no_block: bool = False):
    """Restart a systemd unit, once more after a pause if the first attempt fails: systemd
    in a container now and then cannot spawn the unit's first process at once (seen in the
    lab as "Failed to spawn executor: No such file or directory", result 'resources')."""
    quoted = ("--no-block " if no_block else "") + shlex.quote(unit)
    yield f"systemctl restart {quoted} || {{ sleep 2; systemctl restart {quoted}; }}"


@operation()
def unit_enabled(unit: str, was_enabled: bool):
    """Enable a systemd unit at boot (checked again on the host, like `unit_running`)."""
    if was_enabled or host.get_fact(
            Command, command=f"systemctl is-enabled {shlex.quote(unit)} || true") == "enabled":
        host.noop(f"{unit} is enabled")
        return
    yield StringCommand("systemctl", "enable", unit)
