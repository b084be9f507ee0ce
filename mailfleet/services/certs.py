"""TLS: one certificate for Postfix, Dovecot (and later nginx), from a local CA until ACME.

The CA is made on the host itself, so the CA key never travels; clients that should trust
the lab or a first-boot server import /etc/mailfleet/tls/ca.crt. The certificate is issued
again when its names change or it has less than 30 days left; services that use it
reload on that (see `Provided.certificate` in services/shape.py).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime, timezone

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command

from mailfleet.config import Config
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import Service, provided
from mailfleet.templating import render

PACKAGES = ["openssl"]
TLS_DIR = "/etc/mailfleet/tls"
CA_FILE = f"{TLS_DIR}/ca.crt"
CERT_FILE = f"{TLS_DIR}/fullchain.pem"
KEY_FILE = f"{TLS_DIR}/key.pem"
CHAIN_FILE = f"{TLS_DIR}/key-and-chain.pem"  # both in one (Postfix reads it per new smtpd)
SCRIPT = "/usr/local/lib/mailfleet/local-ca.sh"
DAYS = 825
RENEW_DAYS = 30
# TLS 1.2 suites of every TLS service (Postfix, Dovecot, nginx): forward secrecy and AEAD only,
# strongest first; each server enforces this order over the client's (TLS 1.3 has its own).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256"
)
SOURCE_FILE = f"{TLS_DIR}/source"  # "acme" once certbot's deploy hook installed one
# check: an ACME certificate warns this many days before it expires, and fails at the second
ACME_WARN_DAYS, ACME_FAIL_DAYS = 21, 7
_INSPECT = (
    f"openssl x509 -in {CERT_FILE} -noout -ext subjectAltName -enddate -issuer -nameopt RFC2253 "
    "2>/dev/null "
    f"&& openssl verify -CAfile {CA_FILE} {CERT_FILE} >/dev/null 2>&1 && echo verified; "
    f"printf 'source '; cat {SOURCE_FILE} 2>/dev/null || echo local-ca; "
    f"test -s {CHAIN_FILE} && echo combined || true"
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


def certificate_names(config: Config, fqdn: str, mail: bool = True) -> list[str]:
    """The names the host certificate covers: the host itself, the mail host name (not on a
    host without the mail role: that name is the mail host's), and the names its web server
    answers for (autoconfig, autodiscover, mta-sts of each domain)."""
    return list(dict.fromkeys([fqdn, *([config.mail.hostname] if mail else []),
                               *web_names(config)]))


@dataclass(frozen=True)
class Inspection:
    """What the host's certificate is, from `_INSPECT`'s output."""

    names: set[str]
    not_after: datetime | None
    verified: bool  # by the local CA
    issuer: str = ""
    source: str = "local-ca"  # or "acme"
    combined: bool = False  # CHAIN_FILE exists

    def days_left(self) -> int:
        return (self.not_after - datetime.now(timezone.utc)).days if self.not_after else -1


def inspect(text: str) -> Inspection:
    names: set[str] = set()
    not_after, issuer, source = None, "", "local-ca"
    for line in text.splitlines():
        line = line.strip()
        if "DNS:" in line:
            names |= {p.strip()[4:] for p in line.split(",") if p.strip().startswith("DNS:")}
        elif line.startswith("notAfter="):
            not_after = datetime.strptime(line[9:].replace("  ", " "), "%b %d %H:%M:%S %Y %Z")
            not_after = not_after.replace(tzinfo=timezone.utc)
        elif line.startswith("issuer="):
            issuer = line[7:].strip()
        elif line.startswith("source "):
            source = line[7:].strip() or "local-ca"
    words = text.split()
    return Inspection(names, not_after, "verified" in words, issuer, source, "combined" in words)


def parse_inspection(text: str) -> tuple[set[str], datetime | None, bool]:
    """(DNS names, notAfter, chain verifies) from `_INSPECT`'s output."""
    found = inspect(text)
    return found.names, found.not_after, found.verified


SNAPSHOT = {"certificate": _INSPECT}


@operation()
def local_certificate(names: list[str], inspection: str, acme: bool):
    """Issue the host certificate from the local CA when names or lifetime require it.

    With ACME on, a certificate certbot installed is left alone while it covers the names
    and has not expired (certbot renews it); until then the local one keeps TLS working."""
    found = inspect(inspection)
    current = (acme and found.source == "acme" and set(names) <= found.names
               and found.days_left() > 0) or \
        (found.names == set(names) and found.verified and found.days_left() > RENEW_DAYS)
    if current and found.combined:
        host.noop(f"certificate for {', '.join(names)}, {found.days_left()} days left")
    elif current:  # from a version before the combined file
        yield (f"umask 077 && cat {KEY_FILE} {CERT_FILE} > {CHAIN_FILE}.new && "
               f"mv -f {CHAIN_FILE}.new {CHAIN_FILE}")
    else:
        yield f"sh {SCRIPT} {' '.join(shlex.quote(n) for n in names)}"


def deploy(ctx: HostContext) -> None:
    ctx.op(config_file, name="Install the local CA script", dest=SCRIPT, mode="755",
           content=render("certs/local-ca.sh.j2", tls_dir=TLS_DIR, fqdn=ctx.fqdn, days=DAYS))
    provided(ctx).certificate = ctx.op(
        local_certificate, name="Issue the host certificate",
        names=certificate_names(ctx.config, ctx.fqdn, ctx.plan.mail),
        inspection=ctx.snapshot("certificate"),
        acme=ctx.config.acme.enabled,
    )


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    acme = engine.config.acme.enabled
    for name, text in engine.facts(Command, command=_INSPECT).items():
        found = inspect(text or "")
        wanted = set(certificate_names(engine.config, engine.config.host_fqdn(engine.settings[name]),
                                       engine.plans[name].mail))
        fix = "run `mailfleet deploy` to issue it again"
        if not found.not_after:
            results.append(CheckResult(name, "TLS certificate", "fail", f"no certificate at {CERT_FILE}", fix))
            continue
        days = found.days_left()
        from_acme = found.source == "acme"
        if from_acme:
            fix = "see `journalctl -u certbot` and /var/log/letsencrypt/letsencrypt.log on the host"
        if not from_acme and not found.verified:
            results.append(CheckResult(name, "TLS certificate", "fail", "does not verify against its CA", fix))
        elif not wanted <= found.names:
            results.append(CheckResult(name, "TLS certificate", "fail",
                                       f"lacks {', '.join(sorted(wanted - found.names))}", fix))
        elif from_acme and days < ACME_FAIL_DAYS:
            results.append(CheckResult(name, "TLS certificate", "fail",
                                       f"expires in {days} days: renewal is failing", fix))
        elif days < (ACME_WARN_DAYS if from_acme else RENEW_DAYS):
            results.append(CheckResult(name, "TLS certificate", "warn", f"expires in {days} days", fix))
        else:
            origin = f"from {found.issuer}" if from_acme else "from the local CA"
            results.append(CheckResult(name, "TLS certificate", "ok",
                                       f"{', '.join(sorted(found.names))}, {origin}, {days} days left"))
        if acme and not from_acme:
            results.append(CheckResult(name, "ACME certificate", "warn",
                                       "not obtained yet: the local CA's certificate is in use",
                                       "run `mailfleet deploy`; it names what the CA refused"))
    return results


SERVICE = Service("certs", packages=tuple(PACKAGES), deploy=deploy, checks=checks,
                  reads=(_INSPECT,), snapshot=SNAPSHOT)
