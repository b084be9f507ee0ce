"""Roundcube from Debian's packages: its own PostgreSQL database and role, IMAP/SMTP/Sieve
over TLS to the mail host (this one, or the upstream of a web-only host), the ManageSieve
and password plugins, PHP-FPM on demand.

Debian's dbconfig-common is kept out (it needs PostgreSQL running in the middle of the one
apt run): mailfleet makes the database, loads Roundcube's schema once and runs its
`updatedb.sh` when the package version changes.
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus
from pyinfra.operations import files

from mailfleet.accounts import passwords
from mailfleet.engine import Engine, HostContext, config_file, debconf
from mailfleet.engine.facts import FactRead
from mailfleet.services import postgres, system, upstream
from mailfleet.services.checks import CheckResult, https_count
from mailfleet.services.platform import SUPPORTED, platform
from mailfleet.services.shape import Service
from mailfleet.templating import render

# php-fpm named explicitly: otherwise roundcube-core's dependency pulls in Apache + mod_php;
# php-zip for the zipdownload plugin, php-gd for image thumbnails (both only recommended)
PACKAGES = ["php-fpm", "php-zip", "php-gd", "roundcube-core", "roundcube-pgsql",
            "roundcube-plugins"]
ROOT = "/var/lib/roundcube/public_html"
DATABASE = "roundcube"
ROLE = "mailfleet_roundcube"
STAMP = "/var/lib/mailfleet/roundcube-schema-version"
SQL_DIR = "/usr/share/roundcube/SQL"
INITDB = "/usr/local/lib/mailfleet/roundcube-initdb.php"  # a web-only host's
SCHEMA_QUERY = "SELECT value FROM system WHERE name = 'roundcube-version'"

SNAPSHOT = {"roundcube": "; ".join([
    "printf 'installed '; dpkg-query -W -f='${Version}' roundcube-core 2>/dev/null; echo",
    "printf 'schema '; { " + postgres.psql_query(SCHEMA_QUERY, DATABASE) + "; } 2>/dev/null; echo",
    f"printf 'stamp '; cat {STAMP} 2>/dev/null; echo",
])}


def php_socket(ctx: HostContext) -> str:
    return f"/run/php/php{platform(ctx).php}-fpm-roundcube.sock"


def preseed(ctx: HostContext) -> None:
    if ctx.plan.webmail == "roundcube":
        ctx.op(debconf, name="Preseed Roundcube (no dbconfig-common)", package="roundcube-core",
               answers={"roundcube/dbconfig-install": ("boolean", False)})


@operation()
def schema(installed: str, loaded: str, stamp: str):
    """Roundcube's tables: loaded once (as its role, so it owns them), upgraded by
    Roundcube's own updatedb.sh after a package upgrade.

    The snapshot can only say "nothing to do" (schema there, made for the installed
    version). Anything else is decided on the host when the step runs: the package may be
    installed by this very deploy, PostgreSQL may have been down when the snapshot was
    taken, the database may hold data kept from an earlier install."""
    if installed and loaded and stamp == installed:
        host.noop(f"Roundcube schema {loaded} matches roundcube-core {installed}")
        return
    version = "dpkg-query -W -f='${Version}' roundcube-core"
    load = (f"{postgres.PSQL} -d {DATABASE} --single-transaction -c 'SET ROLE {ROLE}' "
            f"-f {SQL_DIR}/postgres.initial.sql")
    update = (f"runuser -u www-data -- /usr/share/roundcube/bin/updatedb.sh --package=roundcube "
              f"--dir={SQL_DIR}")
    found = postgres.psql_query(SCHEMA_QUERY, DATABASE)
    yield (f'if [ -z "$({found})" ]; then {load}; '
           f'elif [ "$(cat {STAMP} 2>/dev/null)" != "$({version})" ]; then {update}; fi '
           f"&& {version} > {STAMP}")


def _libpq_tls(ca_file: str) -> str:
    return f"PGSSLMODE=verify-full PGSSLROOTCERT={shlex.quote(ca_file)}"


@operation()
def remote_schema(installed: str, stamp: str, ca_file: str):
    """On a web-only host: Roundcube's own scripts load its tables over the network (as
    its role, through the config's DSN), or upgrade them after a package upgrade. The
    stamp says which package version the tables were made for."""
    if installed and stamp == installed:
        host.noop(f"Roundcube schema made for roundcube-core {installed}")
        return
    version = "dpkg-query -W -f='${Version}' roundcube-core"
    run = f"runuser -u www-data -- env {_libpq_tls(ca_file)}"
    yield (f"{{ {run} php {INITDB} || {run} /usr/share/roundcube/bin/updatedb.sh "
           f"--package=roundcube --dir={SQL_DIR}; }} && {version} > {STAMP}")


@operation()
def remove(php: str):
    """Webmail switched away from Roundcube: its packages, PHP-FPM and config files go; its
    database (users' address books and settings) stays until dropped by hand."""
    # the php metapackages go too: left behind, php{php} would want another web SAPI and
    # apt would satisfy it with libapache2-mod-php and Apache
    apache = ["apache2", "apache2-bin", "apache2-data", "apache2-utils", f"libapache2-mod-php{php}"]
    yield (f"{system.purged([*PACKAGES, f'php{php}-fpm', 'php', f'php{php}'])} && "
           f"if dpkg-query -W -f '${{Status}}' apache2 2>/dev/null | grep -q 'ok installed'; then "
           f"{system.purge(apache)}; fi && "
           f"rm -rf /etc/roundcube /var/lib/roundcube /etc/php/{php}/fpm {STAMP} {INITDB}")


def _state(ctx: HostContext) -> dict[str, str]:
    return {key: value.strip() for key, _, value in
            (line.partition(" ") for line in ctx.snapshot("roundcube").splitlines())}


def retire(ctx: HostContext) -> None:
    if _state(ctx).get("installed"):
        ctx.op(remove, name="Remove Roundcube (webmail is not roundcube)", php=platform(ctx).php)


def deploy(ctx: HostContext) -> None:
    state = _state(ctx)
    config = ctx.config
    # its database and role are the database host's (postgres.webmail_database)
    where = upstream.endpoints(ctx)
    # a cluster member: this host's PostgreSQL may be a standby, and Roundcube writes (its
    # sessions, a password change): libpq tries each member and keeps the primary
    # (target_session_attrs=read-write, set in the PHP-FPM pool)
    db_host = ",".join([where.db_host, *ctx.plan.cluster_peers])
    des_key, _ = ctx.secret("roundcube-des-key")
    common = dict(fqdn=where.mail_host, ca_file=where.ca_file,
                  server=where.mail_host if where.remote else "localhost",
                  upload_mb=config.mail.message_size_mb)
    php_files = {
        "/etc/roundcube/config.inc.php": render(
            "roundcube/config.inc.php.j2", **common, db_user=ROLE,
            db_password=upstream.secret(ctx, f"postgres-{ROLE}"), db_host=db_host,
            db_name=DATABASE, des_key=des_key[:24], title=config.web.title,
            remote=where.remote),
        "/etc/roundcube/plugins/managesieve/config.inc.php": render(
            "roundcube/managesieve.inc.php.j2", **common),
        "/etc/roundcube/plugins/password/config.inc.php": render(
            "roundcube/password.inc.php.j2", db_user="mailfleet_password",
            db_password=upstream.secret(ctx, "postgres-mailfleet_password"),
            db_host=db_host, db_name="mailfleet",
            argon2=passwords.PARAMETERS, min_length=config.mail.min_password_length),
    }
    for dest, content in php_files.items():
        ctx.op(config_file, name=f"Write {dest}", dest=dest, content=content, mode="640",
               group="www-data", secret=True)

    # after the config: updatedb.sh reads the database settings from it
    if where.remote:
        ctx.op(config_file, name="Install Roundcube's schema loader", dest=INITDB,
               content=render("roundcube/initdb.php.j2", sql_dir=SQL_DIR))
        ctx.op(remote_schema, name="Load or upgrade Roundcube's schema on the database host",
               installed=state.get("installed", ""), stamp=state.get("stamp", ""),
               ca_file=where.ca_file)
    elif (cluster := postgres.cluster_state(ctx)) is None or cluster.writes_here(ctx.plan.host):
        # (in a cluster, on the primary: the standbys get the tables by replication, and a
        # member that joins now has no roundcube database until Patroni copies it)
        ctx.op(schema, name="Load or upgrade Roundcube's schema",
               installed=state.get("installed", ""), loaded=state.get("schema", ""),
               stamp=state.get("stamp", ""))

    release = platform(ctx)
    pool_dir = f"/etc/php/{release.php}/fpm/pool.d"
    pool = ctx.op(config_file, name="Write the Roundcube PHP-FPM pool", dest=f"{pool_dir}/roundcube.conf",
                  content=render("roundcube/php-fpm-pool.conf.j2", socket=php_socket(ctx),
                                 max_children=4, upload_mb=config.mail.message_size_mb + 5,
                                 db_ca_file=where.ca_file if where.remote else "",
                                 primary_only=bool(ctx.plan.cluster)))
    www = ctx.op(files.file, name="Remove PHP-FPM's default pool", path=f"{pool_dir}/www.conf",
                 present=False)
    ctx.service(f"php{release.php}-fpm", restart_when=(pool, www))


def facts(ctx: HostContext) -> list[FactRead]:
    """What deploy's pyinfra operations ask, for each Debian release's PHP (engine/facts.py:
    the release itself is known only from the snapshot these join)."""
    found: list[FactRead] = []
    for php in sorted({release.php for release in SUPPORTED.values()}):
        unit = [f"php{php}-fpm.service"]
        found += [(File, {"path": f"/etc/php/{php}/fpm/pool.d/www.conf"}),
                  (SystemdStatus, {"services": unit}), (SystemdEnabled, {"services": unit})]
    return found


LOGIN_MARK = "rcmloginuser"


def _check_read(engine: Engine) -> str:
    path = engine.config.web.webmail_path.rstrip("/") + "/"
    return "systemctl is-active 'php*-fpm.service'; " + https_count(path, LOGIN_MARK)


def checks(engine: Engine) -> list[CheckResult]:
    """PHP-FPM runs and the login page renders (PHP, database and config all work)."""
    path = engine.config.web.webmail_path.rstrip("/") + "/"
    command = _check_read(engine)
    results = []
    for name, text in engine.facts(Command, command=command).items():
        lines = (text or "").split()
        fpm = lines[0] if lines else "unknown"
        results.append(CheckResult(name, "php-fpm running", "ok" if fpm == "active" else "fail",
                                   fpm, "see `journalctl -u 'php*-fpm'` on the host"))
        ok = lines[-1:] != ["0"] and len(lines) > 1
        results.append(CheckResult(
            name, "webmail login page", "ok" if ok else "fail",
            f"Roundcube at https://{engine.config.host_fqdn(engine.settings[name])}{path}"
            + ("" if ok else " shows no login form"),
            "see `journalctl -t roundcube` and the nginx error log"))
    return results


SERVICE = Service("roundcube", applies=lambda plan: plan.webmail == "roundcube",
                  packages=tuple(PACKAGES), deploy=deploy, retire=retire, checks=checks,
                  reads=lambda engine, plan: [_check_read(engine)], snapshot=SNAPSHOT,
                  managed_paths=("/etc/roundcube", "/etc/php"), facts=facts)
