"""Postfix: SMTP in on 25, submission on 587 and 465, mailboxes and aliases from PostgreSQL,
delivery to Dovecot over LMTP, DKIM through the OpenDKIM milter.

main.cf and master.cf are whole files (templates/postfix/), validated with `postconf`
before they replace the old ones: a warning (an unknown or misspelt parameter) is a failure.
"""

from __future__ import annotations

import shlex

from pyinfra.api import operation
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import files

from mailfleet.engine import Engine, HostContext, config_file, debconf
from mailfleet.services import certs
from mailfleet.services.checks import CheckResult
from mailfleet.services.platform import platform
from mailfleet.services.shape import Port, Service, Unit, provided
from mailfleet.templating import render

PACKAGES = ["postfix", "postfix-pgsql"]
QUOTA_STATUS_PORT = 12340
OPENDKIM_PORT = 8891
OPENDMARC_PORT = 8893
MAP_DIR = "/etc/postfix/pgsql"
# The mail domains come from mailfleet.toml, so they are written into the config at each
# deploy rather than looked up in PostgreSQL: Postfix asks about domains five times per
# message from a stranger (trivial-rewrite for sender and recipient, check_sender_access for
# the address, its domain, parent domain and localpart). Measured: 8.9 -> 4.0 database
# lookups per delivered message, ~1 ms less CPU per message.
OWN_DOMAIN_SENDERS = "/etc/postfix/own_domain_senders"
RETIRED_MAPS = ("virtual_domains", "own_domain_senders")  # (pgsql maps before 2026-12)
PORTS = {25: "smtp", 587: "submission", 465: "submissions"}

# Each map answers one question Postfix asks about an address (%s, escaped by Postfix).
MAPS = {
    "virtual_mailboxes": (
        "which addresses have a mailbox",
        "SELECT 1 FROM mailboxes m JOIN domains d ON d.name = m.domain "
        "WHERE m.email = '%s' AND m.active AND d.active",
    ),
    "virtual_aliases": (
        "where an alias delivers; a mailbox maps to itself so that a catch-all "
        "does not swallow it",
        "SELECT a.destination FROM aliases a JOIN domains d ON d.name = a.domain "
        "WHERE a.source = '%s' AND a.active AND d.active "
        "UNION SELECT m.email FROM mailboxes m JOIN domains d ON d.name = m.domain "
        "WHERE m.email = '%s' AND m.active AND d.active",
    ),
    "sender_login": (
        "which login may send as an address: its mailbox, and the mailboxes an alias "
        "delivers to",
        "SELECT email FROM mailboxes WHERE email = '%s' AND active "
        "UNION SELECT destination FROM aliases WHERE source = '%s' AND active",
    ),
}

# Validate a candidate main.cf or master.cf in a scratch config directory beside the
# live other half; any warning (unknown parameter, bad syntax) rejects it. MAIL_CONFIG, not
# `postconf -c DIR`: same files read, same warnings, but -c with a directory other than the
# default took 1-2 s per call (measured in the lab), the variable a few ms.
_VALIDATE = (
    'd=$(mktemp -d) && cp /etc/postfix/{other} "$d/{other}" 2>/dev/null; touch "$d/{other}"; '
    'cp {path} "$d/{this}" && out=$(MAIL_CONFIG="$d" postconf {flag} 2>&1 >/dev/null); '
    'rm -rf "$d"; [ -z "$out" ] || {{ echo "$out" >&2; false; }}'
)


def _validate(this: str) -> str:
    other = "master.cf" if this == "main.cf" else "main.cf"
    flag = "-n" if this == "main.cf" else "-M"
    return _VALIDATE.format(this=this, other=other, flag=flag, path="{path}")


SNAPSHOT = {"aliases": "test /etc/aliases.db -nt /etc/aliases && echo fresh"}


@operation()
def newaliases():
    yield "newaliases"


