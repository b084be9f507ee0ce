"""PostgreSQL from Debian: the `mailfleet` database, its roles, its schema, small-VPS tuning.

Listens on localhost, and on the private address when web-only hosts use it (their
webmail's roles only, over TLS with the host certificate, from their addresses alone).
Postfix and Dovecot connect over TCP to 127.0.0.1 with SCRAM (Postfix's chrooted smtpd
cannot reach the unix socket, and Debian's `peer` rule refuses non-system roles there);
mailfleet itself works as `postgres` through the unix socket.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import operation
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import files, systemd

from mailfleet.accounts import schema
from mailfleet.accounts.schema import sql_literal
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.snapshot import SECRETS_DIR
from mailfleet.errors import DeployError
from mailfleet.services import certs
from mailfleet.services.cluster import MARKER, REPLICATION_ROLE, ClusterState
from mailfleet.services.checks import CheckResult
from mailfleet.services.platform import platform
from mailfleet.services.shape import Port, Service, Unit, provided
from mailfleet.templating import render

PACKAGES = ["postgresql"]
PSQL = "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1"



def psql_script(sql: str, database: str = "postgres") -> str:
    # A quoted heredoc: the shell expands nothing ($argon2id$... and passwords stay intact).
    return f"{PSQL} --single-transaction -d {database} <<'MAILFLEET_SQL'\n{sql}MAILFLEET_SQL"


def psql_query(sql: str, database: str = "postgres") -> str:
    """A one-value query as a fact command; empty output when PostgreSQL is not there yet."""
    return f"{PSQL} -tA -d {database} -c {shlex.quote(sql)} 2>/dev/null || true"


@dataclass(frozen=True)
class DatabaseState:
    """What the mail database holds before the deploy (from the host snapshot)."""

    databases: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    schema_version: int = 0
    domains: frozenset[str] = frozenset()
    system_mailboxes: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> DatabaseState:
        found: dict[str, set[str]] = {}
        for line in text.splitlines():
            kind, _, value = line.strip().partition(" ")
            if value:
                found.setdefault(kind, set()).add(value)
        version = max((int(v) for v in found.get("schema", ()) if v.isdigit()), default=0)
        return cls(frozenset(found.get("db", ())), frozenset(found.get("role", ())), version,
                   frozenset(found.get("domain", ())), frozenset(found.get("mailbox", ())))


_STATE_QUERIES = (
    ("postgres", "SELECT 'db ' || datname FROM pg_database UNION ALL "
                 "SELECT 'role ' || rolname FROM pg_roles WHERE rolname LIKE 'mailfleet%'"),
    (schema.DATABASE, "SELECT 'schema ' || max(version) FROM schema_migrations"),
    (schema.DATABASE, "SELECT 'domain ' || name FROM domains"),
    (schema.DATABASE, "SELECT 'mailbox ' || email FROM mailboxes WHERE system"),
)
SNAPSHOT = {"postgres": "; ".join(
    f"{PSQL} -tA -d {db} -c {shlex.quote(sql)}" for db, sql in _STATE_QUERIES),
    "cluster member": f"[ -e {MARKER} ] && echo yes"}


def database_state(ctx: HostContext) -> DatabaseState:
    return DatabaseState.parse(ctx.snapshot("postgres"))


@operation()
def database(dbname: str, exists: bool, owner: str = "postgres"):
    """Create database `dbname` if it does not exist."""
    if exists:
        host.noop(f"database {dbname} exists")
        return
    # checked again on the host: the snapshot is empty when PostgreSQL was down
    found = psql_query(f"SELECT 1 FROM pg_database WHERE datname = {sql_literal(dbname)}")
    create = f"CREATE DATABASE {dbname} OWNER {owner}"
    yield f"{{ {found}; }} | grep -q 1 || {PSQL} -c {shlex.quote(create)}"


@operation()
def role(rolename: str, password_file: str, exists: bool, set_password: bool = False,
         options: str = ""):
    """A login role whose password is in `password_file`; an existing role's password is
    set only when asked (the secret is new), so a no-change deploy stays one.

    The password goes to psql on its standard input, never on a command line (where
    `ps` and sudo's log would show it).
    """
    if exists and not set_password:
        host.noop(f"role {rolename} exists")
        return

    def with_password(verb: str) -> str:
        statement = f"{verb} ROLE {rolename} LOGIN {options} PASSWORD :'pw';".replace("  ", " ")
        return (f"printf '%s\\n' \"\\\\set pw '$(cat {shlex.quote(password_file)})'\" "
                f"{shlex.quote(statement)} | {PSQL}")

    found = psql_query(f"SELECT 1 FROM pg_roles WHERE rolname = {sql_literal(rolename)}")
    when_found = with_password("ALTER") if set_password else "true"
    yield f"if {{ {found}; }} | grep -q 1; then {when_found}; else {with_password('CREATE')}; fi"


@operation()
def migrate(database: str, version: int):
    """Apply the schema migrations newer than `version`, each in one transaction."""
    pending = [m for m in schema.migrations() if m.version > version]
    if not pending:
        host.noop(f"schema is at version {version}")
        return
    current = psql_query("SELECT coalesce(max(version), 0) FROM schema_migrations", database)
    for migration in pending:  # each checked again on the host before it runs
        yield (f"v=$({current}); [ \"${{v:-0}}\" -ge {migration.version} ] || "
               + psql_script(migration.script(), database))


def conf_dir(ctx: HostContext) -> str:
    return f"/etc/postgresql/{platform(ctx).postgresql}/main/conf.d"


# WAL archiving, for the backups (services/backup.py): each finished segment is copied here
WAL_ARCHIVE = "/var/backups/mailfleet/postgres/wal"


def archive_conf(ctx: HostContext) -> str:
    return f"{conf_dir(ctx)}/mailfleet-archive.conf"


def archive_settings(ctx: HostContext) -> OperationMeta | None:
    """Archive the WAL: a cluster member archives as a standby too ("always"), so its
    archive goes on whichever member is the primary and its backups run on either role."""
    return ctx.op(config_file, name="Archive PostgreSQL's WAL", dest=archive_conf(ctx),
                  content=render("backup/archive.conf.j2", wal_dir=WAL_ARCHIVE,
                                 mode="always" if ctx.plan.cluster else "on"),
                  user="postgres", group="postgres")


# what each webmail's role may reach on the database host, from a web host
_WEBMAIL_ACCESS = {
    "roundcube": (("roundcube", "mailfleet_roundcube"), (schema.DATABASE, "mailfleet_password")),
    "sogo": (("sogo", "mailfleet_sogo"), (schema.DATABASE, "mailfleet_sogo")),
}


def hba_cluster_webmail(ctx: HostContext) -> list[dict]:
    """In a cluster, the webmail of a member writes through whichever member is primary:
    every member admits the webmail's roles from every member's VPN address."""
    kind = ctx.config.features.webmail
    if not ctx.plan.cluster or not any("web" in m.roles for m in ctx.config.cluster_members()):
        return []
    lines = [{"database": db, "role": role} for db, role in _WEBMAIL_ACCESS.get(kind, ())]
    return [{"address": address, "network": str(ipaddress.ip_network(address)), "lines": lines}
            for _, address in ctx.plan.cluster] if lines else []


def hba_peers(plan) -> list[dict]:
    """pg_hba.conf's lines for the web hosts this host serves: their webmail's roles, from
    their address alone, over TLS."""
    lines = [{"database": db, "role": role} for kind in plan.webmail_databases
             for db, role in _WEBMAIL_ACCESS.get(kind, ())]
    return [{"address": peer, "network": str(ipaddress.ip_network(peer)), "lines": lines}
            for peer in plan.peers] if lines else []


def cluster_state(ctx: HostContext) -> ClusterState | None:
    """The deploy's view of the cluster (services/cluster.py), None for a lone PostgreSQL."""
    if not ctx.plan.cluster:
        if ctx.snapshot("cluster member") == "yes":
            raise DeployError(
                f"{ctx.plan.host} is a member of the accounts database's cluster (Patroni runs "
                "its PostgreSQL), and the config no longer makes it one: taking a host out of "
                "a cluster, or a cluster apart, is not automated yet.",
                hint="Keep cluster.enabled = true and its db role (docs/cluster.md).")
        return None
    if "cluster" not in ctx.shared:  # a member must never be handled as a lone PostgreSQL
        raise DeployError(f"{ctx.plan.host} is a cluster member, but this deploy did not ask "
                          "the cluster first (cluster.prepare).")
    return ctx.shared["cluster"]


def deploy(ctx: HostContext) -> None:
    peers = hba_peers(ctx.plan)
    cluster = cluster_state(ctx)
    listen = ctx.plan.private_address if peers else ""
    key = None
    if peers:  # PostgreSQL (in group ssl-cert) reads the host's key as Postfix and Dovecot do
        key = ctx.op(files.file, name="Let PostgreSQL read the host's TLS key",
                     path=certs.KEY_FILE, user="root", group="ssl-cert", mode="640")
    tuning = ctx.op(
        config_file,
        name="Configure PostgreSQL for a small host",
        dest=f"{conf_dir(ctx)}/mailfleet.conf",
        content=render("postgresql/mailfleet.conf.j2", listen=listen, cert_file=certs.CERT_FILE,
                       key_file=certs.KEY_FILE, cluster=cluster is not None),
        user="postgres", group="postgres",
    )
    hba = ctx.op(config_file, name="Admit local roles and the web hosts (pg_hba.conf)",
                 dest=f"{conf_dir(ctx).removesuffix('/conf.d')}/pg_hba.conf",
                 content=render("postgresql/pg_hba.conf.j2", peers=peers,
                                replication_role=REPLICATION_ROLE,
                                cluster_webmail=hba_cluster_webmail(ctx),
                                members=[address for _, address in ctx.plan.cluster]),
                 user="postgres", group="postgres", mode="640")
    restart = ctx.op(config_file, name="Restart PostgreSQL when it dies",
                     dest="/etc/systemd/system/postgresql@.service.d/mailfleet.conf",
                     content=render("postgresql/restart.conf.j2",
                                    after_vpn=bool(peers) and ctx.plan.wireguard))
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(restart))
    if cluster is None:
        provided(ctx).postgresql_started = ctx.service(
            "postgresql", restart_when=(tuning,),
            reload_when=(hba, key, provided(ctx).certificate) if peers else (hba,))
    else:
        if not cluster_members_only(ctx, cluster, tuning, hba):
            return
    state = database_state(ctx)
    ctx.op(database, name="Create the mailfleet database", dbname=schema.DATABASE,
           exists=schema.DATABASE in state.databases)
    for rolename in schema.ROLES:
        _, fresh = ctx.secret(f"postgres-{rolename}")
        ctx.op(role, name=f"Create the {rolename} role", rolename=rolename,
               password_file=f"{SECRETS_DIR}/postgres-{rolename}",
               exists=rolename in state.roles, set_password=fresh)
    ctx.op(migrate, name="Migrate the mailfleet schema", database=schema.DATABASE,
           version=state.schema_version)
    if cluster is not None:  # the standbys copy the primary with this role
        _, fresh = ctx.secret("cluster-replication")
        ctx.op(role, name=f"Create the {REPLICATION_ROLE} role", rolename=REPLICATION_ROLE,
               password_file=f"{SECRETS_DIR}/cluster-replication", options="REPLICATION",
               exists=REPLICATION_ROLE in state.roles, set_password=fresh)
    missing = [d for d in ctx.config.mail.all_domains if d not in state.domains]
    ctx.op(domains, name="Add the configured domains", names=missing)
    for kind in ctx.plan.webmail_databases:
        webmail_database(ctx, kind, state)


