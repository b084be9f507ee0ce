"""The SSH server: keys only, no root, only the admin user, modern algorithms.

The one change that can lock the operator out, so it is applied in steps: the candidate is
checked with `sshd -t` against the real main config before it replaces the old drop-in;
after the reload mailfleet opens a *new* SSH connection as the admin user with the new
settings, and if that fails it puts the previous drop-in back over the connection it still
has. Only then is the deploy allowed on, and at its end mailfleet.toml is switched to log
in as the admin user (root cannot log in any more).
"""

from __future__ import annotations

import shlex
import subprocess
import time

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command
from pyinfra.operations import python

from mailfleet.config import HostSettings
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.runner import explain_failure
from mailfleet.engine.tunnel import ssh_base
from mailfleet.errors import DeployError
from mailfleet.services.checks import CheckResult
from mailfleet.services.platform import platform
from mailfleet.services.shape import Service, Unit
from mailfleet.templating import render

DROPIN = "/etc/ssh/sshd_config.d/00-mailfleet.conf"
PREVIOUS = DROPIN + ".mailfleet-prev"
KEX = {
    12: "sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org",
    13: "mlkem768x25519-sha256,sntrup761x25519-sha512@openssh.com,curve25519-sha256,"
        "curve25519-sha256@libssh.org",
}
OPENSSH = {12: "9.2", 13: "10.0"}
# the ports sshd listens on: the firewall opens them, fail2ban watches them, ssh.vpn_only
# moves their firewall rule onto the tunnel
PORTS = "sshd -T 2>/dev/null | grep -i '^port '"
SNAPSHOT = {"sshd ports": PORTS}
# The candidate, read before everything else, tested against the real sshd_config.
VALIDATE = (
    "( d=$(mktemp -d) && "
    "sed 's#^Include /etc/ssh/sshd_config.d/\\*.conf#Include {path}\\n&#' /etc/ssh/sshd_config "
    "> \"$d/sshd_config\" && sshd -t -f \"$d/sshd_config\"; rc=$?; rm -rf \"$d\"; exit $rc )"
)


def settings(ctx: HostContext) -> str:
    debian = platform(ctx).debian
    return render("ssh/mailfleet.conf.j2", admin=ctx.config.admin.user, kex=KEX[debian],
                  openssh=OPENSSH[debian], extra=ctx.config.admin.sshd_settings)


def parse_ports(text: str) -> set[int]:
    """The ports in `sshd -T`'s `port N` lines (other lines are ignored); 22 if none."""
    found = {int(line.split()[-1]) for line in text.splitlines()
             if line.strip().lower().startswith("port ") and line.split()[-1].isdigit()}
    return found or {22}


def ports(ctx: HostContext) -> set[int]:
    """The ports sshd listens on now (from the deploy's host snapshot)."""
    return parse_ports(ctx.snapshot("sshd ports"))


@operation()
def keep_previous():
    """Copy the current drop-in aside (or note that there was none) for a rollback."""
    yield f"cp -p {DROPIN} {PREVIOUS} 2>/dev/null || rm -f {PREVIOUS}"


# `systemctl reload ssh` returns once sshd got its SIGHUP, before the re-executed sshd listens
# again: a login in that moment is closed or refused. Such answers are asked again; a refused
# key or password ("Permission denied") is not.
ATTEMPTS = 6
PAUSE = 2.0


