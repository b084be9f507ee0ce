"""Pure logic behind deploy and check: parsers of host command output, hashes, schema."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mailfleet.accounts import schema
from mailfleet.accounts.passwords import generate_password, hash_password, verify_password
from mailfleet.config import parse
from mailfleet.config import HostSettings
from mailfleet.engine import mailclient
from mailfleet.services import certs, fail2ban, mailstore, opendkim, packages, plan_host, units
from mailfleet.templating import render

GENKEY_TXT = '''mail._domainkey	IN	TXT	( "v=DKIM1; h=sha256; k=rsa; "
	  "p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxyz"
	  "abc123==" )  ; ----- DKIM key mail for example.test
'''


def test_dkim_public_key_record_joins_the_quoted_pieces():
    assert opendkim.public_key_record(GENKEY_TXT) == (
        "v=DKIM1; h=sha256; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxyzabc123=="
    )
    assert opendkim.public_key_record("") is None


def test_opendkim_asks_the_hosts_resolvers_without_a_resolver_file_for_real_domains():
    """OpenDKIM parses a ResolverConfiguration file again for every message, from many
    threads, with libunbound's parser that is not thread-safe (451 4.7.1 and crashes under
    concurrent mail): the resolvers go in Nameservers; only a .test domain needs the file."""
    values = dict(domains=["a.example.com"], selector="mail", key_dir="/etc/opendkim/keys",
                  port=8891, nameservers=["10.0.0.53", "2001:db8::53"], fqdn="mx.example.com")
    conf = render("opendkim/opendkim.conf.j2", special_zones=[], **values)
    assert "\nNameservers             10.0.0.53,2001:db8::53\n" in conf
    assert "\nResolverConfiguration" not in conf
    lab = render("opendkim/opendkim.conf.j2", special_zones=["test"], **values)
    assert "\nResolverConfiguration   /etc/opendkim/unbound.conf\n" in lab
    assert "\nNameservers" not in lab
    none = render("opendkim/opendkim.conf.j2", special_zones=[], **{**values, "nameservers": []})
    assert "\nNameservers" not in none and "\nResolverConfiguration" not in none


def test_postfix_knows_the_mail_domains_without_asking_the_database():
    """Domains are mailfleet.toml's: listed in main.cf and in the sender check's table, not
    looked up in PostgreSQL five times per message (8.9 -> 4.0 lookups per delivery)."""
    domains = ["example.org", "shop.example.com"]
    main = render("postfix/main.cf.j2", fqdn="mx.example.org", domain="example.org",
                  domains=domains, own_domain_senders="/etc/postfix/own_domain_senders",
                  compatibility_level="3.6", message_size_bytes=1, quota_status_port=12340,
                  opendkim_port=8891, opendmarc_port=8893, chain_file="/etc/x.pem",
                  cipher_list="ECDHE-ECDSA-AES256-GCM-SHA384")
    assert "\nvirtual_mailbox_domains = example.org, shop.example.com\n" in main
    assert "check_sender_access texthash:/etc/postfix/own_domain_senders\n" in main
    assert "virtual_domains.cf" not in main and "own_domain_senders.cf" not in main
    table = render("postfix/own_domain_senders.j2", domains=domains)
    rows = [line.split("\t") for line in table.splitlines() if not line.startswith("#")]
    assert [key for key, _ in rows] == domains
    assert all(value.startswith("REJECT 5.7.1 ") for _, value in rows)
    with pytest.raises(Exception):
        render("postfix/own_domain_senders.j2", domains=["evil.org REJECT\nx"])


def test_certificate_inspection_reads_names_expiry_and_verification():
    text = ("X509v3 Subject Alternative Name: \n    DNS:mail.example.org, DNS:mx1.example.org\n"
            "notAfter=Feb 28 12:00:00 2029 GMT\nverified\n")
    names, not_after, verified = certs.parse_inspection(text)
    assert names == {"mail.example.org", "mx1.example.org"}
    assert not_after == datetime(2029, 2, 28, 12, 0, tzinfo=timezone.utc)
    assert verified
    assert certs.parse_inspection("") == (set(), None, False)


def test_unit_and_socket_parsing():
    text = ("active\nactive\nfailed\nactive\n==\n"
            "LISTEN 0 100 0.0.0.0:25 0.0.0.0:*\nLISTEN 0 244 127.0.0.1:5432 0.0.0.0:*\n"
            "LISTEN 0 100 [::]:993 [::]:*\n")
    states, listening = units.parse(text, ["postgresql", "postfix", "dovecot", "opendkim"])
    assert states == {"postgresql": "active", "postfix": "active", "dovecot": "failed",
                      "opendkim": "active"}
    assert listening == {25: {"0.0.0.0"}, 5432: {"127.0.0.1"}, 993: {"::"}}


def test_disk_parsing():
    text = ("/dev/vda1 81000000 19000000 61000000 24% /\next4 rw,relatime,usrquota\n"
            "systemd-nspawn\n")
    assert mailstore.parse_disk(text) == (24, 61000000, "ext4", "rw,relatime,usrquota",
                                          "systemd-nspawn")
    assert mailstore.parse_disk("")[0] is None


def test_password_hashes_are_dovecot_argon2id_with_parallelism_1():
    hashed = hash_password("s3cret-Pass")
    assert hashed.startswith("{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(hashed, "s3cret-Pass")
    assert not verify_password(hashed, "wrong")
    assert not verify_password(hashed.removeprefix("{ARGON2ID}"), "s3cret-Pass")
    assert len(generate_password()) == 20 and generate_password() != generate_password()


def test_migrations_are_numbered_and_record_their_version():
    found = schema.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    script = found[0].script()
    assert "CREATE TABLE IF NOT EXISTS schema_migrations" in script
    assert script.rstrip().endswith("VALUES (1, 'initial');")
    for role in schema.ROLES:  # every role gets its grants in some migration
        assert any(f"TO {role}" in m.sql or f" {role};" in m.sql or f", {role}" in m.sql
                   for m in found), role


def test_dkim_verification_of_a_signed_message():
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
    raw = mailclient.check_message("a@example.test", "b@example.test", "t1").as_bytes()
    signature = dkim.sign(raw, b"mail", b"example.test", private, include_headers=[b"from", b"subject"])
    assert mailclient.verify_dkim(signature + raw, {"example.test": record}) == (True, "signature verifies")
    tampered = signature + raw.replace(b"check t1", b"check t2")
    assert mailclient.verify_dkim(tampered, {"example.test": record})[0] is False
    assert mailclient.verify_dkim(raw, {"example.test": record}) == (False, "message has no DKIM-Signature")


def test_config_mail_settings_and_package_list():
    config = parse('[mail]\ndomain = "Example.org"\nhostname = "mail.example.org"\n'
                   'domains = ["example.net", "example.org"]\ndkim_selector = "s2026"\n')
    assert config.mail.all_domains == ["example.org", "example.net"]
    assert config.mail.dkim_selector == "s2026"
    with pytest.raises(Exception, match="dkim_selector"):
        parse('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\ndkim_selector = "a b"\n')
    assert {"postfix-pgsql", "dovecot-pgsql", "dovecot-sieve", "opendkim-tools",
            "postgresql"} <= set(packages(_plan(config)))


def _plan(config, roles=("mail", "db", "web")):
    return plan_host(config, HostSettings(name="mx1", address="192.0.2.1", roles=list(roles)))


def test_webmail_choice_picks_packages_and_fail2ban_jail():
    base = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[features]\n'
    sogo = parse(base + 'webmail = "sogo"\nactivesync = true\n')
    roundcube = parse(base + 'radicale = true\n')
    web, mail_only = ["mail", "db", "web"], ["mail", "db"]
    assert {"sogo", "memcached", "sogo-activesync"} <= set(packages(_plan(sogo, web)))
    assert not {"roundcube-core", "php-fpm", "radicale"} & set(packages(_plan(sogo, web)))
    assert not {"sogo", "nginx"} & set(packages(_plan(sogo, mail_only)))
    assert {"roundcube-core", "radicale"} <= set(packages(_plan(roundcube, web)))
    assert "sogo" not in packages(None)  # lab images: SOGo excludes Roundcube, never both
    assert fail2ban.jails(_plan(sogo, web))[-1] == "sogo-auth"
    # Radicale's failed logins reach Dovecot from the host itself: a jail of its own, on web
    # hosts with Radicale only
    assert fail2ban.jails(_plan(roundcube, web))[-2:] == ["roundcube-auth", "radicale"]
    assert "radicale" not in fail2ban.jails(_plan(roundcube, mail_only))
    assert "radicale" not in fail2ban.jails(_plan(parse(base + 'webmail = "roundcube"\n'), web))
    assert fail2ban.jails(_plan(sogo, mail_only)) == ["sshd", "postfix", "dovecot"]


def test_sogo_files_are_where_each_debian_puts_them():
    from dataclasses import replace

    from mailfleet.services.platform import SUPPORTED
    assert SUPPORTED[12].gnustep_lib == "/usr/lib/GNUstep"
    assert SUPPORTED[13].gnustep_lib == "/usr/lib/x86_64-linux-gnu/GNUstep"
    assert replace(SUPPORTED[13], machine="aarch64").gnustep_lib == \
        "/usr/lib/aarch64-linux-gnu/GNUstep"


def test_certificate_inspection_tells_an_acme_certificate_from_the_local_ca():
    text = ("X509v3 Subject Alternative Name: critical\n    DNS:mail.example.org\n"
            "notAfter=Feb 28 12:00:00 2029 GMT\nissuer=CN=Pebble Intermediate CA 52a235\n"
            "source acme\n")
    found = certs.inspect(text)
    assert found.source == "acme" and found.issuer == "CN=Pebble Intermediate CA 52a235"
    assert not found.verified and found.days_left() > 365
    assert certs.inspect("source local-ca\n").source == "local-ca"
    assert certs.inspect("").days_left() == -1


def test_acme_settings_default_to_lets_encrypt_and_check_their_values():
    base = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[acme]\n'
    assert parse(base).acme.directory_url == "https://acme-v02.api.letsencrypt.org/directory"
    staging = parse(base + "enabled = true\nstaging = true\n").acme
    assert staging.directory_url == "https://acme-staging-v02.api.letsencrypt.org/directory"
    with pytest.raises(Exception, match=r"acme.directory: 'http://ca.test/dir' is not an https:// URL"):
        parse(base + 'directory = "http://ca.test/dir"\n')
    with pytest.raises(Exception, match=r"acme.challenge"):
        parse(base + 'challenge = "tls-alpn-01"\n')
    with pytest.raises(Exception, match=r"add the zones as \[\[dns.zones\]\]"):
        parse(base + 'enabled = true\nchallenge = "dns-01"\n')


def test_acme_directory_ca_file_must_be_a_readable_certificate(tmp_path):
    base = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[acme]\n'
    with pytest.raises(Exception, match=r"acme.directory_ca_file: cannot read /nonexistent.pem"):
        parse(base + 'directory_ca_file = "/nonexistent.pem"\n')
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(Exception, match=r"holds no PEM certificate"):
        parse(base + f'directory_ca_file = "{junk}"\n')


def test_backup_settings_and_status_parsing():
    from mailfleet.services import backup

    base = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[backup]\n'
    assert "restic" not in packages(_plan(parse(base)))  # no repository: no backups set up
    config = parse(base + 'repository = "sftp:backup@192.0.2.9:/srv/restic"\n')
    assert "restic" in packages(_plan(config, ["mail", "db"]))
    assert "backup" in _plan(config).services
    with pytest.raises(Exception, match=r"backup.repository: 'backups' is not a restic repository"):
        parse(base + 'repository = "backups"\n')
    with pytest.raises(Exception, match=r"backup.schedule"):
        parse(base + 'schedule = "daily; rm -rf /"\n')
    status = backup.parse_status("last 2026-11-26T03:17:02Z\nwal 2026-11-26T03:17:01Z 0\n"
                                 "timer active\n")
    assert status == {"last": "2026-11-26T03:17:02Z", "wal": "2026-11-26T03:17:01Z 0",
                      "timer": "active"}


def test_backup_password_is_made_once_on_this_machine(tmp_path):
    from mailfleet.services import backup

    path = tmp_path / "dir" / "backup-password"
    config = parse('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[backup]\n'
                   f'repository = "/var/backups/restic"\npassword_file = "{path}"\n')
    first = backup.local_password(config)
    assert len(first) >= 32 and oct(path.stat().st_mode)[-3:] == "600"
    assert backup.local_password(config) == first


def test_dns01_needs_a_key_of_its_own_for_every_web_host(tmp_path):
    """The zone's TSIG key stays on this machine (finding 9): DNS-01 wants acme.tsig_keys."""
    from mailfleet.errors import ConfigError
    from mailfleet.services import acme

    zone_key, host_key = tmp_path / "zone.key", tmp_path / "mx1.key"
    zone_key.write_text('key "zone" {\n\talgorithm hmac-sha256;\n\tsecret "em9uZXNlY3JldA==";\n};\n')
    host_key.write_text('key "acme-mx1" {\n\talgorithm hmac-sha256;\n\tsecret "aG9zdHNlY3JldA==";\n};\n')
    base = ('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
            f'[[dns.zones]]\nzone = "example.org"\nserver = "192.0.2.53"\ntsig_key_file = "{zone_key}"\n'
            '[acme]\nenabled = true\nchallenge = "dns-01"\n')
    hosts = ('[[hosts]]\nname = "mx1"\naddress = "192.0.2.1"\n'
             '[[hosts]]\nname = "mx2"\naddress = "192.0.2.2"\nroles = ["mail"]\n')
    with pytest.raises(Exception, match=r"acme.tsig_keys has no key for host 'mx1'"):
        parse(base + hosts)
    with pytest.raises(Exception, match=r"acme.tsig_keys names host 'mx9', which is not in"):
        parse(base + f'tsig_keys = {{ mx1 = "{host_key}", mx9 = "{host_key}" }}\n' + hosts)
    config = parse(base + f'tsig_keys = {{ mx1 = "{host_key}" }}\n' + hosts)
    settings = acme.rfc2136_settings(config, ["mail.example.org"], "mx1")
    assert (settings["key_name"], settings["secret"]) == ("acme-mx1", "aG9zdHNlY3JldA==")
    with pytest.raises(ConfigError, match="no key for host mx2"):
        acme.rfc2136_settings(config, ["mail.example.org"], "mx2")
    lazy = parse(base + f'tsig_keys = {{ mx1 = "{zone_key}" }}\n' + hosts)
    with pytest.raises(ConfigError, match=r"acme.tsig_keys.mx1 .* is the key of zone example.org"):
        acme.rfc2136_settings(lazy, ["mail.example.org"], "mx1")


def test_lab_dns_grants_each_host_only_its_challenge_names():
    from mailfleet.lab import dns as lab_dns

    grants = lab_dns.acme_grants(["a.test", "b.test", "sub.b.test"],
                                 {"n2": ["mail.b.test", "x.sub.b.test", "elsewhere.org"]})
    assert grants == {"a.test": [],
                      "b.test": [("acme-n2", "_acme-challenge.mail.b.test.")],
                      "sub.b.test": [("acme-n2", "_acme-challenge.x.sub.b.test.")]}
    conf = lab_dns._script(["b.test"], {"n2": ["mail.b.test"]})
    assert "grant acme-n2 name _acme-challenge.mail.b.test. TXT;" in conf
    assert "grant mailfleet-lab zonesub ANY;" in conf
