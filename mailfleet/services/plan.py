"""The host plan: what each host runs, decided once from the config and the host's roles.

Every service asks the plan (never `config.features` and the roles itself), so a feature
such as webmail is decided in one place and a host with other roles gets other services.
Role combinations mailfleet cannot deploy yet are refused here, before any host is touched.
"""

from __future__ import annotations

import ipaddress

from mailfleet.config import Config, HostSettings
from mailfleet.errors import ConfigError
from mailfleet.services.shape import HostPlan, Upstream

ROLES = ("mail", "db", "web")
MAIL_AND_DB = frozenset({"mail", "db"})
# what works today: everything on one host, a host without the web tier, and a web-only
# host beside exactly one mail and database host
SUPPORTED = (frozenset(ROLES), MAIL_AND_DB, frozenset({"web"}))
# ... and, in a cluster, a host that only holds a copy of the accounts database
DB_ONLY = frozenset({"db"})


def _listed(roles: frozenset[str]) -> str:
    return ", ".join(f'"{r}"' for r in ROLES if r in roles)


def private_address(config: Config, host: HostSettings) -> str:
    """Where the other hosts of the fleet reach this one: its VPN address when WireGuard is
    on, else its public address (`ipv4`, `ipv6`, else `address`: what mailfleet connects
    to may be a forward or a jump host's)."""
    address = config.vpn_address(host) if config.features.wireguard else (
        host.ipv4 or host.ipv6 or host.address)
    try:
        return ipaddress.ip_address(address).compressed  # as ufw and pg_hba print it
    except ValueError:
        return address  # a name: check_roles refuses it where it matters


def check_roles(config: Config, hosts: list[HostSettings]) -> None:
    """Refuse, in one sentence naming the host, a role combination that cannot work yet."""
    for host in hosts:
        roles = frozenset(host.roles)
        if roles == DB_ONLY and config.cluster.enabled:
            continue
        if roles not in SUPPORTED:
            raise ConfigError(
                f"host {host.name!r} has roles [{_listed(roles)}]: a host without both \"mail\" "
                "and \"db\" would need the accounts database or the mail store on another "
                "host, which mailfleet cannot deploy yet.",
                hint='Give it roles ["mail", "db", "web"], ["mail", "db"] or ["web"] (or ["db"] '
                     'in a cluster).')
    web_only = [h for h in hosts if frozenset(h.roles) == {"web"}]
    if not web_only:
        return
    if config.cluster.enabled:
        raise ConfigError(
            f"host {web_only[0].name!r} has roles [\"web\"]: a web-only host beside a cluster "
            "would reach the accounts database on one member only, which mailfleet cannot "
            "deploy yet.", hint='Give the web role to a cluster member instead.')
    mail_hosts = [h for h in hosts if MAIL_AND_DB <= frozenset(h.roles)]
    if len(mail_hosts) != 1:
        raise ConfigError(
            f"host {web_only[0].name!r} has roles [\"web\"]: a web-only host needs exactly one "
            f"host with roles \"mail\" and \"db\" to talk to, and the config has "
            f"{len(mail_hosts)}.",
            hint='Give one host roles ["mail", "db"] and the web hosts ["web"].')
    seen: dict[str, str] = {}
    for host in [*mail_hosts, *web_only]:
        address = private_address(config, host)
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(
                f"host {host.name!r}: its address {address!r} is a name, but the web and mail "
                "hosts admit each other by IP address (firewall, PostgreSQL).",
                hint="Give its IP address as `ipv4` (or `address`), or turn on "
                     "features.wireguard.") from None
        if ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast:
            raise ConfigError(
                f"host {host.name!r}: {address} cannot be where the other hosts reach it "
                "(a loopback, unspecified, link-local or multicast address).",
                hint="Give the address the other hosts reach it at as `ipv4` or `ipv6`.")
        if ip.compressed in seen:
            raise ConfigError(
                f"hosts {seen[ip.compressed]!r} and {host.name!r} have the same address "
                f"{ip.compressed}: the web and mail hosts admit each other by address.",
                hint="Give each host its own `ipv4` or `ipv6`.")
        seen[ip.compressed] = host.name


def make_plan(config: Config, host: HostSettings) -> HostPlan:
    """The plan of one host, without the service list (services.plan_host adds it)."""
    roles = frozenset(host.roles)
    web = "web" in roles
    features = config.features
    upstream = None
    if roles == {"web"}:  # web-only: check_roles made sure there is one mail host
        mail_host = next(h for h in config.hosts if MAIL_AND_DB <= frozenset(h.roles))
        upstream = Upstream(mail_host.name, config.host_fqdn(mail_host),
                            private_address(config, mail_host))
    peers = () if upstream else tuple(
        private_address(config, h) for h in config.hosts if frozenset(h.roles) == {"web"})
    any_web = web or bool(peers)
    members = config.cluster_members()
    cluster = tuple((h.name, private_address(config, h)) for h in members) \
        if host in members else ()
    web_cluster = tuple((h.name, private_address(config, h)) for h in members
                        if "web" in h.roles) if cluster else ()
    calendars = web and features.radicale
    return HostPlan(
        host=host.name, roles=roles,
        webmail=features.webmail if web else "none",
        activesync=web and features.webmail == "sogo" and features.activesync,
        # among several web members, one holds the calendars: the first (see web_cluster)
        radicale=calendars and (not web_cluster or web_cluster[0][0] == host.name),
        calendars=calendars,
        acme=web and config.acme.enabled,
        acme_dns01=web and config.acme.enabled and config.acme.challenge == "dns-01",
        backups="mail" in roles and features.backups,
        backup_repository=config.backup.repository is not None,
        firewall=features.firewall,
        wireguard=features.wireguard,
        upstream=upstream, peers=peers,
        private_address=private_address(config, host) if upstream or peers or cluster else "",
        cluster=cluster,
        mail_cluster=tuple((h.name, private_address(config, h)) for h in members
                           if "mail" in h.roles) if cluster else (),
        web_cluster=web_cluster,
        # in a cluster every member holds them (whichever is primary makes them)
        webmail_databases=((features.webmail,) if "db" in roles and features.webmail != "none"
                           and (any_web or any("web" in m.roles for m in members if cluster))
                           else ()),
    )


def full_plan() -> HostPlan:
    """A host with every role and the default features (plus backups): what lab images
    preinstall, so that any config finds its packages there."""
    return HostPlan(host="*", roles=frozenset(ROLES), webmail="roundcube", activesync=False,
                    radicale=True, acme=False, acme_dns01=False, backups=True,
                    backup_repository=True, firewall=True, wireguard=True,
                    webmail_databases=("roundcube",), cluster=(("*", ""),),
                    mail_cluster=(("*", ""),), calendars=True)
