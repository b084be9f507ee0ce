"""The one shape every service module exports as `SERVICE`.

`services/__init__.py` lists the services in deploy order and derives everything else from
these records: the packages a host installs, the steps a deploy runs, the checks, the units
`check` expects running, the firewall's ports, and what the host snapshot reads. Adding a
service is one module (with its templates) and one line in that list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from pyinfra.api.operation import OperationMeta

from mailfleet.engine import Engine, HostContext
from mailfleet.engine.facts import FactRead
from mailfleet.services.checks import CheckResult

# public: open to everyone; private: to the web-only hosts this host serves; cluster: to the
# other members of the accounts database's cluster, on the VPN only; mail cluster: to the
# cluster's other mail hosts, on the VPN only; web cluster: to the cluster's other web hosts,
# on the VPN only; local: 127.0.0.1 only, never in the firewall
Exposure = Literal["public", "private", "cluster", "mail cluster", "web cluster", "local"]


@dataclass(frozen=True)
class Port:
    number: int
    what: str  # as `check` names it: "Postfix smtp", "PostgreSQL (localhost)"
    exposure: Exposure = "public"
    protocol: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class Unit:
    """A systemd unit the service runs and the ports it listens on (checked by `check`)."""

    name: str
    ports: tuple[Port, ...] = ()
    # reported by `check` as "NAME running" and its ports as listening (units.py); False
    # for units whose service checks them in its own words
    checked: bool = True


@dataclass(frozen=True)
class Upstream:
    """Where a host without the mail and db roles finds them (services/upstream.py): the
    mail host's name, the FQDN its certificate names, and its private address (on the VPN
    when WireGuard is on, else the address mailfleet reaches it at)."""

    name: str
    fqdn: str
    address: str


@dataclass(frozen=True)
class HostPlan:
    """What one host runs, decided once from the config and its roles (services/plan.py)."""

    host: str
    roles: frozenset[str]
    webmail: Literal["roundcube", "sogo", "none"]  # on this host ("none" without the web role)
    activesync: bool
    radicale: bool  # Radicale runs here (its collections are on this host)
    acme: bool  # certificates by ACME (served through this host's nginx)
    acme_dns01: bool  # ... by DNS-01 (certbot's RFC 2136 plugin), else HTTP-01
    backups: bool  # backups wanted here (features.backups on a mail host)
    backup_repository: bool  # ... and a repository to write them to
    firewall: bool
    wireguard: bool
    # a web-only host: the mail and database host it talks to (None: it is this host)
    upstream: Upstream | None = None
    # a mail and database host: the private addresses of the web-only hosts it serves (the
    # firewall opens its `private` ports to them alone, PostgreSQL admits them over TLS)
    peers: tuple[str, ...] = ()
    private_address: str = ""  # this host's own private address (where peers reach it)
    # a member of the replicated accounts database: every member's (name, VPN address),
    # this host's too, in config order (empty: PostgreSQL on its own)
    cluster: tuple[tuple[str, str], ...] = ()
    # in a cluster: the members with the mail role (name, VPN address), every one an MX
    # whose Dovecot proxies a mailbox's logins and deliveries to its home among them
    mail_cluster: tuple[tuple[str, str], ...] = ()
    # in a cluster: the members with the web role (name, VPN address); the first holds the
    # calendars (Radicale), the others' nginx proxies to it
    web_cluster: tuple[tuple[str, str], ...] = ()
    # nginx serves CalDAV/CardDAV here (from Radicale here or on the first web member)
    calendars: bool = False
    # the webmail databases this (db) host holds: for itself and for the hosts it serves
    webmail_databases: tuple[str, ...] = ()
    # filled in by services.plan_host(): the services that run here, and the ports they
    # listen on (the firewall opens the public ones)
    services: tuple[str, ...] = field(default=())
    units: tuple[Unit, ...] = field(default=())

    @property
    def ports(self) -> list[Port]:
        return [port for unit in self.units for port in unit.ports]

    @property
    def database_host(self) -> str:
        """Where this host's services find the accounts database."""
        return self.upstream.name if self.upstream else self.host

    @property
    def mail_host(self) -> str:
        """Where this host's webmail finds IMAP and submission."""
        return self.upstream.name if self.upstream else self.host

    @property
    def database_peers(self) -> tuple[str, ...]:
        """The peers this host's PostgreSQL serves (none when no webmail needs it)."""
        return self.peers if self.webmail_databases else ()

    @property
    def mail_peers(self) -> tuple[str, ...]:
        """The cluster's other mail hosts' VPN addresses (they proxy mailboxes to this one)."""
        return tuple(address for name, address in self.mail_cluster if name != self.host)

    @property
    def replicated(self) -> bool:
        """A mail host among several: its mailboxes are copied to the others (replication)."""
        return self.mail and len(self.mail_cluster) > 1

    @property
    def web_peers(self) -> tuple[str, ...]:
        """The cluster's other web hosts' VPN addresses (they proxy calendars to this one)."""
        return tuple(address for name, address in self.web_cluster if name != self.host)

    @property
    def calendar_host(self) -> str:
        """The host whose Radicale holds the calendars this host's nginx serves: this one,
        or in a cluster the first web member."""
        return self.web_cluster[0][0] if self.web_cluster else self.host

    @property
    def radicale_address(self) -> str:
        """Where this host's nginx finds Radicale: here, or on the web member holding the
        calendars (over the VPN)."""
        return "127.0.0.1" if self.radicale or not self.web_cluster else self.web_cluster[0][1]

    @property
    def cluster_peers(self) -> tuple[str, ...]:
        """The other members' VPN addresses (they reach this member's cluster ports)."""
        return tuple(address for name, address in self.cluster if name != self.host)

    @property
    def web(self) -> bool:
        return "web" in self.roles

    @property
    def mail(self) -> bool:
        return "mail" in self.roles

    @property
    def db(self) -> bool:
        return "db" in self.roles


