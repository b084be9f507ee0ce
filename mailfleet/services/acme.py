"""ACME certificates (Let's Encrypt by default) with certbot from Debian: one certificate
for the host's names, checked by HTTP-01 through nginx, renewed by Debian's certbot.timer.

certbot keeps its lineage "mailfleet" in /etc/letsencrypt; a deploy hook copies each new
certificate to where Postfix, Dovecot and nginx read it (certs.CERT_FILE) and reloads exactly
those. Until the first certificate arrives, the local CA's keeps TLS working (certs.py).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import systemd

from mailfleet.engine import HostContext, config_file, snapshot
from mailfleet.services import certs, nginx
from mailfleet.templating import render

PACKAGES = ["certbot"]
LINEAGE = "mailfleet"
LIVE = f"/etc/letsencrypt/live/{LINEAGE}"
RENEWAL = f"/etc/letsencrypt/renewal/{LINEAGE}.conf"
HOOK = "/usr/local/lib/mailfleet/acme-deploy-hook.sh"
DIRECTORY_CA = "/etc/mailfleet/acme/directory-ca.pem"
CERTBOT_DROP_IN = "/etc/systemd/system/certbot.service.d/mailfleet.conf"
RELOADED = ("postfix", "dovecot", "nginx")  # every service that reads certs.CERT_FILE

snapshot.register("acme", f"openssl x509 -in {LIVE}/cert.pem -noout -ext subjectAltName "
                          f"2>/dev/null; grep -h '^server' {RENEWAL} 2>/dev/null || true")
snapshot.register_unit("certbot.timer")


def enabled(ctx: HostContext) -> bool:
    return ctx.config.acme.enabled and "web" in ctx.settings.roles


def _lineage(inspection: str) -> tuple[set[str], str]:
    """(names, ACME server) of certbot's current certificate."""
    server = ""
    for line in inspection.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "server":
            server = value.strip()
    return certs.inspect(inspection).names, server


@operation()
def obtain(names: list[str], server: str, email: str, inspection: str, ca_bundle: str | None):
    """Ask the CA for a certificate when certbot has none for exactly these names from this
    server (names added, server switched from staging): certbot proves each name over HTTP
    through nginx's ACME directory and runs the deploy hook."""
    have, have_server = _lineage(inspection)
    if have == set(names) and have_server == server:
        host.noop(f"certbot holds a certificate for {', '.join(names)} from {server}")
        return
    env = f"REQUESTS_CA_BUNDLE={shlex.quote(ca_bundle)} " if ca_bundle else ""
    domains = " ".join(f"-d {shlex.quote(n)}" for n in names)
    yield (f"{env}certbot certonly --non-interactive --agree-tos --no-eff-email "
           f"--email {shlex.quote(email)} --server {shlex.quote(server)} "
           f"--cert-name {LINEAGE} --webroot --webroot-path {nginx.ACME_ROOT} "
           f"--key-type ecdsa --force-renewal --deploy-hook {HOOK} {domains}")


def deploy(ctx: HostContext) -> None:
    if not enabled(ctx):
        return
    settings = ctx.config.acme
    ca_bundle = None
    if settings.directory_ca_file:
        # checked when the config was loaded
        ca_text = Path(settings.directory_ca_file).read_text(encoding="utf-8")
        ctx.op(config_file, name="Trust the ACME server's HTTPS certificate",
               dest=DIRECTORY_CA, content=ca_text)
        ca_bundle = DIRECTORY_CA
    env = ctx.op(config_file, name="Give certbot's renewals the same trust",
                 dest=CERTBOT_DROP_IN,
                 content=render("acme/certbot-env.conf.j2", ca_file=ca_bundle)) \
        if ca_bundle else None
    ctx.op(config_file, name="Install the certificate deploy hook", dest=HOOK, mode="755",
           content=render("acme/deploy-hook.sh.j2", lineage=LINEAGE, live=LIVE,
                          tls_dir=certs.TLS_DIR, units=RELOADED))
    email = settings.email or f"postmaster@{ctx.config.mail.domain}"
    ctx.op(obtain, name="Obtain the ACME certificate",
           names=certs.certificate_names(ctx.config, ctx.fqdn), server=settings.directory_url,
           email=email, inspection=ctx.snapshot("acme"), ca_bundle=ca_bundle)
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(env))
    ctx.service("certbot.timer")
