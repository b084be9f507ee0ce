"""nginx: HTTPS with the host certificate for webmail, mail client autoconfiguration
(Thunderbird's config-v1.1.xml, Outlook's autodiscover.xml) and the MTA-STS policy; HTTP
only for ACME challenges and a redirect.

The site is one file (templates/nginx/), tested with `nginx -t` inside a minimal main
config before it replaces the old one; Debian's default site is removed.
"""

from __future__ import annotations


from pyinfra.api import operation
from pyinfra.facts.files import Directory, Link
from pyinfra.facts.server import Command
from pyinfra.operations import files

from mailfleet.dns.records import mta_sts_policy
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.services import certs, radicale, roundcube, sogo, system
from mailfleet.services.checks import CheckResult, https_count
from mailfleet.services.platform import platform
from mailfleet.services.shape import Port, Service, Unit, provided
from mailfleet.templating import render

PACKAGES = ["nginx"]
WEB_ROOT = "/var/www/mailfleet"
ACME_ROOT = f"{WEB_ROOT}/acme"
SITE = "/etc/nginx/sites-available/mailfleet.conf"
ENABLED = "/etc/nginx/sites-enabled/mailfleet.conf"
TEST_CONF = "/etc/nginx/mailfleet-test.conf"  # where relative includes (fastcgi_params) resolve
# the candidate site inside a minimal main config: `nginx -t` checks it alone
VALIDATE = (f"printf 'events {{}}\\nhttp {{\\ninclude /etc/nginx/mime.types;\\ninclude %s;\\n}}\\n' "
            f"{{path}} > {TEST_CONF} && nginx -t -q -c {TEST_CONF}")
PORTS = {80: "nginx HTTP (ACME, redirect)", 443: "nginx HTTPS"}
SNAPSHOT = {"nginx": f"test -e {SITE} && echo mailfleet"}


@operation()
def remove():
    """The host lost its web role: nginx and mailfleet's web root go (only an nginx that
    serves mailfleet's site: one set up by hand for something else is left alone)."""
    yield f"{system.purged(PACKAGES)} && rm -rf {WEB_ROOT} {SITE} {ENABLED} {TEST_CONF}"


def retire(ctx: HostContext) -> None:
    if ctx.snapshot("nginx") == "mailfleet":
        ctx.op(remove, name="Remove nginx (this host has no web role)")


def deploy(ctx: HostContext) -> None:
    config, fqdn = ctx.config, ctx.fqdn
    ctx.op(files.directory, name="Create the web root", path=ACME_ROOT, mode="755")
    mx = [config.host_fqdn(h) for h in config.hosts_with("mail")] or [fqdn]
    # clients are sent to this host when it serves mail, else to the first mail host
    server = fqdn if "mail" in ctx.settings.roles else mx[0]
    static = {
        "config-v1.1.xml": render("web/config-v1.1.xml.j2", domain=config.mail.domain,
                                  domains=config.mail.all_domains, fqdn=server,
                                  title=config.web.title),
        "autodiscover.xml": render("web/autodiscover.xml.j2", fqdn=server),
        "mta-sts.txt": mta_sts_policy(config.dns.mta_sts_mode, mx),
    }
    pages = [ctx.op(config_file, name=f"Write {WEB_ROOT}/{name}", dest=f"{WEB_ROOT}/{name}",
                    content=content) for name, content in static.items()]
    release = platform(ctx)
    prefix = "" if config.web.webmail_path == "/" else config.web.webmail_path
    names = certs.web_names(config)
    site = ctx.op(
        config_file, name="Write the nginx site", dest=SITE, validate=VALIDATE,
        content=render(
            "nginx/mailfleet.conf.j2", fqdn=fqdn, acme_root=ACME_ROOT, web_root=WEB_ROOT,
            cert_file=certs.CERT_FILE, key_file=certs.KEY_FILE, cipher_list=certs.TLS12_CIPHERS,
            http2_on=release.nginx_http2_on,
            server_names=list(dict.fromkeys([fqdn, config.mail.hostname,
                                             *[n for n in names if not n.startswith("mta-sts.")]])),
            mta_sts_names=[n for n in names if n.startswith("mta-sts.")],
            webmail=ctx.plan.webmail, webmail_path=config.web.webmail_path,
            webmail_prefix=prefix, roundcube_root=roundcube.ROOT,
            php_socket=roundcube.php_socket(ctx), upload_mb=config.mail.message_size_mb + 5,
            radicale=ctx.plan.calendars, radicale_path=config.web.radicale_path,
            radicale_address=ctx.plan.radicale_address, radicale_port=radicale.PORT,
            dav_failed_log=radicale.FAILED_LOG,
            **sogo.nginx_values(ctx),
        ))
    link = ctx.op(files.link, name="Enable the nginx site", path=ENABLED, target=SITE)
    default = ctx.op(files.link, name="Remove Debian's default nginx site",
                     path="/etc/nginx/sites-enabled/default", present=False)
    ctx.service("nginx", reload_when=(site, link, default, *pages,
                                      provided(ctx).certificate))


AUTOCONFIG = "/.well-known/autoconfig/mail/config-v1.1.xml"
_AUTOCONFIG_READ = https_count(AUTOCONFIG, "<incomingServer")


def checks(engine: Engine) -> list[CheckResult]:
    """The autoconfig file as a mail client fetches it, over HTTPS on the host itself."""
    path = AUTOCONFIG
    found = engine.facts(Command, command=_AUTOCONFIG_READ)
    results = []
    for name, text in found.items():
        ok = (text or "").strip() == "2"
        results.append(CheckResult(
            name, "mail client autoconfig", "ok" if ok else "fail",
            path + ("" if ok else " is not served"),
            "see `journalctl -u nginx`; run `mailfleet deploy`"))
    return results


SERVICE = Service(
    "nginx", applies=lambda plan: plan.web, packages=tuple(PACKAGES), deploy=deploy,
    retire=retire, checks=checks, reads=(_AUTOCONFIG_READ,), snapshot=SNAPSHOT,
    units=(Unit("nginx", tuple(Port(port, what) for port, what in PORTS.items())),),
    managed_paths=(WEB_ROOT, "/etc/nginx/sites-available"),
    facts=lambda ctx: [(Directory, {"path": ACME_ROOT}), (Link, {"path": ENABLED}),
                       (Link, {"path": "/etc/nginx/sites-enabled/default"})])