@dataclass
class Provided:
    """Operations of earlier steps that later steps react to (restart or reload on them)."""

    certificate: OperationMeta | None = None  # the host certificate was (re)written
    postgresql_started: OperationMeta | None = None
    # a cluster member's PostgreSQL config files (Patroni reloads them)
    postgresql_config: tuple[OperationMeta | None, ...] = ()


def provided(ctx: HostContext) -> Provided:
    if ctx.provided is None:
        ctx.provided = Provided()
    return ctx.provided


def always(plan: HostPlan) -> bool:
    return True


@dataclass(frozen=True)
class Service:
    name: str
    # whether it runs on a host: decided from the host's plan (roles and features), once
    applies: Callable[[HostPlan], bool] = always
    packages: Callable[[HostPlan], Iterable[str]] | tuple[str, ...] = ()
    deploy: Callable[[HostContext], None] | None = None
    # what a deploy does on a host where the service no longer applies (switched off)
    retire: Callable[[HostContext], None] | None = None
    checks: Callable[[Engine], list[CheckResult]] | None = None
    # the shell reads its checks make on a host (`engine.facts(Command, command=...)`):
    # `check` runs every service's in one SSH command per host first (engine.prefetch)
    reads: Callable[[Engine, HostPlan], Iterable[str]] | tuple[str, ...] = ()
    # (or the units a plan needs: a port only some hosts open)
    units: Callable[[HostPlan], tuple[Unit, ...]] | tuple[Unit, ...] = ()
    # shell snippets the host snapshot runs, read by the deploy step as ctx.snapshot(name)
    snapshot: dict[str, str] = field(default_factory=dict)
    # files mailfleet writes live below these: the snapshot lists them all (see engine/snapshot)
    managed_paths: tuple[str, ...] = ()
    # the pyinfra facts its operations ask on a host (files.directory: Directory(path=...)),
    # answered from the snapshot while the host is unchanged (engine/facts.py)
    facts: Callable[[HostContext], Iterable[FactRead]] | None = None

    def reads_for(self, engine: Engine, plan: HostPlan) -> list[str]:
        return list(self.reads(engine, plan) if callable(self.reads) else self.reads)

    def units_for(self, plan: HostPlan) -> tuple[Unit, ...]:
        return self.units(plan) if callable(self.units) else self.units

    def packages_for(self, plan: HostPlan) -> list[str]:
        return list(self.packages(plan) if callable(self.packages) else self.packages)

    def step(self, ctx: HostContext) -> None:
        """This service's part of a deploy on one host: set up, or retire when switched off."""
        if self.applies(ctx.plan):
            if self.deploy is not None:
                self.deploy(ctx)
        elif self.retire is not None:
            self.retire(ctx)
