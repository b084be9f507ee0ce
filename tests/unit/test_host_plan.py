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


# -- the split tiers: a web-only host beside one mail and database host --------------------

SPLIT = BASE + """
[[hosts]]
name = "mx1"
address = "192.0.2.1"
roles = ["mail", "db"]

[[hosts]]
name = "web1"
address = "192.0.2.2"
roles = ["web"]
"""


def _split(extra: str = "") -> dict:
    config = parse(SPLIT + extra)
    return services.plans(config, config.hosts)


def test_a_web_only_host_runs_the_web_tier_and_finds_the_mail_host():
    plans = _split()
    web, mail = plans["web1"], plans["mx1"]
    assert {"nginx", "roundcube", "upstream"} <= set(web.services)
    assert not {"postgres", "postfix", "dovecot", "mailstore", "opendkim", "backup"} & set(web.services)
    assert not {"nginx", "roundcube", "upstream"} & set(mail.services)
    assert (web.upstream.name, web.upstream.fqdn, web.upstream.address) == \
        ("mx1", "mx1.example.org", "192.0.2.1")
    assert (web.database_host, web.mail_host) == ("mx1", "mx1")
    assert mail.peers == ("192.0.2.2",) and mail.private_address == "192.0.2.1"
    assert mail.webmail_databases == ("roundcube",) and web.webmail_databases == ()
    web_packages, mail_packages = set(services.packages(web)), set(services.packages(mail))
    assert {"nginx", "roundcube-core", "php-fpm", "ca-certificates"} <= web_packages
    assert not {"postfix", "dovecot-core", "postgresql", "opendkim"} & web_packages
    assert not {"nginx", "roundcube-core", "php-fpm"} & mail_packages


def test_postgresql_is_opened_to_the_web_host_alone():
    plans = _split()
    mail_rules = firewall.wanted_rules(parse(SPLIT), plans["mx1"], {22}, False)
    assert "allow from 192.0.2.2 to any port 5432 proto tcp" in mail_rules
    assert "allow 5432/tcp" not in mail_rules and "allow 443/tcp" not in mail_rules
    assert set(firewall.public_ports(plans["web1"], {22})) == {22, 80, 443}
    assert not any("5432" in r for r in firewall.wanted_rules(parse(SPLIT), plans["web1"], {22}, False))


def test_over_wireguard_the_tiers_use_their_vpn_addresses():
    plans = _split('[features]\nwireguard = true\nwebmail = "sogo"\n')
    assert plans["mx1"].peers == ("10.8.0.2",) and plans["web1"].upstream.address == "10.8.0.1"
    assert plans["mx1"].webmail_databases == ("sogo",)


def test_pg_hba_admits_only_webmail_roles_from_the_web_host():
    from mailfleet.services import postgres
    from mailfleet.templating import render

    text = render("postgresql/pg_hba.conf.j2", peers=postgres.hba_peers(_split()["mx1"]))
    remote = [line.split() for line in text.splitlines() if line.startswith("hostssl")]
    assert remote == [["hostssl", "roundcube", "mailfleet_roundcube", "192.0.2.2/32", "scram-sha-256"],
                      ["hostssl", "mailfleet", "mailfleet_password", "192.0.2.2/32", "scram-sha-256"]]
    assert not [line for line in text.splitlines() if line.startswith("host ") and "127.0.0.1" not in line
                and "::1" not in line]


@pytest.mark.parametrize(("extra", "message"), [
    ('\n[[hosts]]\nname = "mx2"\naddress = "192.0.2.3"\nroles = ["mail", "db"]\n',
     "needs exactly one host with roles \"mail\" and \"db\" to talk to, and the config has 2"),
    ('\n[[hosts]]\nname = "web2"\naddress = "web2.example.org"\nroles = ["web"]\n',
     "host 'web2': its address 'web2.example.org' is a name"),
])
def test_split_tiers_that_cannot_work_are_refused(extra, message):
    config = parse(SPLIT + extra)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        services.plans(config, config.hosts)


def test_a_deploy_takes_the_database_host_before_the_web_hosts_that_use_it():
    config = parse(SPLIT.replace('name = "mx1"', 'name = "mx0"').replace(
        '[[hosts]]\nname = "mx0"', '[[hosts]]\nname = "web0"\naddress = "192.0.2.9"\nroles = ["web"]\n\n'
        '[[hosts]]\nname = "mx0"', 1))
    assert [[h.name for h in phase] for phase in services.phases(config, config.hosts)] == \
        [["mx0"], ["web0", "web1"]]
    one = parse(BASE + '[[hosts]]\nname = "mx1"\naddress = "192.0.2.1"\n')
    assert [[h.name for h in phase] for phase in services.phases(one, one.hosts)] == [["mx1"]]


@pytest.mark.parametrize(("address", "message"), [
    ("127.0.0.1", "cannot be where the other hosts reach it"),
    ("0.0.0.0", "cannot be where the other hosts reach it"),
    ("fe80::1", "cannot be where the other hosts reach it"),
    ("192.0.2.1", "hosts 'mx1' and 'web1' have the same address 192.0.2.1"),
])
def test_addresses_the_tiers_cannot_admit_each_other_by_are_refused(address, message):
    config = parse(SPLIT.replace('address = "192.0.2.2"', f'address = "{address}"'))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        services.plans(config, config.hosts)


def test_ipv6_addresses_are_written_as_ufw_and_pg_hba_print_them():
    config = parse(SPLIT.replace('address = "192.0.2.2"', 'address = "2001:db8:0:0::2"'))
    assert services.plans(config, config.hosts)["mx1"].peers == ("2001:db8::2",)


def test_a_web_only_host_does_not_claim_the_mail_host_name():
    from mailfleet.services import certs

    config = parse(SPLIT)
    assert "mail.example.org" not in certs.certificate_names(config, "web1.example.org", False)
    assert "mail.example.org" in certs.certificate_names(config, "mx1.example.org", True)


def test_postgresql_may_listen_on_the_private_address_and_nowhere_else():
    from mailfleet.services import units
    from mailfleet.services.shape import Port, Unit

    pg = [Unit("postgresql", (Port(5432, "PostgreSQL", "private"),)),
          Unit("opendkim", (Port(8891, "OpenDKIM", "local"),))]

    def status(*listening: str) -> dict[str, str]:
        text = "active\nactive\n==\n" + "".join(f"LISTEN 0 128 {a} 0.0.0.0:*\n" for a in listening)
        return {r.name: r.status for r in units.host_checks("mx1", pg, text, frozenset({"10.0.0.1"}))}

    assert status("127.0.0.1:5432", "10.0.0.1:5432", "127.0.0.1:8891")["port 5432"] == "ok"
    assert status("0.0.0.0:5432", "127.0.0.1:8891")["port 5432"] == "fail"
    assert status("127.0.0.1:5432", "10.0.0.1:8891")["port 8891"] == "fail"  # local stays local
