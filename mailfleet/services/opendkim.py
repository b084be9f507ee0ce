"""OpenDKIM: a 2048-bit key per domain, made on the host (the private key never leaves
it, mode 0600), signing outgoing and verifying incoming mail as a Postfix milter.

In a cluster every mail host signs with one key per domain (one DNS record, one rotation):
the key a mail host already holds, else one made by the deploy, copied to every mail host
(`prepare`)."""

from __future__ import annotations

import base64
import binascii
import re
import shlex

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command
from pyinfra.operations import systemd

from mailfleet.config import Config, HostSettings
from mailfleet.engine import Engine, HostContext, config_file
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import DeployError
from mailfleet.services import cluster, system
from mailfleet.services.checks import CheckResult
from mailfleet.services.postfix import OPENDKIM_PORT
from mailfleet.services.shape import Port, Service, Unit
from mailfleet.templating import render

PACKAGES = ["opendkim", "opendkim-tools"]
KEY_DIR = "/etc/dkimkeys"
KEY_BITS = 2048


def key_path(domain: str, selector: str, suffix: str = "private") -> str:
    return f"{KEY_DIR}/{domain}/{selector}.{suffix}"


def read_public_keys(settings: HostSettings, config: Config) -> dict[str, str | None]:
    """{domain: TXT value} from one host's key files, in one SSH command (for the commands
    that run without a deploy's engine: `dns records`, `dns publish`)."""
    return parse_public_keys(ssh_run(settings, print_keys_command(config)))


def read_key_record(settings: HostSettings, domain: str, selector: str) -> str | None:
    """The TXT value of one domain's key on one host (`domain add` prints it)."""
    return public_key_record(ssh_run(settings, f"cat {shlex.quote(key_path(domain, selector, 'txt'))}"))


SNAPSHOT = {"dkim": f"for f in {KEY_DIR}/*/*.private; do [ -s \"$f\" ] && echo \"$f\"; done"}


@operation()
def domain_key(domain: str, selector: str, exists: bool):
    """Generate the domain's key pair unless it exists (keys are never replaced silently:
    the published DNS record depends on them)."""
    private = key_path(domain, selector)
    if exists:
        host.noop(f"DKIM key for {domain} exists")
        return
    directory = shlex.quote(f"{KEY_DIR}/{domain}")
    # the snapshot said no key; test again on the host: a key is never overwritten
    yield (f"[ -s {shlex.quote(private)} ] || {{ "
           f"install -d -o opendkim -g opendkim -m 0700 {directory} && "
           f"opendkim-genkey -b {KEY_BITS} -h sha256 -d {shlex.quote(domain)} "
           f"-s {shlex.quote(selector)} -D {directory} && "
           f"chown opendkim:opendkim {directory}/* && chmod 0600 {shlex.quote(private)}; }}")


FLEET_KEYS = "dkim keys"  # engine.shared: {domain: private key PEM} in a cluster


def print_private_keys_command(config: Config) -> str:
    """A shell command printing 'read', then 'DOMAIN BASE64-OF-PRIVATE-KEY' per key the
    host holds."""
    selector = config.mail.dkim_selector
    return "echo read; " + "; ".join(
        f"[ -s {shlex.quote(key_path(d, selector))} ] && echo {shlex.quote(d)} "
        f"\"$(base64 -w0 {shlex.quote(key_path(d, selector))})\""
        for d in config.mail.all_domains) + "; true"


def parse_private_keys(text: str) -> dict[str, str]:
    keys = {}
    for line in (text or "").splitlines():
        domain, _, encoded = line.strip().partition(" ")
        try:
            pem = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
        if "PRIVATE KEY-----" in pem:
            keys[domain] = pem
    return keys


def new_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def key_record_file(pem: str, domain: str, selector: str) -> str:
    """The public half as opendkim-genkey writes SELECTOR.txt (`dns records` reads it)."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    p = base64.b64encode(der).decode()
    pieces = " ".join(f'"{p[i:i + 250]}"' for i in range(0, len(p), 250))
    return (f'{selector}._domainkey\tIN\tTXT\t( "v=DKIM1; h=sha256; k=rsa; "\n\t  "p=" '
            f'{pieces} )  ; ----- DKIM key {selector} for {domain}\n')


def prepare(engine: Engine, config: Config) -> None:
    """In a cluster: each domain's key, the one the mail hosts hold, else new
    (engine.shared[FLEET_KEYS]); the deploy writes it where it is missing. A key is never
    replaced: mail hosts holding different keys, or one that cannot be read, stop the
    deploy."""
    mail = [m for m in config.cluster_members() if "mail" in m.roles]
    if not mail or not any(m.name in engine.settings for m in mail):
        return
    held = {}
    for name, text in cluster.read_on(engine, mail, print_private_keys_command(config)).items():
        if not (text or "").startswith("read"):  # (a fact that failed is None)
            raise DeployError(f"The DKIM keys on {name} could not be read, so whether "
                              "the mail hosts share one cannot be told.",
                              hint=f"Check SSH access to {name}, then deploy again.")
        held[name] = parse_private_keys(text)
    keys = {}
    for domain in config.mail.all_domains:
        found = {name: k[domain] for name, k in held.items() if domain in k}
        if len(set(found.values())) > 1:
            raise DeployError(
                f"The mail hosts {', '.join(found)} hold different DKIM keys for {domain}: "
                "one must sign for all (one DNS record), and mailfleet never replaces a key.",
                hint=f"Keep the published one: copy {key_path(domain, config.mail.dkim_selector)} "
                     "(and its .txt) from its host to the others, then deploy again.")
        keys[domain] = next(iter(found.values()), None) or new_private_key()
    engine.shared[FLEET_KEYS] = keys


def fleet_keys(ctx: HostContext, selector: str) -> list:
    """Write the cluster's keys (prepare) on this mail host."""
    written = []
    for domain, pem in ctx.shared.get(FLEET_KEYS, {}).items():
        written.append(ctx.op(config_file, name=f"Keep the cluster's DKIM key of {domain}",
                              dest=key_path(domain, selector), content=pem, mode="600",
                              user="opendkim", group="opendkim", secret=True))
        written.append(ctx.op(config_file, name=f"Keep the DKIM record of {domain}",
                              dest=key_path(domain, selector, "txt"),
                              content=key_record_file(pem, domain, selector),
                              user="opendkim", group="opendkim"))
    return written


