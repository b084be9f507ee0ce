"""A web-only host's way to its mail and database host (`HostPlan.upstream`).

Before any operation is added (`prepare`), the mail host's local CA certificate and the
passwords of the database roles webmail uses are read from it (made there first when
missing, so one deploy sets up both tiers). The web host then trusts that CA (Debian's
trust store, so SOGo's TLS verifies too; Roundcube, libpq and Radicale's login name the
file itself) and finds the mail host by the name its certificate carries (/etc/hosts, at
its private address). Every connection from the web tier is TLS, verified against that
certificate: IMAP, submission, ManageSieve, PostgreSQL (`sslmode=verify-full`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command
from pyinfra.operations import server

from mailfleet.config import HostSettings
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.snapshot import SECRETS_DIR
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import DeployError
from mailfleet.services import certs
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service, Upstream
from mailfleet.templating import render

PACKAGES = ["ca-certificates", "openssl"]
CA_DIR = "/usr/local/share/ca-certificates/mailfleet"
HOSTS_MARK = "# mailfleet: mail host"
# the database roles whose passwords the web tier needs (accounts/schema.py and roundcube)
SECRETS = ("postgres-mailfleet_roundcube", "postgres-mailfleet_password",
           "postgres-mailfleet_sogo")
SNAPSHOT = {"upstream hosts": f"grep -F {shlex.quote(HOSTS_MARK)} /etc/hosts || true"}


@dataclass
class Found:
    """What `prepare` read from a mail host."""

    ca: str = ""
    secrets: dict[str, str] = field(default_factory=dict)


def ca_file(upstream: Upstream) -> str:
    return f"{CA_DIR}/{upstream.name}.crt"


def _read_command(fqdn: str, create: bool) -> str:
    """Print the mail host's CA certificate and the web tier's role passwords; with
    `create`, make what is missing first (the CA as certs' script would, the passwords
    as HostContext.secret would: 0600, never on a command line)."""
    make = ""
    if create:
        secret_files = " ".join(shlex.quote(f"{SECRETS_DIR}/{name}") for name in SECRETS)
        make = (f"set -e; dir={shlex.quote(certs.TLS_DIR)}; umask 077; "
                'install -d -m 0755 "$dir"; work=$(mktemp -d); trap \'rm -rf "$work"\' EXIT; '
                + render("certs/make-ca.sh.j2", fqdn=fqdn) + "\n"
                f"install -d -m 0700 {shlex.quote(SECRETS_DIR)}; "
                f"for f in {secret_files}; do [ -s \"$f\" ] || "
                "{ openssl rand -base64 24 | tr '+/' '-_' > \"$f.new\" && mv \"$f.new\" \"$f\"; }; "
                "done; ")
    show = "; ".join(f"printf '{name} '; cat {shlex.quote(f'{SECRETS_DIR}/{name}')} 2>/dev/null "
                     "|| echo" for name in SECRETS)
    return f"{make}{show}; echo '-- ca'; cat {shlex.quote(certs.CA_FILE)} 2>/dev/null || true"


def parse(text: str) -> Found:
    head, _, ca = text.partition("-- ca\n")
    found = Found(ca=ca.strip() + "\n" if "BEGIN CERTIFICATE" in ca else "")
    for line in head.splitlines():
        name, _, value = line.partition(" ")
        if name in SECRETS and value.strip():
            found.secrets[name] = value.strip()
    return found


def prepare(engine: Engine, all_settings: list[HostSettings]) -> None:
    """Read (and in a real deploy make) what the selected web-only hosts need from their
    mail host, before any operation is added."""
    wanted = {plan.upstream for plan in engine.plans.values() if plan.upstream is not None}
    found = {}
    for upstream in wanted:
        settings = next(h for h in all_settings if h.name == upstream.name)
        found[upstream.name] = parse(ssh_run(settings, _read_command(upstream.fqdn,
                                                                     not engine.check)))
        if not engine.check and not found[upstream.name].ca:
            raise DeployError(f"{upstream.name} gave no CA certificate for its web hosts.")
    engine.shared["upstream"] = found


def _found(ctx: HostContext) -> Found:
    assert ctx.plan.upstream is not None
    return ctx.shared.get("upstream", {}).get(ctx.plan.upstream.name) or Found()


def secret(ctx: HostContext, name: str) -> str:
    """A database role's password: this host's own secret, or on a web-only host the one
    its database host keeps (read by `prepare`)."""
    if ctx.plan.upstream is None:
        return ctx.secret(name)[0]
    return _found(ctx).secrets.get(name, "")


@dataclass(frozen=True)
class Endpoints:
    """Where this host's webmail connects: the mail host's name (as its certificate has
    it), the CA file that verifies it, and the database's address."""

    mail_host: str
    ca_file: str
    db_host: str
    remote: bool


