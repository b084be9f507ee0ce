"""The host plan: what each host runs, decided once from the config and the host's roles.

Every service asks the plan (never `config.features` and the roles itself), so a feature
such as webmail is decided in one place and a host with other roles gets other services.
Role combinations mailfleet cannot deploy yet are refused here, before any host is touched.
"""

from __future__ import annotations

from mailfleet.config import Config, HostSettings
from mailfleet.errors import ConfigError
from mailfleet.services.shape import HostPlan

ROLES = ("mail", "db", "web")
# what works today: everything on one host, or a host without the web tier
SUPPORTED = (frozenset({"mail", "db", "web"}), frozenset({"mail", "db"}))


def check_roles(config: Config, hosts: list[HostSettings]) -> None:
    """Refuse, in one sentence naming the host, a role combination that cannot work yet."""
    for host in hosts:
        roles = frozenset(host.roles)
        if roles in SUPPORTED:
            continue
        listed = ", ".join(f'"{r}"' for r in ROLES if r in roles)
        raise ConfigError(
            f"host {host.name!r} has roles [{listed}]: a host without both \"mail\" and \"db\" "
            "would need the accounts database or the mail store on another host, which "
            "mailfleet cannot deploy yet.",
            hint='Give it roles ["mail", "db", "web"] or ["mail", "db"].')


def make_plan(config: Config, host: HostSettings) -> HostPlan:
    """The plan of one host, without the service list (services.plan_host adds it)."""
    roles = frozenset(host.roles)
    web = "web" in roles
    features = config.features
    # a host of the supported combinations holds its own database and mail store
    return HostPlan(
        host=host.name, roles=roles,
        webmail=features.webmail if web else "none",
        activesync=web and features.webmail == "sogo" and features.activesync,
        radicale=web and features.radicale,
        acme=web and config.acme.enabled,
        acme_dns01=web and config.acme.enabled and config.acme.challenge == "dns-01",
        backups="mail" in roles and features.backups,
        backup_repository=config.backup.repository is not None,
        firewall=features.firewall,
        wireguard=features.wireguard,
        database_host=host.name,
        mail_host=host.name,
    )


def full_plan() -> HostPlan:
    """A host with every role and the default features (plus backups): what lab images
    preinstall, so that any config finds its packages there."""
    return HostPlan(host="*", roles=frozenset(ROLES), webmail="roundcube", activesync=False,
                    radicale=True, acme=False, acme_dns01=False, backups=True,
                    backup_repository=True, firewall=True, wireguard=True,
                    database_host="*", mail_host="*")