def admin_login_works(settings: HostSettings, admin: str, command: str = "sudo -n true",
                      attempts: int = ATTEMPTS) -> tuple[bool, str]:
    """A brand-new SSH connection as the admin user, with sudo: what the next deploy needs."""
    as_admin = settings.model_copy(update={"ssh_user": admin})
    why = "no output"
    for attempt in range(attempts):
        if attempt:
            time.sleep(PAUSE)
        done = subprocess.run([*ssh_base(as_admin), settings.address, command],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if done.returncode == 0:
            return True, why
        if not transient(done.returncode, why):
            break
    return False, why


def transient(returncode: int, why: str) -> bool:
    """Did the SSH client fail to reach a listening sshd (exit 255, not a refused login)?"""
    return returncode == 255 and "Permission denied" not in why and "Host key" not in why


def _verify_or_roll_back(settings: HostSettings, admin: str) -> None:
    # (callbacks do not get the host's sudo setting: pass it)
    ok, why = admin_login_works(settings, admin)
    if ok:
        host.run_shell_command(f"rm -f {PREVIOUS}", _sudo=settings.sudo)
        return
    host.run_shell_command(
        f"if [ -f {PREVIOUS} ]; then mv -f {PREVIOUS} {DROPIN}; else rm -f {DROPIN}; fi; "
        "systemctl reload ssh", _sudo=settings.sudo)
    message = (f"The admin user {admin} could not log in over SSH with the new settings "
               f"({why}); the previous SSH settings were put back.")
    explain_failure(settings.name, message)
    raise DeployError(message)


def verify_step(admin: str) -> str:
    """The name of the step after which only `admin` can log in (when it did not fail)."""
    return f"Log in as {admin} with the new SSH settings (rolled back if it fails)"


def deploy(ctx: HostContext) -> None:
    content = settings(ctx)
    changing = not ctx.file_matches(DROPIN, content)
    if changing:
        ctx.op(keep_previous, name="Keep the current SSH settings for a rollback")
    written = ctx.op(config_file, name=f"Write the SSH server settings {DROPIN}", dest=DROPIN,
                     content=content, validate=VALIDATE)
    ctx.service("ssh", reload_when=(written,))
    if changing and not ctx.check:
        ctx.op(python.call, name=verify_step(ctx.config.admin.user),
               function=_verify_or_roll_back, settings=ctx.settings, admin=ctx.config.admin.user)


# `check` asks sshd what it would apply to a connection from the Internet, for root and for
# the admin: a Match block (in any drop-in) changes settings per user or address, so asking
# without one shows nothing. A documentation address, only a string for `sshd -T`: no traffic.
FROM = "203.0.113.1"
_KEYS = ("permitrootlogin", "passwordauthentication", "kbdinteractiveauthentication",
         "permitemptypasswords", "authenticationmethods", "allowusers")
# lines outside mailfleet's drop-in that can loosen it, named when the check fails
_ELSEWHERE = ("match", "include", "permitrootlogin", "passwordauthentication",
              "kbdinteractiveauthentication", "challengeresponseauthentication",
              "permitemptypasswords", "authenticationmethods", "allowusers", "pubkeyauthentication")


def effective_command(admin: str) -> str:
    """`sshd -T` for root and the admin from FROM, then the lines elsewhere that could matter."""
    parts = []
    for user in ("root", admin):
        spec = shlex.quote(f"user={user},host={FROM},addr={FROM}")
        parts.append(f"echo {shlex.quote('== user ' + user)}; sshd -T -C {spec} 2>&1 | "
                     f"grep -Ei '^({'|'.join(_KEYS)}) '")
    parts.append(f"echo '== files'; grep -HniE '^[[:space:]]*({'|'.join(_ELSEWHERE)})\\b' "
                 f"/etc/ssh/sshd_config /etc/ssh/sshd_config.d/*.conf 2>/dev/null | "
                 f"grep -v '^{DROPIN}:'")
    return "; ".join(parts) + "; true"


def parse_effective(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            found[key.lower()] = (found[key.lower()] + " " + value) if key.lower() in found else value
    return found


def split_sections(text: str) -> dict[str, str]:
    """The output of effective_command by its `== NAME` markers."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("== "):
            current = sections.setdefault(line[3:].strip(), [])
        else:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def loosened(found: dict[str, str], admin: str) -> list[str]:
    """What sshd would apply that is looser than mailfleet's settings (`key value` each)."""
    wanted = {"permitrootlogin": "no", "passwordauthentication": "no",
              "kbdinteractiveauthentication": "no", "permitemptypasswords": "no",
              "authenticationmethods": "publickey", "allowusers": admin}
    return [f"{key} {found.get(key, '(not set)')}" for key, value in wanted.items()
            if found.get(key) != value]


def suspects(text: str) -> list[str]:
    """`FILE:LINE` of the lines outside mailfleet's drop-in that can loosen it (grep -Hn
    output); Debian's own `Include` of the drop-in directory and plain `no`s are harmless."""
    found = []
    for line in text.splitlines():
        path, _, rest = line.partition(":")
        number, _, setting = rest.partition(":")
        words = setting.replace("=", " ").split()
        if not words or not number.isdigit():
            continue
        if words[0].lower() == "include" and words[1:] == ["/etc/ssh/sshd_config.d/*.conf"]:
            continue
        if words[0].lower() not in ("match", "include", "allowusers", "authenticationmethods") \
                and words[1:] == ["no"]:
            continue
        found.append(f"{path}:{number} ({' '.join(words)})")
    return found


def checks(engine: Engine) -> list[CheckResult]:
    admin = engine.config.admin.user
    fix = "run `mailfleet deploy`"
    results = []
    for name, text in engine.facts(Command, command=effective_command(admin)).items():
        sections = split_sections(text or "")
        views = {user: parse_effective(sections.get(f"user {user}", "")) for user in ("root", admin)}
        problems = [f"{user}: " + ", ".join(loose) for user, found in views.items()
                    if (loose := loosened(found, admin))]
        if problems:
            where = suspects(sections.get("files", ""))
            message = (f"sshd would allow, from {FROM}, " + "; ".join(problems)
                       + (("; set in " + ", ".join(where)) if where else ""))
        else:
            message = f"keys only, no root, only {admin} (asked sshd for root and {admin})"
        results.append(CheckResult(name, "SSH settings", "fail" if problems else "ok", message,
                                   "remove those lines, then " + fix if problems else fix))
    for name, settings in engine.settings.items():
        results.append(_probe_root(name, settings, fix))
    return results


def _probe_root(name: str, settings: HostSettings, fix: str) -> CheckResult:
    """From outside, as an attacker would: can root log in, and which methods are offered?"""
    as_root = settings.model_copy(update={"ssh_user": "root"})
    done = subprocess.run([*ssh_base(as_root), "-o", "PreferredAuthentications=publickey,password",
                           "-o", "NumberOfPasswordPrompts=0", settings.address, "true"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    offered = done.stderr.rpartition("Permission denied (")[2].partition(")")[0]
    if done.returncode == 0:
        return CheckResult(name, "root login refused", "fail", "root logged in over SSH", fix)
    if offered != "publickey":
        return CheckResult(name, "root login refused", "fail",
                           f"root refused, but the server offers: {offered or done.stderr.strip()}",
                           fix)
    return CheckResult(name, "root login refused", "ok",
                       "root refused; only public keys offered (no passwords)")


SERVICE = Service("sshd", deploy=deploy, checks=checks, units=(Unit("ssh", checked=False),),
                  reads=lambda engine, plan: [effective_command(engine.config.admin.user)],
                  snapshot=SNAPSHOT, managed_paths=("/etc/ssh/sshd_config.d",))
