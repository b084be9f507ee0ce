"""The host itself: its name, its mail name, and the base packages every later service needs."""

from __future__ import annotations

from pyinfra.facts.files import Directory, File, FindInFile
from pyinfra.facts.server import Command, Date, Hostname, Which
from pyinfra.operations import apt, files, server

from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.facts import FactRead
from mailfleet.engine.operations import STAGING_DIR, UPLOAD_DIR
from mailfleet.services.checks import CheckResult, expect
from mailfleet.services.shape import Service
from mailfleet.templating import render

BASE_PACKAGES = ["ca-certificates", "curl", "sudo", "less", "procps", "iproute2"]
# A mail server wants fresh package lists, but not an `apt-get update` on every deploy.
APT_CACHE_SECONDS = 6 * 3600


SNAPSHOT = {"resolvers": "awk '$1 == \"nameserver\" {print $2}' /etc/resolv.conf 2>/dev/null"}


def purge(packages: list[str]) -> str:
    """Shell: purge `packages` and what only they needed, config files included (what a
    switched-off feature leaves must not come back with the next install). Run after
    `export DEBIAN_FRONTEND=noninteractive` (see `purged`)."""
    return f"apt-get purge -y -q {' '.join(packages)} && apt-get autoremove --purge -y -q"


def purged(packages: list[str]) -> str:
    """`purge` as a command of its own, never asking questions."""
    return f"export DEBIAN_FRONTEND=noninteractive; {purge(packages)}"


def resolvers(ctx: HostContext) -> list[str]:
    """The host's DNS resolvers (resolv.conf): the milters, built with their own resolver
    library, are told to use them instead of recursing from the root servers themselves."""
    return ctx.snapshot("resolvers").split()


def deploy(ctx: HostContext) -> None:
    # first: config_file stages uploads here (root only)
    ctx.staging = ctx.op(files.directory, name="Create mailfleet's staging directory",
                         path=STAGING_DIR, mode="700")
    if ctx.settings.sudo:  # sudo uploads arrive here first (UPLOAD_DIR)
        ctx.op(files.directory, name="Create the SSH user's upload directory", path=UPLOAD_DIR,
               user=ctx.settings.ssh_user, mode="700")
    fqdn = ctx.fqdn
    short = fqdn.split(".", 1)[0]
    ctx.op(server.hostname, name="Set the host name", hostname=fqdn)
    # Debian resolves its own name through this line; Postfix needs it to know myhostname.
    ctx.op(
        files.line,
        name="Map the host name in /etc/hosts",
        path="/etc/hosts",
        line=r"^127\.0\.1\.1\s",
        replace=f"127.0.1.1\t{fqdn}\t{short}",
    )
    ctx.op(
        config_file,
        name="Write /etc/mailname",
        dest="/etc/mailname",
        content=render("system/mailname.j2", fqdn=fqdn),
    )
    ctx.op(apt.update, name="Update package lists", cache_time=APT_CACHE_SECONDS)
    # mailfleet's own files on the host: generated secrets (0700) and helper scripts
    ctx.op(files.directory, name="Create /etc/mailfleet", path="/etc/mailfleet", mode="755")
    ctx.op(files.directory, name="Create /etc/mailfleet/secrets", path="/etc/mailfleet/secrets",
           mode="700")


_NAMES = "uname -n; echo ==; head -n 1 /etc/mailname 2>/dev/null || true"


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, text in engine.facts(Command, command=_NAMES).items():
        hostname, _, mailname = (text or "").partition("==")
        fqdn = engine.config.host_fqdn(engine.settings[name])
        fix = "run `mailfleet deploy`"
        results.append(expect(name, "host name", hostname.strip() or None, fqdn, fix))
        results.append(expect(name, "mail name", mailname.strip(), fqdn, fix))
    return results


def facts(ctx: HostContext) -> list[FactRead]:
    """What deploy's pyinfra operations ask (engine/facts.py)."""
    directories = [STAGING_DIR, "/etc/mailfleet", "/etc/mailfleet/secrets"]
    if ctx.settings.sudo:
        directories.append(UPLOAD_DIR)
    return [*((Directory, {"path": path}) for path in directories),
            (Hostname, {}), (Which, {"command": "hostnamectl"}),
            (FindInFile, {"path": "/etc/hosts", "pattern": r"^127\.0\.1\.1\s.*$",
                          "interpolate_variables": False}),
            (File, {"path": "/var/lib/apt/periodic/update-success-stamp"}), (Date, {})]


SERVICE = Service("system", packages=tuple(BASE_PACKAGES), deploy=deploy, checks=checks,
                  reads=(_NAMES,), facts=facts,
                  snapshot=SNAPSHOT, managed_paths=("/etc/mailname", "/usr/local/lib/mailfleet"))