def deploy(ctx: HostContext) -> None:
    mail = ctx.config.mail
    values = dict(domains=mail.all_domains, selector=mail.dkim_selector, key_dir=KEY_DIR,
                  port=OPENDKIM_PORT, nameservers=system.resolvers(ctx), fqdn=ctx.fqdn,
                  special_zones=sorted({d.rsplit(".", 1)[1] for d in mail.all_domains} & {"test"}))
    existing = set(ctx.snapshot("dkim").split())
    keys = fleet_keys(ctx, mail.dkim_selector) if ctx.plan.mail_cluster else [
        ctx.op(domain_key, name=f"Make the DKIM key of {domain}", domain=domain,
               selector=mail.dkim_selector,
               exists=key_path(domain, mail.dkim_selector) in existing)
        for domain in mail.all_domains]
    tables = [
        ctx.op(config_file, name=f"Write OpenDKIM {dest}", dest=dest,
               content=render(f"opendkim/{template}", **values))
        for dest, template in (
            ("/etc/opendkim/key.table", "key.table.j2"),
            ("/etc/opendkim/signing.table", "signing.table.j2"),
            ("/etc/opendkim/internal.hosts", "internal.hosts.j2"),
            ("/etc/opendkim.conf", "opendkim.conf.j2"),
            ("/etc/opendkim/unbound.conf", "unbound.conf.j2"),
        )
    ]
    unit = ctx.op(config_file, name="Run OpenDKIM in the foreground under systemd",
                  dest="/etc/systemd/system/opendkim.service.d/mailfleet.conf",
                  content=render("opendkim/service-override.conf.j2"))
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(unit))
    ctx.service("opendkim", restart_when=(*keys, *tables, unit))


def public_key_record(text: str) -> str | None:
    """The TXT record value from opendkim-genkey's SELECTOR.txt (its quoted pieces joined)."""
    pieces = re.findall(r'"([^"]*)"', text)
    record = "".join(pieces).replace(" ", "")
    return record.replace(";", "; ").strip() if "p=" in record else None


def print_keys_command(config: Config) -> str:
    """A shell command printing each domain's public key file under a '== DOMAIN' line."""
    selector = config.mail.dkim_selector
    return "; ".join(
        f"echo {shlex.quote('== ' + d)}; cat {shlex.quote(key_path(d, selector, 'txt'))} 2>/dev/null"
        for d in config.mail.all_domains) + "; true"


def public_keys(engine: Engine) -> dict[str, dict[str, str | None]]:
    """{host: {domain: TXT record value}} read from each host's key files."""
    return {name: parse_public_keys(text or "") for name, text in
            engine.facts(Command, command=print_keys_command(engine.config)).items()}


def parse_public_keys(text: str) -> dict[str, str | None]:
    """{domain: TXT value} from key files printed one after another under '== DOMAIN' lines."""
    parts = re.split(r"^== (\S+)$", text, flags=re.M)[1:]
    return {d: public_key_record(body) for d, body in zip(parts[::2], parts[1::2])}


def checks(engine: Engine) -> list[CheckResult]:
    results = []
    for name, keys in public_keys(engine).items():
        for domain in engine.config.mail.all_domains:
            if keys.get(domain):
                results.append(CheckResult(name, f"DKIM key {domain}", "ok",
                                           f"{engine.config.mail.dkim_selector}._domainkey.{domain}"))
            else:
                results.append(CheckResult(name, f"DKIM key {domain}", "fail", "no key on the host",
                                           "run `mailfleet deploy`"))
    return results


SERVICE = Service("opendkim", applies=lambda plan: plan.mail, packages=tuple(PACKAGES),
                  deploy=deploy, checks=checks, snapshot=SNAPSHOT,
                  reads=lambda engine, plan: [print_keys_command(engine.config)],
                  units=(Unit("opendkim", (Port(OPENDKIM_PORT, "OpenDKIM milter (localhost)",
                                                "local"),)),),
                  managed_paths=("/etc/opendkim", "/etc/opendkim.conf", KEY_DIR,
                                 "/etc/systemd/system/opendkim.service.d"))
