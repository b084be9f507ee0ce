"""PostgreSQL from Debian: the `mailfleet` database, its roles, its schema, small-VPS tuning.

Listens on localhost only. Postfix and Dovecot connect over TCP to 127.0.0.1 with SCRAM
(Postfix's chrooted smtpd cannot reach the unix socket, and Debian's `peer` rule refuses
non-system roles there); mailfleet itself works as `postgres` through the unix socket.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import MaskString, StringCommand, operation
from pyinfra.facts.server import Command

from mailfleet.accounts import schema
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.services.checks import CheckResult
from mailfleet.services.platform import platform
from mailfleet.templating import render

PACKAGES = ["postgresql"]
PSQL = "runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1"


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def psql_script(sql: str, database: str = "postgres") -> str:
    # A quoted heredoc: the shell expands nothing ($argon2id$... and passwords stay intact).
    return f"{PSQL} --single-transaction -d {database} <<'MAILFLEET_SQL'\n{sql}MAILFLEET_SQL"


def psql_query(sql: str, database: str = "postgres") -> str:
    """A one-value query as a fact command; empty output when PostgreSQL is not there yet."""
    return f"{PSQL} -tA -d {database} -c {shlex.quote(sql)} 2>/dev/null || true"


@operation()
def database(dbname: str):
    """Create database `dbname` (owned by postgres) if it does not exist."""
    exists = host.get_fact(Command, command=psql_query(
        f"SELECT 1 FROM pg_database WHERE datname = {sql_literal(dbname)}"))
    if (exists or "").strip() == "1":
        host.noop(f"database {dbname} exists")
        return
    yield f"{PSQL} -c {shlex.quote(f'CREATE DATABASE {dbname}')}"


@operation()
def role(rolename: str, password: str, set_password: bool = False):
    """A login role with `password`; an existing role's password is set only when asked
    (the secret changed), so a no-change deploy stays a no-change deploy."""
    exists = (host.get_fact(Command, command=psql_query(
        f"SELECT 1 FROM pg_roles WHERE rolname = {sql_literal(rolename)}")) or "").strip() == "1"
    if exists and not set_password:
        host.noop(f"role {rolename} exists")
        return
    verb = "ALTER" if exists else "CREATE"
    yield StringCommand(MaskString(psql_script(
        f"{verb} ROLE {rolename} LOGIN PASSWORD {sql_literal(password)};\n")))


@operation()
def migrate(database: str):
    """Apply the schema migrations this database has not seen, each in one transaction."""
    current = host.get_fact(Command, command=psql_query(
        "SELECT coalesce(max(version), 0) FROM schema_migrations", database))
    version = int(current.strip()) if (current or "").strip().isdigit() else 0
    pending = [m for m in schema.migrations() if m.version > version]
    if not pending:
        host.noop(f"schema is at version {version}")
        return
    for migration in pending:
        yield psql_script(migration.script(), database)


def conf_dir(ctx: HostContext) -> str:
    return f"/etc/postgresql/{platform(ctx).postgresql}/main/conf.d"


def deploy(ctx: HostContext) -> None:
    tuning = ctx.op(
        config_file,
        name="Configure PostgreSQL for a small host",
        dest=f"{conf_dir(ctx)}/mailfleet.conf",
        content=render("postgresql/mailfleet.conf.j2"),
        user="postgres", group="postgres",
    )
    ctx.service("postgresql", restart_when=(tuning,))
    ctx.op(database, name="Create the mailfleet database", dbname=schema.DATABASE)
    for rolename in schema.ROLES:
        password, fresh = ctx.secret(f"postgres-{rolename}")
        ctx.op(role, name=f"Create the {rolename} role", rolename=rolename, password=password,
               set_password=fresh)
    ctx.op(migrate, name="Migrate the mailfleet schema", database=schema.DATABASE)
    ctx.op(domains, name="Add the configured domains", names=ctx.config.mail.all_domains)


@operation()
def domains(names: list[str]):
    """Add the config's domains to the database if missing; never removes any (domains
    added with `mailfleet domain add` are the database's, not the config's)."""
    listed = host.get_fact(Command, command=psql_query("SELECT name FROM domains", schema.DATABASE))
    missing = [n for n in names if n not in (listed or "").split()]
    if not missing:
        host.noop("all configured domains are in the database")
        return
    values = ", ".join(f"({sql_literal(n)})" for n in missing)
    yield psql_script(f"INSERT INTO domains (name) VALUES {values} ON CONFLICT DO NOTHING;\n",
                        schema.DATABASE)


# One line per service role: can it log in over TCP like Postfix and Dovecot do, and
# read what they read? Plus the schema version.
_ROLE_CHECK = "; ".join(
    f"printf '{role} '; PGPASSWORD=$(cat /etc/mailfleet/secrets/postgres-{role} 2>/dev/null) "
    f"psql -X -w -h 127.0.0.1 -U {role} -d {schema.DATABASE} -tAc "
    f"'SELECT count(*) FROM domains' 2>&1 | tail -n 1"
    for role in schema.ROLES
) + "; printf 'schema '; " + psql_query("SELECT max(version) FROM schema_migrations", schema.DATABASE)


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, text in engine.facts(Command, command=_ROLE_CHECK).items():
        answers = dict(line.split(" ", 1) for line in (text or "").splitlines() if " " in line)
        for role in schema.ROLES:
            answer = answers.get(role, "no answer").strip()
            if answer.isdigit():
                results.append(CheckResult(name, f"database role {role}", "ok",
                                           f"logs in over TCP, sees {answer} domain(s)"))
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
