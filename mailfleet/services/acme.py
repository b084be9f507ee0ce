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
from pyinfra.facts.server import Command
from pyinfra.operations import systemd

from mailfleet.dns import publish
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.errors import ConfigError
from mailfleet.services import certs, nginx
from mailfleet.services.checks import CheckResult
from mailfleet.services.shape import HostPlan, Service, Unit
from mailfleet.templating import render

PACKAGES = ["certbot"]
DNS01_PACKAGES = ["python3-certbot-dns-rfc2136"]
LINEAGE = "mailfleet"
LIVE = f"/etc/letsencrypt/live/{LINEAGE}"
RENEWAL = f"/etc/letsencrypt/renewal/{LINEAGE}.conf"
HOOK = "/usr/local/lib/mailfleet/acme-deploy-hook.sh"
DIRECTORY_CA = "/etc/mailfleet/acme/directory-ca.pem"
CERTBOT_DROP_IN = "/etc/systemd/system/certbot.service.d/mailfleet.conf"
RFC2136_INI = "/etc/mailfleet/acme/rfc2136.ini"
RELOADED = ("postfix", "dovecot", "nginx")  # every service that reads certs.CERT_FILE

SNAPSHOT = {"acme": f"openssl x509 -in {LIVE}/cert.pem -noout -ext subjectAltName "
                          f"2>/dev/null; grep -h -E '^(server|authenticator) ' {RENEWAL} "
                          "2>/dev/null || true"}


def packages(plan: HostPlan) -> list[str]:
    return [*PACKAGES, *(DNS01_PACKAGES if plan.acme_dns01 else [])]


def _lineage(inspection: str) -> tuple[set[str], dict[str, str]]:
    """(names, renewal settings: server, authenticator) of certbot's current certificate."""
    settings = {}
    for line in inspection.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("server", "authenticator"):
            settings[key.strip()] = value.strip()
    return certs.inspect(inspection).names, settings


AUTHENTICATORS = {
    "http-01": f"--authenticator webroot --webroot-path {nginx.ACME_ROOT}",
    "dns-01": f"--authenticator dns-rfc2136 --dns-rfc2136-credentials {RFC2136_INI}",
}


@operation()
def obtain(names: list[str], server: str, email: str, challenge: str, inspection: str,
           ca_bundle: str | None, propagation_seconds: int):
    """Ask the CA for a certificate when certbot has none for exactly these names from this
    server by this challenge (names added, staging switched off, challenge changed). certbot
    proves each name (a file nginx serves, or a TXT record it publishes and removes) and
    runs the deploy hook."""
    have, settings = _lineage(inspection)
    authenticator = AUTHENTICATORS[challenge].split()[1]
    if have == set(names) and settings == {"server": server, "authenticator": authenticator}:
        host.noop(f"certbot holds a certificate for {', '.join(names)} from {server}")
        return
    env = f"REQUESTS_CA_BUNDLE={shlex.quote(ca_bundle)} " if ca_bundle else ""
    domains = " ".join(f"-d {shlex.quote(n)}" for n in names)
    wait = (f" --dns-rfc2136-propagation-seconds {propagation_seconds}"
            if challenge == "dns-01" else "")
    yield (f"{env}certbot certonly --non-interactive --agree-tos --no-eff-email "
           f"--email {shlex.quote(email)} --server {shlex.quote(server)} "
           f"--cert-name {LINEAGE} {AUTHENTICATORS[challenge]}{wait} "
           f"--key-type ecdsa --force-renewal --deploy-hook {HOOK} {domains}")


def rfc2136_settings(config, names: list[str], host_name: str) -> dict[str, object]:
    """The one zone server and the host's own key (acme.tsig_keys) certbot's DNS-01 plugin
    uses for all `names` (it takes a single credentials file). The zones' keys stay on this
    machine: a host's key should let it change only its _acme-challenge TXT records. A name
    outside every zone, or zones on different servers, are a config error."""
    chosen: set[tuple[str, int]] = set()
    for name in names:
        zone = publish.zone_of(name, config.dns.zones)
        if zone is None:
            raise ConfigError(f'acme.challenge = "dns-01": no [[dns.zones]] holds {name}; '
                              "add its zone, or use http-01.")
        chosen.add((zone.host_server or zone.server, zone.host_port or zone.port))
    if len(chosen) > 1:
        raise ConfigError('acme.challenge = "dns-01": the certificate\'s names are in zones '
                          "on different servers; certbot's RFC 2136 plugin takes one. Use one "
                          "server, or http-01.")
    server, port = chosen.pop()
    key_file = config.acme.tsig_keys.get(host_name)
    if key_file is None:  # the config refuses this; a clear sentence all the same
        raise ConfigError(f'acme.challenge = "dns-01": acme.tsig_keys has no key for host '
                          f"{host_name}.")
    key = publish.read_key(key_file)
    for zone in config.dns.zones:  # the point of a host key: never the zone's by mistake
        try:
            same = publish.read_key(zone.tsig_key_file).secret == key.secret
        except ConfigError:  # a zone key this machine cannot read is not the host's either
            same = False
        if same:
            raise ConfigError(f"acme.tsig_keys.{host_name} ({key_file}) is the key of zone "
                              f"{zone.zone}, which may change the whole zone: give the host "
                              "a key of its own (docs/certificates.md).")
    return dict(server=server, port=port, key_name=key.name, secret=key.secret,
                algorithm=key.algorithm.upper())


def deploy(ctx: HostContext) -> None:
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
    names = certs.certificate_names(ctx.config, ctx.fqdn, ctx.plan.mail)
    if settings.challenge == "dns-01":
        ctx.op(config_file, name=f"Write certbot's RFC 2136 credentials {RFC2136_INI}",
               dest=RFC2136_INI, mode="600", secret=True,
               content=render("acme/rfc2136.ini.j2",
                              **rfc2136_settings(ctx.config, names, ctx.settings.name)))
    email = settings.email or f"postmaster@{ctx.config.mail.domain}"
    ctx.op(obtain, name="Obtain the ACME certificate", names=names,
           server=settings.directory_url, email=email, challenge=settings.challenge,
           inspection=ctx.snapshot("acme"), ca_bundle=ca_bundle,
           propagation_seconds=settings.dns_propagation_seconds)
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(env))
    ctx.service("certbot.timer")


_TIMER = "systemctl is-active certbot.timer || true"


def checks(engine: Engine) -> list[CheckResult]:
    """The timer that renews the certificate runs (a stopped one fails only weeks later)."""
    if not engine.config.acme.enabled:
        return []
    results = []
    found = engine.facts(Command, command=_TIMER)
    for name, state in found.items():
        if "web" not in engine.settings[name].roles:
            continue
        state = (state or "unknown").strip()
        results.append(CheckResult(name, "certificate renewal timer",
                                   "ok" if state == "active" else "fail",
                                   f"certbot.timer {state}",
                                   "run `mailfleet deploy`; see `systemctl status certbot.timer`"))
    return results


SERVICE = Service("acme", applies=lambda plan: plan.acme, packages=packages, deploy=deploy,
                  checks=checks, reads=(_TIMER,), snapshot=SNAPSHOT,
                  units=(Unit("certbot.timer", checked=False),),
                  managed_paths=("/etc/systemd/system/certbot.service.d",))