def cluster_members_only(ctx: HostContext, cluster, tuning, hba) -> bool:
    """A cluster member's part: Patroni runs PostgreSQL (services/patroni.py), the
    standalone cluster never starts at boot (start.conf), the shared secrets are kept here.
    True when this host also makes the deploy's database changes (the primary, or the host
    whose database becomes the cluster's, which runs on its own until Patroni takes it)."""
    version = platform(ctx).postgresql
    ctx.op(config_file, name="Leave PostgreSQL's start to Patroni (start.conf)",
           dest=f"/etc/postgresql/{version}/main/start.conf", content=START_CONF,
           user="postgres", group="postgres")
    ctx.service("postgresql")  # Debian's umbrella unit (it starts no cluster now)
    provided(ctx).postgresql_config = (tuning, hba)
    if cluster.bootstraps(ctx.plan.host):
        provided(ctx).postgresql_started = ctx.service(f"postgresql@{version}-main", enabled=False)
    if ctx.plan.backups and ctx.plan.host in cluster.joining:
        archive_settings(ctx)  # before Patroni first starts the copy (services/backup.py)
    if not cluster.writes_here(ctx.plan.host):
        for rolename in [*schema.ROLES, *(WEBMAIL_DATABASES[k][1] for k in ctx.plan.webmail_databases)]:
            ctx.secret(f"postgres-{rolename}")
        ctx.secret("cluster-replication")
        return False
    return True