def deploy(ctx: HostContext) -> None:
    release = platform(ctx)
    password, _ = ctx.secret("postgres-mailfleet_postfix")
    maps = [
        ctx.op(config_file, name=f"Write the {name} map", dest=f"{MAP_DIR}/{name}.cf",
               content=render("postfix/pgsql-map.cf.j2", purpose=purpose, query=query,
                              password=password, path=f"{MAP_DIR}/{name}.cf",
                              pgsql_reconnects=release.pgsql_reconnects),
               mode="640", group="postfix", secret=True)
        for name, (purpose, query) in MAPS.items()
    ]
    domains = ctx.config.mail.all_domains
    senders = ctx.op(config_file, name="Write our own domains, refused as a stranger's sender",
                     dest=OWN_DOMAIN_SENDERS,
                     content=render("postfix/own_domain_senders.j2", domains=domains))
    master = ctx.op(config_file, name="Write Postfix master.cf", dest="/etc/postfix/master.cf",
                    content=render("postfix/master.cf.j2", quota_status_port=QUOTA_STATUS_PORT,
                                   opendkim_port=OPENDKIM_PORT),
                    validate=_validate("master.cf"))
    main = ctx.op(
        config_file, name="Write Postfix main.cf", dest="/etc/postfix/main.cf",
        content=render(
            "postfix/main.cf.j2", fqdn=ctx.fqdn, domain=ctx.config.mail.domain,
            domains=domains, own_domain_senders=OWN_DOMAIN_SENDERS,
            compatibility_level=release.postfix_compatibility,
            message_size_bytes=ctx.config.mail.message_size_mb * 1024 * 1024,
            quota_status_port=QUOTA_STATUS_PORT, opendkim_port=OPENDKIM_PORT,
            opendmarc_port=OPENDMARC_PORT,
            chain_file=certs.CHAIN_FILE, cipher_list=certs.TLS12_CIPHERS,
        ),
        validate=_validate("main.cf"),
    )
    # after main.cf: newaliases reads alias_database from it
    aliases = ctx.op(config_file, name="Write /etc/aliases", dest="/etc/aliases",
                     content=render("postfix/aliases.j2"))
    # when the file changes now, or an earlier run left the .db missing or older
    stale = ctx.snapshot("aliases").strip() != "fresh"
    ctx.op(newaliases, name="Rebuild /etc/aliases.db",
           _if=lambda: stale or ctx.changed(aliases)())
    # master.cf changes (new listeners) need a restart; the rest is read on reload. After
    # PostgreSQL had to be started, a reload also replaces the proxymap processes, which
    # otherwise refuse to retry a database host they saw down for 60 s (451 4.3.0).
    ctx.service("postfix", restart_when=(master,),
                reload_when=(main, senders, *maps, provided(ctx).certificate,
                             provided(ctx).postgresql_started))
    # only after the reload: until then the running Postfix may still read them
    for name in RETIRED_MAPS:
        ctx.op(files.file, name=f"Remove the retired {name} map", path=_retired(name),
               present=False)


def _retired(name: str) -> str:
    return f"{MAP_DIR}/{name}.cf"


def preseed(ctx: HostContext) -> None:
    """Before the packages: no debconf-generated main.cf, mailfleet writes its own."""
    ctx.op(debconf, name="Preseed Postfix", package="postfix",
           answers={"postfix/main_mailer_type": ("select", "No configuration"),
                    "postfix/mailname": ("string", ctx.fqdn)})


QUEUE_WARN = 100


def _probe(engine: Engine) -> str:
    """An address no mailbox can have (mailfleet refuses '+' in a mailbox name): the lookup
    must answer "not found", not an error."""
    return f"mailfleet+check@{engine.config.mail.domain}"


def _check_read(engine: Engine) -> str:
    return (f"postmap -q {shlex.quote(_probe(engine))} proxy:pgsql:{MAP_DIR}/virtual_mailboxes.cf"
            " 2>&1 | tail -n 1; echo ==; postqueue -j 2>/dev/null | wc -l")


def checks(engine: Engine) -> list[CheckResult]:
    """Postfix's own view: does PostgreSQL answer its lookups, how full is its queue."""
    command = _check_read(engine)
    results = []
    for name, text in engine.facts(Command, command=command).items():
        lookup, _, queued = (text or "").partition("==")
        lookup = lookup.strip()
        results.append(CheckResult(
            name, "Postfix database lookup", "fail" if lookup else "ok",
            lookup or "PostgreSQL answers Postfix's mailbox lookups",
            f"test it on the host: postmap -q {_probe(engine)} "
            f"proxy:pgsql:{MAP_DIR}/virtual_mailboxes.cf (no output: it works)"))
        count = int(queued.strip()) if queued.strip().isdigit() else -1
        status = "ok" if 0 <= count < QUEUE_WARN else "warn"
        results.append(CheckResult(name, "mail queue", status, f"{count} message(s) waiting",
                                   "see `postqueue -p` and `journalctl -u postfix` on the host"))
    return results


SERVICE = Service(
    "postfix", applies=lambda plan: plan.mail, packages=tuple(PACKAGES), deploy=deploy,
    checks=checks, reads=lambda engine, plan: [_check_read(engine)], snapshot=SNAPSHOT,
    units=(Unit("postfix", tuple(Port(port, f"Postfix {name}") for port, name in PORTS.items())),),
    managed_paths=("/etc/postfix", "/etc/aliases"),
    facts=lambda ctx: [(File, {"path": _retired(name)}) for name in RETIRED_MAPS])
