"""One module per service: its packages and templates as data, its deploy steps, its checks.

`DEPLOY_STEPS` is the order `mailfleet deploy` applies them in; `CHECKS` feed `mailfleet check`.
"""

from __future__ import annotations

from pyinfra.operations import apt

from mailfleet.config import Config
from mailfleet.engine import HostContext
from mailfleet.services import (
    acme,
    admin,
    backup,
    certs,
    dns_checks,
    dovecot,
    fail2ban,
    firewall,
    hardening,
    mailflow,
    mailstore,
    network,
    nginx,
    opendkim,
    opendmarc,
    postfix,
    postgres,
    radicale,
    roundcube,
    sogo,
    sshd,
    system,
    units,
    wireguard,
)


def packages(config: Config | None, roles: list[str] | None = None) -> list[str]:
    """Every Debian package `deploy` installs for this config on a host with these roles
    (all roles when None: lab images preinstall them all)."""
    wanted = {*system.BASE_PACKAGES, *hardening.PACKAGES, *fail2ban.PACKAGES, *certs.PACKAGES,
              *postgres.PACKAGES, *postfix.PACKAGES, *dovecot.PACKAGES, *opendkim.PACKAGES,
              *opendmarc.PACKAGES}
    if config is None or config.features.firewall:
        wanted.update(firewall.PACKAGES)
    if config is None or config.features.wireguard:
        wanted.update(wireguard.PACKAGES)
    if config is not None and backup.enabled(config) and (roles is None or "mail" in roles):
        wanted.update(backup.PACKAGES)
    if config is not None and config.acme.enabled and (roles is None or "web" in roles):
        wanted.update(acme.packages(config))
    if roles is None or "web" in roles:
        wanted.update(nginx.PACKAGES)
        if config is None or config.features.webmail == "roundcube":
            wanted.update(roundcube.PACKAGES)
        elif config.features.webmail == "sogo":
            wanted.update(sogo.packages(config))
        if config is None or config.features.radicale:
            wanted.update(radicale.PACKAGES)
    return sorted(wanted)


def install(ctx: HostContext) -> None:
    """All packages in one apt run (one dpkg pass is much faster than one per service)."""
    postfix.preseed(ctx)
    roundcube.preseed(ctx)
    ctx.op(apt.packages, name="Install the mail system's packages",
           packages=packages(ctx.config, ctx.settings.roles), no_recommends=True)


DEPLOY_STEPS = [
    system.deploy,
    install,
    hardening.deploy,
    admin.deploy,
    wireguard.deploy,
    sshd.deploy,
    mailstore.deploy,
    certs.deploy,
    postgres.deploy,
    opendkim.deploy,
    opendmarc.deploy,
    dovecot.deploy,
    postfix.deploy,
    mailflow.deploy,
    roundcube.deploy,
    sogo.deploy,
    radicale.deploy,
    nginx.deploy,
    firewall.deploy,
    wireguard.restrict_ssh,  # once the firewall lets the tunnel in
    acme.deploy,  # after nginx serves the challenges and the firewall lets the CA in
    fail2ban.deploy,
    backup.deploy,
]
CHECKS = [
    system.checks,
    admin.checks,
    sshd.checks,
    hardening.checks,
    firewall.checks,
    network.checks,
    wireguard.checks,
    fail2ban.checks,
    units.checks,
    certs.checks,
    acme.checks,
    postgres.checks,
    postfix.checks,
    opendkim.checks,
    mailstore.checks,
    mailflow.checks,
    nginx.checks,
    roundcube.checks,
    sogo.checks,
    radicale.checks,
    backup.checks,
    dns_checks.checks,  # last: the records, once the hosts' own checks are done
]
