"""A web-only host's way to its mail and database host (`HostPlan.upstream`).

Before any operation is added (`prepare`), the mail host's local CA certificate (checked to
be that and nothing else) and the passwords of the database roles webmail uses are read
from it; a deploy takes the mail host first (services.phases), which makes them. Roundcube,
libpq and Radicale's login name that CA's file; only SOGo, which has no such setting, needs
it in Debian's trust store. The web host finds the mail host by the name its certificate
carries (/etc/hosts, at its private address). Every connection from the web tier is TLS, verified against that
certificate: IMAP, submission, ManageSieve, PostgreSQL (`sslmode=verify-full`).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
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

PACKAGES = ["ca-certificates", "openssl"]
# the mail host's CA, for the clients that name a CA file (Roundcube, libpq, Radicale)
CA_DIR = f"{certs.TLS_DIR}/upstream"
# ... and in Debian's trust store only for SOGo, which has no CA setting of its own
SYSTEM_CA_DIR = "/usr/local/share/ca-certificates/mailfleet"
HOSTS_MARK = "# mailfleet: mail host"
# the database roles whose passwords each webmail needs (accounts/schema.py, postgres.py)
SECRETS = {"roundcube": ("postgres-mailfleet_roundcube", "postgres-mailfleet_password"),
           "sogo": ("postgres-mailfleet_sogo",), "none": ()}
_ALL_SECRETS = sorted({name for names in SECRETS.values() for name in names})
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")  # what HostContext.secret makes
# /etc/hosts without mailfleet's mail-host line (rewritten in place: it may be a bind mount)
_DROP_HOSTS_LINE = (f"grep -vF {shlex.quote(HOSTS_MARK)} /etc/hosts > /etc/hosts.mailfleet-new; "
                    "cat /etc/hosts.mailfleet-new > /etc/hosts && rm -f /etc/hosts.mailfleet-new")
SNAPSHOT = {"upstream": (f"grep -F {shlex.quote(HOSTS_MARK)} /etc/hosts; "
                         f"find {CA_DIR} {SYSTEM_CA_DIR} -type f 2>/dev/null; true")}


@dataclass
class Found:
    """What `prepare` read from a mail host."""

    ca: str = ""
    secrets: dict[str, str] = field(default_factory=dict)


def ca_file(upstream: Upstream) -> str:
    return f"{CA_DIR}/{upstream.name}.crt"


def system_ca_file(upstream: Upstream) -> str:
    return f"{SYSTEM_CA_DIR}/{upstream.name}.crt"


_READ = ("; ".join(f"printf '{name} '; cat {shlex.quote(f'{SECRETS_DIR}/{name}')} 2>/dev/null || echo"
                   for name in _ALL_SECRETS)
         + f"; echo '-- ca'; cat {shlex.quote(certs.CA_FILE)} 2>/dev/null; true")


def local_ca(text: str, fqdn: str) -> str:
    """`text` if it is exactly one certificate: the local CA mailfleet made on the mail host
    `fqdn` (self-signed, CA:TRUE, its subject); else "". What a mail host hands over is
    trusted on the web host, so nothing else may pass (a root on the mail host could
    otherwise have the web host trust any certificate of its choosing)."""
    if text.count("-----BEGIN CERTIFICATE-----") != 1:
        return ""
    try:
        cert = x509.load_pem_x509_certificate(text.encode())
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, x509.ExtensionNotFound):
        return ""
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if (not constraints.ca or cert.issuer != cert.subject
            or names != [f"mailfleet local CA for {fqdn}"]):
        return ""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def parse(text: str, fqdn: str) -> Found:
    head, _, ca = text.partition("-- ca\n")
    found = Found(ca=local_ca(ca.strip() + "\n", fqdn))
    for line in head.splitlines():
        name, _, value = line.partition(" ")
        if name in _ALL_SECRETS and _SECRET_RE.fullmatch(value.strip()):
            found.secrets[name] = value.strip()
    return found


def prepare(engine: Engine, all_settings: list[HostSettings]) -> None:
    """Read what the selected web-only hosts need from their mail host, before any
    operation is added: its CA certificate and the passwords of webmail's database roles.
    A deploy takes the mail host first (services.phases), which makes them; a mail host not
    deployed yet is one sentence here, before the web host is touched."""
    found = {}
    for name, plan in engine.plans.items():
        upstream = plan.upstream
        if upstream is None:
            continue
        if upstream.name not in found:
            settings = next(h for h in all_settings if h.name == upstream.name)
            found[upstream.name] = parse(ssh_run(settings, _READ), upstream.fqdn)
        got = found[upstream.name]
        missing = [what for what, there in (("its local CA certificate", got.ca),
                                            *((f"the {s} password", s in got.secrets)
                                              for s in SECRETS[plan.webmail])) if not there]
        if missing and not engine.check:
            raise DeployError(
                f"{name} needs {upstream.name} deployed first, and {upstream.name} has no "
                f"{', '.join(missing)}.",
                hint=f"Run `mailfleet deploy` without --limit, or with --limit {upstream.name} "
                     "first.")
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
    yield f"{_DROP_HOSTS_LINE} && printf '%s\\n' {shlex.quote(line)} >> /etc/hosts"


def deploy(ctx: HostContext) -> None:
    upstream = ctx.plan.upstream
    ca = _found(ctx).ca
    ctx.op(config_file, name=f"Keep {upstream.name}'s CA", dest=ca_file(upstream), content=ca)
    if ctx.plan.webmail == "sogo":
        trusted = ctx.op(config_file, name=f"Trust {upstream.name}'s CA for SOGo (system-wide)",
                         dest=system_ca_file(upstream), content=ca)
        ctx.op(server.shell, name="Update the system's trusted certificates",
               commands=["update-ca-certificates --fresh >/dev/null"], _if=ctx.changed(trusted))
    elif _files(ctx, SYSTEM_CA_DIR):
        ctx.op(server.shell, name="Take the mail host's CA out of the system's trust", commands=[
            f"rm -rf {SYSTEM_CA_DIR} && update-ca-certificates --fresh >/dev/null"])
    ctx.op(hosts_line, name=f"Name {upstream.name} in /etc/hosts",
           line=f"{upstream.address} {upstream.fqdn} {HOSTS_MARK}",
           present="\n".join(line for line in ctx.snapshot("upstream").splitlines()
                             if HOSTS_MARK in line))


def _files(ctx: HostContext, directory: str) -> list[str]:
    return [line for line in ctx.snapshot("upstream").splitlines()
            if line.startswith(directory + "/")]


def retire(ctx: HostContext) -> None:
    """No longer a web-only host: its former mail host is trusted no more, and not named."""
    if not ctx.snapshot("upstream").strip():
        return
    ctx.op(server.shell, name="Forget the former mail host (its CA, /etc/hosts)", commands=[
        f"rm -rf {CA_DIR} {SYSTEM_CA_DIR} && update-ca-certificates --fresh >/dev/null && "
        f"{{ {_DROP_HOSTS_LINE}; }}"])


def _tls(upstream: Upstream, port: int, starttls: str = "") -> str:
    return (f"printf '{port} '; timeout 10 openssl s_client -connect {shlex.quote(upstream.fqdn)}:{port} "
            f"{starttls}-CAfile {shlex.quote(ca_file(upstream))} "
            f"-verify_hostname {shlex.quote(upstream.fqdn)} -verify_return_error -brief "
            "</dev/null 2>&1 | grep -c '^Verification: OK' || true")


def _check_read(upstream: Upstream) -> str:
    # (a web host whose CA file is not there yet answers nothing: the check fails)
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
                  packages=tuple(PACKAGES), deploy=deploy, retire=retire, checks=checks,
                  snapshot=SNAPSHOT,
                  reads=lambda engine, plan: [_check_read(plan.upstream)] if plan.upstream else [],
                  managed_paths=(CA_DIR, SYSTEM_CA_DIR))
