"""The people who can log in: one named admin user with SSH keys and passwordless sudo;
the provider's default users (Vultr's linuxuser) deleted.

After this step and `sshd`, a fresh VPS has exactly one login. The admin user's key is
admin.ssh_key plus the public half of the key mailfleet connects with, so the
operator who deployed can always log in as the admin afterwards.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pyinfra.api import operation
from pyinfra.facts.files import Directory, File
from pyinfra.facts.server import AuthorizedKeys, Command
from pyinfra.operations import files, server

from mailfleet.config import Config, HostSettings
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.facts import USER_FACTS, FactRead
from mailfleet.engine.operations import UPLOAD_DIR
from mailfleet.errors import ConfigError, DeployError
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service
from mailfleet.templating import render

SUDOERS = "/etc/sudoers.d/mailfleet"
KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-")

_USERS = "getent passwd | cut -d: -f1,3,7"
SNAPSHOT = {"users": _USERS}


def public_keys(config: Config, settings: HostSettings) -> list[str]:
    """The admin's keys: admin.ssh_key (text or .pub file), and always the public half of
    the key mailfleet connects with, because the next deploys log in as the admin with it."""
    keys = []
    value = config.admin.ssh_key
    if value and value.strip().startswith(KEY_PREFIXES):
        keys.append(value.strip())
    elif value:
        keys.append(_read_key(Path(value).expanduser(), "admin.ssh_key"))
    if settings.ssh_key:
        key = Path(settings.ssh_key).expanduser()
        keys.append(_read_key(key.with_name(key.name + ".pub"),
                              f"the public half of hosts {settings.name!r} ssh_key"))
    if not keys:
        raise ConfigError("admin.ssh_key is not set, and hosts "
                          f"{settings.name!r} has no ssh_key whose .pub could be used.",
                          hint='Set admin.ssh_key = "~/.ssh/id_ed25519.pub" (or the key itself).')
    return list(dict.fromkeys(keys))


def _read_key(path: Path, source: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(f"{source} ({path}) cannot be read: {err.strerror}.") from err
    except UnicodeDecodeError:
        raise ConfigError(f"{source} ({path}) is not an OpenSSH public key "
                          "(not UTF-8 text).") from None
    if not text.startswith(KEY_PREFIXES):
        raise ConfigError(f"{source} ({path}) is not an OpenSSH public key.")
    return text


def parse_users(text: str) -> dict[str, tuple[int, str]]:
    """{name: (uid, shell)} from `_USERS`."""
    users = {}
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[1].isdigit():
            users[parts[0]] = (int(parts[1]), parts[2])
    return users


@operation()
def remove_user(user: str):
    """Delete a login with its home and mail spool, after ending its processes."""
    quoted = shlex.quote(user)
    yield (f"loginctl terminate-user {quoted} 2>/dev/null; pkill -KILL -u {quoted} 2>/dev/null; "
           f"userdel -r {quoted} 2>/dev/null; ! id -u {quoted} >/dev/null 2>&1")


def deploy(ctx: HostContext) -> None:
    admin = ctx.config.admin
    keys = public_keys(ctx.config, ctx.settings)
    users = parse_users(ctx.snapshot("users"))
    removed = [u for u in admin.remove_users if u in users and u != ctx.settings.ssh_user]
    for user in removed:
        ctx.op(remove_user, name=f"Remove the provider's user {user}", user=user)
    holder = next((u for u, (uid, _) in users.items() if uid == admin.uid), None)
    if holder and holder != admin.user and holder not in removed:
        raise DeployError(f"uid {admin.uid} on {ctx.settings.name} belongs to {holder}, so the "
                          f"admin user {admin.user} cannot have it.",
                          hint="Set admin.uid to a free uid, or add that user to admin.remove_users.")
    ctx.op(server.group, name=f"Create the group {admin.user}", group=admin.user, gid=admin.uid)
    ctx.op(server.user, name=f"Create the admin user {admin.user}", user=admin.user,
           uid=admin.uid, group=admin.user, groups=["sudo"], shell="/bin/bash",
           home=f"/home/{admin.user}", create_home=True, public_keys=keys, delete_keys=True)
    ctx.op(config_file, name="Write the sudo rule for the admin group", dest=SUDOERS,
           content=render("admin/sudoers.j2"), mode="440", validate="visudo -cf {path}")
    if not ctx.settings.sudo:  # where the next deploys, as the admin, stage uploads
        ctx.op(files.directory, name="Create the admin's upload directory", path=UPLOAD_DIR,
               user=admin.user, group=admin.user, mode="700")


def _check_read(engine: Engine, plan: object = None) -> str:
    user = engine.config.admin.user
    return (f"id -nG {shlex.quote(user)} 2>/dev/null | tr ' ' '\\n' | grep -qx sudo "
            f"&& echo sudo; visudo -cf {SUDOERS} >/dev/null 2>&1 && echo sudoers; {_USERS}")


def checks(engine: Engine) -> list[CheckResult]:
    admin = engine.config.admin
    command = _check_read(engine)
    results = []
    for name, text in engine.facts(Command, command=command).items():
        text = text or ""
        users = parse_users(text)
        fix = "run `mailfleet deploy`"
        ok = admin.user in users and "sudo" in text.split() and "sudoers" in text.split()
        results.append(CheckResult(name, "admin user", "ok" if ok else "fail",
                                   f"{admin.user} in group sudo, passwordless sudo rule valid"
                                   if ok else f"{admin.user} missing, not in sudo, or the sudo "
                                   "rule is invalid", fix))
        left = [u for u in admin.remove_users if u in users]
        results.append(CheckResult(name, "provider users", "fail" if left else "ok",
                                   f"still present: {', '.join(left)}" if left else
                                   f"none of {', '.join(admin.remove_users) or '(none listed)'}",
                                   fix))
    return results


def facts(ctx: HostContext) -> list[FactRead]:
    """What server.user and server.group ask (engine/facts.py)."""
    home = f"/home/{ctx.config.admin.user}"
    keys = f"{home}/.ssh/authorized_keys"
    found = [*USER_FACTS, (Directory, {"path": home}), (Directory, {"path": f"{home}/.ssh"}),
             (AuthorizedKeys, {"user": ctx.config.admin.user, "path": keys}),
             (File, {"path": keys})]
    if not ctx.settings.sudo:
        found.append((Directory, {"path": UPLOAD_DIR}))
    return found


SERVICE = Service("admin", deploy=deploy, checks=checks, snapshot=SNAPSHOT, facts=facts,
                  reads=lambda engine, plan: [_check_read(engine)],
                  managed_paths=("/etc/sudoers.d",))
