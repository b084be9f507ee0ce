"""The host plan: which services, packages, ports and files a host gets for its roles and
the config's features (pure logic: no host is reached)."""

from __future__ import annotations

import pytest

from mailfleet import services
from mailfleet.config import HostSettings, parse
from mailfleet.errors import ConfigError
from mailfleet.services import firewall, plan_host

BASE = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
EVERYWHERE = {"system", "packages", "hardening", "admin", "sshd", "certs", "ssh over the VPN",
              "fail2ban", "network", "units", "dns"}
MAIL = {"mailstore", "postgres", "opendkim", "opendmarc", "dovecot", "postfix", "mailflow"}
MAIL_PORTS = {25, 465, 587, 143, 993, 4190}


def _plan(extra: str = "", roles=("mail", "db", "web")):
    config = parse(BASE + extra)
    return plan_host(config, HostSettings(name="mx1", address="192.0.2.1", roles=list(roles)))


# (features and settings, roles) -> (services besides EVERYWHERE and MAIL, public ports)
TABLE = [
    ("", ("mail", "db", "web"), {"roundcube", "nginx", "firewall"}, MAIL_PORTS | {80, 443}),
    ("", ("mail", "db"), {"firewall"}, MAIL_PORTS),
    ('[features]\nwebmail = "sogo"\n', ("mail", "db", "web"),
     {"sogo", "nginx", "firewall"}, MAIL_PORTS | {80, 443}),
    ('[features]\nradicale = true\n', ("mail", "db", "web"),
     {"roundcube", "radicale", "nginx", "firewall"}, MAIL_PORTS | {80, 443}),
    ('[features]\nwebmail = "none"\nfirewall = false\n', ("mail", "db", "web"), {"nginx"},
     MAIL_PORTS | {80, 443}),
    ('[features]\nwireguard = true\nradicale = true\n', ("mail", "db"), {"wireguard", "firewall"},
     MAIL_PORTS),
    ('[backup]\nrepository = "/srv/restic"\n', ("mail", "db"), {"firewall", "backup"}, MAIL_PORTS),
    ('[features]\nbackups = false\n[backup]\nrepository = "/srv/restic"\n', ("mail", "db"),
     {"firewall"}, MAIL_PORTS),
]


@pytest.mark.parametrize(("extra", "roles", "services_", "ports"), TABLE)
def test_services_and_ports_follow_roles_and_features(extra, roles, services_, ports):
    plan = _plan(extra, roles)
    # backups are wanted on every mail host (check warns without a repository)
    wanted = EVERYWHERE | MAIL | services_ | ({"backup"} if "backups = false" not in extra else set())
    assert set(plan.services) == wanted
    assert {p.number for p in plan.ports if p.exposure == "public"} == ports
    assert set(firewall.public_ports(plan, {22})) == ports | {22}


def test_webmail_is_decided_once_by_the_plan():
    assert _plan().webmail == "roundcube"
    assert _plan(roles=("mail", "db")).webmail == "none"  # no web tier, no webmail
    sogo = _plan('[features]\nwebmail = "sogo"\nactivesync = true\n')
    assert (sogo.webmail, sogo.activesync, sogo.radicale) == ("sogo", True, False)
    assert _plan('[features]\nradicale = true\n').radicale
    assert not _plan('[features]\nradicale = true\n', ("mail", "db")).radicale


def test_a_host_without_the_web_tier_gets_no_web_packages_or_files():
    web = set(services.packages(_plan()))
    mail = set(services.packages(_plan(roles=("mail", "db"))))
    assert {"nginx", "roundcube-core", "php-fpm"} <= web
    assert not {"nginx", "roundcube-core", "php-fpm", "radicale", "sogo"} & mail
    assert {"postfix", "dovecot-core", "postgresql", "opendkim"} <= mail
    acme = _plan('[acme]\nenabled = true\n', ("mail", "db"))
    assert not acme.acme and "certbot" not in services.packages(acme)  # ACME needs nginx


def test_the_snapshot_reads_every_service_section_once():
    layout = services.layout()
    assert {"postgres", "dkim", "certificate", "roundcube", "sogo", "firewall"} <= set(layout.sections)
    assert "nginx" in layout.units and "postgresql" in layout.units
    assert layout.managed("/etc/postfix/main.cf") and not layout.managed("/etc/hosts")


@pytest.mark.parametrize("roles", [("web",), ("mail",), ("db",), ("mail", "web"), ("db", "web")])
def test_role_combinations_that_cannot_work_yet_are_refused_naming_the_host(roles):
    config = parse(BASE + '[[hosts]]\nname = "mx1"\naddress = "192.0.2.1"\n'
                          f'roles = {list(roles)!r}\n'.replace("'", '"'))
    with pytest.raises(ConfigError, match="host 'mx1' has roles"):
        services.plans(config, config.hosts)


def test_every_service_has_a_unique_name_and_a_part_to_play():
    names = [s.name for s in services.SERVICES]
    assert len(names) == len(set(names))
    assert all(s.deploy or s.retire or s.checks for s in services.SERVICES)
