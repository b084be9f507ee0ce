"""TLS: one certificate for Postfix, Dovecot (and later nginx), from a local CA until ACME.

The CA is made on the host itself, so the CA key never travels; clients that should trust
the lab or a first-boot server import /etc/mailfleet/tls/ca.crt. The certificate is issued
again when its names change or it has less than 30 days left; services that use it
reload on that (see `ctx.produced["certificate"]`).
"""

from __future__ import annotations

import shlex
from datetime import datetime, timezone

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command

from mailfleet.config import Config
from mailfleet.engine import Engine, HostContext, config_file, snapshot
from mailfleet.services.checks import CheckResult
from mailfleet.templating import render

PACKAGES = ["openssl"]
TLS_DIR = "/etc/mailfleet/tls"
CA_FILE = f"{TLS_DIR}/ca.crt"
CERT_FILE = f"{TLS_DIR}/fullchain.pem"
KEY_FILE = f"{TLS_DIR}/key.pem"
SCRIPT = "/usr/local/lib/mailfleet/local-ca.sh"
DAYS = 825
RENEW_DAYS = 30
_INSPECT = (
    f"openssl x509 -in {CERT_FILE} -noout -ext subjectAltName -enddate 2>/dev/null "
    f"&& openssl verify -CAfile {CA_FILE} {CERT_FILE} >/dev/null 2>&1 && echo verified || true"
)


def web_names(config: Config) -> list[str]:
    """Names the web server answers besides the host's own: autoconfig and autodiscover of
    every domain (what clients look up), and mta-sts when MTA-STS is on."""
    names = []
    for domain in config.mail.all_domains:
        names += [f"autoconfig.{domain}", f"autodiscover.{domain}"]
        if config.dns.mta_sts_mode != "none":
            names.append(f"mta-sts.{domain}")
    return names


def certificate_names(config: Config, fqdn: str) -> list[str]:
    """The names the host certificate covers: the host itself, the mail host name, and the
    names its web server answers for (autoconfig, autodiscover, mta-sts of each domain)."""
    return list(dict.fromkeys([fqdn, config.mail.hostname, *web_names(config)]))


def parse_inspection(text: str) -> tuple[set[str], datetime | None, bool]:
    """(DNS names, notAfter, chain verifies) from `_INSPECT`'s output."""
    names: set[str] = set()
    not_after = None
    for line in text.splitlines():
        line = line.strip()
        if "DNS:" in line:
            names |= {p.strip()[4:] for p in line.split(",") if p.strip().startswith("DNS:")}
        elif line.startswith("notAfter="):
            not_after = datetime.strptime(line[9:].replace("  ", " "), "%b %d %H:%M:%S %Y %Z")
            not_after = not_after.replace(tzinfo=timezone.utc)
    return names, not_after, "verified" in text.split()


snapshot.register("certificate", _INSPECT)


@operation()
def local_certificate(names: list[str], inspection: str):
    """Issue the host certificate from the local CA when names or lifetime require it."""
    have, not_after, verified = parse_inspection(inspection)
    days_left = (not_after - datetime.now(timezone.utc)).days if not_after else -1
    if have == set(names) and verified and days_left > RENEW_DAYS:
        host.noop(f"certificate for {', '.join(names)} valid for {days_left} more days")
        return
    yield f"sh {SCRIPT} {' '.join(shlex.quote(n) for n in names)}"


def deploy(ctx: HostContext) -> None:
    ctx.op(config_file, name="Install the local CA script", dest=SCRIPT, mode="755",
           content=render("certs/local-ca.sh.j2", tls_dir=TLS_DIR, fqdn=ctx.fqdn, days=DAYS))
    ctx.produced["certificate"] = ctx.op(
        local_certificate, name="Issue the host certificate",
        names=certificate_names(ctx.config, ctx.fqdn), inspection=ctx.snapshot("certificate"),
    )


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, text in engine.facts(Command, command=_INSPECT).items():
        names, not_after, verified = parse_inspection(text or "")
        wanted = set(certificate_names(engine.config, engine.config.host_fqdn(engine.settings[name])))
        fix = "run `mailfleet deploy` to issue it again"
        if not not_after:
            results.append(CheckResult(name, "TLS certificate", "fail", f"no certificate at {CERT_FILE}", fix))
            continue
        days = (not_after - datetime.now(timezone.utc)).days
        if not verified:
            results.append(CheckResult(name, "TLS certificate", "fail", "does not verify against its CA", fix))
        elif not wanted <= names:
            results.append(CheckResult(name, "TLS certificate", "fail",
                                       f"lacks {', '.join(sorted(wanted - names))}", fix))
        elif days < RENEW_DAYS:
            results.append(CheckResult(name, "TLS certificate", "warn", f"expires in {days} days", fix))
        else:
            results.append(CheckResult(name, "TLS certificate", "ok",
                                       f"{', '.join(sorted(names))}, {days} days left"))
    return results