START_CONF = ("# Written by mailfleet: Patroni starts this cluster (patroni.service), never "
              "postgresql.service.\nmanual\n")
# webmail's own database: name, owner role, and whether the role is the schema's own
WEBMAIL_DATABASES = {"roundcube": ("roundcube", "mailfleet_roundcube", False),
                     "sogo": ("sogo", "mailfleet_sogo", True)}


def webmail_database(ctx: HostContext, kind: str, state: DatabaseState) -> None:
    """The database Roundcube or SOGo keeps its own data in (settings, address books,
    calendars), owned by its role: on the database host, for itself or for web hosts."""
    dbname, owner, schema_role = WEBMAIL_DATABASES[kind]
    if not schema_role:
        _, fresh = ctx.secret(f"postgres-{owner}")
        ctx.op(role, name=f"Create the {owner} role", rolename=owner,
               password_file=f"{SECRETS_DIR}/postgres-{owner}", exists=owner in state.roles,
               set_password=fresh)
    ctx.op(database, name=f"Create the {dbname} database", dbname=dbname,
           exists=dbname in state.databases, owner=owner)


@operation()
def domains(names: list[str]):
    """Add these (configured, missing) domains. Deploy never removes one: removing a domain
    deletes its mailboxes, which only `mailfleet domain remove` does, after asking."""
    if not names:
        host.noop("all configured domains are in the database")
        return
    values = ", ".join(f"({sql_literal(n)})" for n in names)
    yield psql_script(f"INSERT INTO domains (name) VALUES {values} ON CONFLICT DO NOTHING;\n",
                        schema.DATABASE)