def endpoints(ctx: HostContext) -> Endpoints:
    upstream = ctx.plan.upstream
    if upstream is None:
        return Endpoints(ctx.fqdn, certs.CA_FILE, "127.0.0.1", False)
    return Endpoints(upstream.fqdn, ca_file(upstream), upstream.fqdn, True)


@operation()
def hosts_line(line: str, present: str):
    """The mail host's name in /etc/hosts, at its private address: its certificate names
    it, so TLS can verify what the web tier connects to."""
    if present.strip() == line:
        host.noop("/etc/hosts names the mail host")
        return
    mark = shlex.quote(HOSTS_MARK)
    yield (f"grep -vF {mark} /etc/hosts > /etc/hosts.mailfleet-new; "
           f"printf '%s\\n' {shlex.quote(line)} >> /etc/hosts.mailfleet-new && "
           "cat /etc/hosts.mailfleet-new > /etc/hosts && rm -f /etc/hosts.mailfleet-new")


def deploy(ctx: HostContext) -> None:
    upstream = ctx.plan.upstream
    ca = ctx.op(config_file, name=f"Trust {upstream.name}'s CA", dest=ca_file(upstream),
                content=_found(ctx).ca)
    ctx.op(server.shell, name="Update the trusted certificates", commands=["update-ca-certificates"],
           _if=ctx.changed(ca))
    ctx.op(hosts_line, name=f"Name {upstream.name} in /etc/hosts",
           line=f"{upstream.address} {upstream.fqdn} {HOSTS_MARK}",
           present=ctx.snapshot("upstream hosts"))


def _tls(upstream: Upstream, port: int, starttls: str = "") -> str:
    return (f"printf '{port} '; openssl s_client -connect {shlex.quote(upstream.fqdn)}:{port} "
            f"{starttls}-CAfile {shlex.quote(ca_file(upstream))} "
            f"-verify_hostname {shlex.quote(upstream.fqdn)} -verify_return_error -brief "
            "</dev/null 2>&1 | grep -c '^Verification: OK' || true")


def _check_read(upstream: Upstream) -> str:
    # (run on every host of the engine: the others skip it, they have no such CA file)
    return (f"if [ -s {shlex.quote(ca_file(upstream))} ]; then {_tls(upstream, 993)}; "
            f"{_tls(upstream, 5432, '-starttls postgres ')}; fi")


def checks(engine: Engine) -> list[CheckResult]:
    """From each web-only host: IMAP and PostgreSQL on the mail host answer with TLS that
    verifies against its CA, under the name the web tier uses."""
    results = []
    for name, plan in engine.plans.items():
        upstream = plan.upstream
        if upstream is None:
            continue
        command = _check_read(upstream)
        text = engine.facts(Command, command=command, hosts=[name]).get(name) or ""
        answers = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
        for port, what in ((993, "IMAP"), (5432, "PostgreSQL")):
            ok = answers.get(str(port), "0").strip() not in ("", "0")
            results.append(CheckResult(
                name, f"{what} on {upstream.name}", "ok" if ok else "fail",
                f"{upstream.fqdn}:{port} ({upstream.address}) "
                + ("answers with a verified certificate" if ok else
                   "gives no TLS session that verifies against its CA"),
                f"run `mailfleet deploy`; see the firewall and `journalctl` on {upstream.name}"))
    return results


SERVICE = Service("upstream", applies=lambda plan: plan.upstream is not None,
                  packages=tuple(PACKAGES), deploy=deploy, checks=checks, snapshot=SNAPSHOT,
                  reads=lambda engine, plan: [_check_read(plan.upstream)] if plan.upstream else [],
                  managed_paths=(CA_DIR,))