# What each service role must be able to do, as a query answering a number: Roundcube's
# role reads no table since migration 0004, it may only call webmail_set_password.
_DOMAINS = "SELECT count(*) FROM domains"
_ROLE_PROBES = {
    "mailfleet_password": ("SELECT count(*) FROM pg_proc WHERE proname = "
                           "'webmail_set_password' AND has_function_privilege(oid, 'EXECUTE')",
                           "may call webmail_set_password"),
}
# One line per service role: can it log in over TCP like Postfix and Dovecot do, and
# read what they read? Plus the schema version.
_ROLE_CHECK = "; ".join(
    f"printf '{role} '; PGPASSWORD=$(cat /etc/mailfleet/secrets/postgres-{role} 2>/dev/null) "
    f"psql -X -w -h 127.0.0.1 -U {role} -d {schema.DATABASE} -tA "
    f"-c {shlex.quote(_ROLE_PROBES.get(role, (_DOMAINS,))[0])} 2>&1 | tail -n 1"
    for role in schema.ROLES
) + "; printf 'schema '; " + psql_query("SELECT max(version) FROM schema_migrations", schema.DATABASE)


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, text in engine.facts(Command, command=_ROLE_CHECK).items():
        answers = dict(line.split(" ", 1) for line in (text or "").splitlines() if " " in line)
        for role in schema.ROLES:
            answer = answers.get(role, "no answer").strip()
            can = _ROLE_PROBES.get(role, ("", f"sees {answer} domain(s)"))[1]
            if answer.isdigit() and (role not in _ROLE_PROBES or answer == "1"):
                results.append(CheckResult(name, f"database role {role}", "ok",
                                           f"logs in over TCP, {can}"))
            else:
                results.append(CheckResult(name, f"database role {role}", "fail", answer,
                                           "run `mailfleet deploy`; see `journalctl -u postgresql`"))
        version = answers.get("schema", "").strip()
        wanted = schema.latest_version()
        results.append(CheckResult(
            name, "database schema", "ok" if version == str(wanted) else "fail",
            f"version {version or 'none'}" + ("" if version == str(wanted) else f", expected {wanted}"),
            "run `mailfleet deploy`"))
    return results


SERVICE = Service("postgres", applies=lambda plan: plan.db, packages=tuple(PACKAGES),
                  deploy=deploy, checks=checks, reads=(_ROLE_CHECK,), snapshot=SNAPSHOT,
                  units=(Unit("postgresql", (Port(5432, "PostgreSQL", "private"),)),),
                  managed_paths=("/etc/postgresql", "/etc/systemd/system/postgresql@.service.d"),
                  facts=lambda ctx: [(File, {"path": certs.KEY_FILE})] if ctx.plan.database_peers
                  else [])
