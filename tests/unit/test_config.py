"""mailfleet.toml validation: the good files load, every bad one is named precisely."""

from __future__ import annotations

import pytest

from mailfleet.config import find_line, parse
from mailfleet.errors import ConfigError
from mailfleet.templating import render_init

GOOD = """\
[mail]
domain = "Example.ORG"
hostname = "mail.example.org"
domains = ["example.net"]

[features]
webmail = "sogo"

[[hosts]]
name = "mx1"
address = "203.0.113.10"
ssh_port = 2222

[[hosts]]
name = "mx2"
address = "mx2.example.org"
fqdn = "mx2.example.org"
roles = ["mail"]
"""


def test_good_file_loads_with_defaults():
    cfg = parse(GOOD)
    assert cfg.mail.domain == "example.org"
    assert cfg.features.webmail == "sogo"
    assert cfg.features.radicale is False
    assert [h.name for h in cfg.hosts] == ["mx1", "mx2"]
    assert cfg.hosts[0].ssh_port == 2222 and cfg.hosts[0].ssh_user == "root"
    assert cfg.host_fqdn(cfg.hosts[0]) == "mx1.example.org"
    assert cfg.host_fqdn(cfg.hosts[1]) == "mx2.example.org"


def test_single_host_takes_the_mail_hostname():
    cfg = parse(GOOD.split("[[hosts]]\nname = \"mx2\"")[0])
    assert cfg.host_fqdn(cfg.hosts[0]) == "mail.example.org"


def test_init_template_is_a_valid_config():
    cfg = parse(render_init("example.com", "mail.example.com"))
    assert cfg.mail.hostname == "mail.example.com"
    assert cfg.hosts == []
    text = render_init("example.com", "mail.example.com", [{"name": "n1", "address": "127.0.0.1",
                                                          "ssh_port": 2201, "lab": "t"}])
    assert parse(text).hosts[0].ssh_port == 2201


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, "site.toml")
    assert caught.value.exit_code == 2
    message = caught.value.message
    assert message.count("\n") == 0, message
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\nwebmial = 1\n',
         "site.toml, line 4: mail.webmial: unknown key"),
        ('[mail]\ndomain = "example.org"\n', "site.toml, line 1: mail.hostname: required key is missing"),
        ('[mail]\ndomain = "not a domain"\nhostname = "mail.example.org"\n',
         "site.toml, line 2: mail.domain: 'not a domain' is not a valid domain name"),
        ('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n\n'
         '[[hosts]]\nname = "a"\naddress = "x"\n\n[[hosts]]\nname = "b"\naddress = "y"\nssh_port = 70000\n',
         "site.toml, line 12: hosts[1].ssh_port: Input should be less than or equal to 65535"),
        ('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[[hosts]]\nname = "Bad Name"\naddress = "x"\n',
         "site.toml, line 5: hosts[0].name: 'Bad Name' is not a valid host name"),
        ('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[[hosts]]\nname = "a"\naddress = "x"\n'
         '[[hosts]]\nname = "a"\naddress = "y"\n',
         "host name 'a' is used twice"),
        ('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[admin]\nuser = "root"\n',
         "site.toml, line 5: admin.user: 'root' is not a usable admin user name"),
        ('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[features]\nwebmail = "horde"\n',
         'site.toml, line 5: features.webmail: must be "roundcube", "sogo" or "none"'),
        ('[mail\ndomain = 1\n', "site.toml: not valid TOML"),
    ],
)
def test_bad_files_name_file_line_and_key(text, expected):
    assert expected in _error(text)


@pytest.mark.parametrize("webmail", ['["roundcube", "sogo"]', '"roundcube+sogo"'])
def test_both_webmails_are_refused_with_the_reason(webmail):
    message = _error(
        f'[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[features]\nwebmail = {webmail}\n'
    )
    assert "line 5: features.webmail" in message
    assert "cannot both be deployed" in message and "Sieve" in message


def test_radicale_with_sogo_is_refused():
    message = _error('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
                     '[features]\nwebmail = "sogo"\nradicale = true\n')
    assert "features" in message and "SOGo" in message


def test_find_line_for_nested_and_missing_keys():
    text = GOOD
    assert find_line(text, ["hosts", 1, "fqdn"]) == 17
    assert find_line(text, ["hosts", 0, "ssh_key"]) == 9  # missing key: its table header
    assert find_line(text, ["features", "webmail"]) == 7
    assert find_line(text, ["nothing"]) is None


def test_web_paths_are_normalised_and_radicale_needs_its_own():
    base = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n\n[web]\n'
    cfg = parse(base + 'webmail_path = "/webmail/"\n')
    assert cfg.web.webmail_path == "/webmail" and cfg.web.radicale_path == "/radicale"
    with pytest.raises(ConfigError, match=r"line 5: web: radicale_path '/' must be a path of its own"):
        parse(base + 'radicale_path = "/"\n')
    with pytest.raises(ConfigError, match=r"web.webmail_path: 'web mail' is not a URL path"):
        parse(base + 'webmail_path = "web mail"\n')


def test_activesync_needs_sogo():
    base = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[features]\n'
    message = _error(base + 'activesync = true\n')
    assert 'activesync = true needs webmail = "sogo"' in message and "'roundcube'" in message
    assert parse(base + 'webmail = "sogo"\nactivesync = true\n').features.activesync


SSHD_BASE = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[admin]\n'


@pytest.mark.parametrize(("lines", "entry", "why"), [
    # the issue's own example: a Match block that re-allows root and passwords
    ('["Match all", "PasswordAuthentication yes", "PermitRootLogin yes", "AllowUsers root"]',
     "entry 1, 'Match all'", "Match is refused"),
    ('["  match User mfadmin"]', "entry 1", "match is refused"),
    ('["Match=all"]', "entry 1", "Match is refused"),
    ('["Include /tmp/loose.conf"]', "entry 1", "Include is refused"),
    ('["MaxSessions 4", "PasswordAuthentication yes"]', "entry 2, 'PasswordAuthentication yes'",
     "PasswordAuthentication is set by mailfleet"),
    ('["passwordauthentication=yes"]', "entry 1", "passwordauthentication is set by mailfleet"),
    ('["PasswordAuthentication = yes"]', "entry 1", "PasswordAuthentication is set by mailfleet"),
    ('["PERMITROOTLOGIN yes"]', "entry 1", "PERMITROOTLOGIN is set by mailfleet"),
    ('["AllowUsers root"]', "entry 1", "AllowUsers is set by mailfleet"),
    ('["KbdInteractiveAuthentication yes"]', "entry 1", "is set by mailfleet"),
    ('["ChallengeResponseAuthentication yes"]', "entry 1", "is set by mailfleet"),
    ('["PubkeyAuthentication no"]', "entry 1", "is set by mailfleet"),
    ('["AuthenticationMethods any"]', "entry 1", "is set by mailfleet"),
    ('["PermitEmptyPasswords yes"]', "entry 1", "is set by mailfleet"),
    ('["AuthorizedKeysFile /tmp/keys"]', "entry 1", "is set by mailfleet"),
    ('["HostbasedAuthentication yes"]', "entry 1", "is set by mailfleet"),
    ('["ListenAddress 0.0.0.0"]', "entry 1", "is set by mailfleet"),
    ('["Port 2222"]', "entry 1", "is set by mailfleet"),
    ('["Ciphers +3des-cbc"]', "entry 1", "is set by mailfleet"),
    ('["X11Forwarding yes"]', "entry 1", "is set by mailfleet"),
])
def test_sshd_settings_cannot_loosen_mailfleets_ssh(lines, entry, why):
    message = _error(SSHD_BASE + f"sshd_settings = {lines}\n")
    assert message.startswith("site.toml, line 5: admin.sshd_settings: "), message
    assert entry in message and why in message, message


def test_sshd_settings_mailfleet_does_not_own_are_kept():
    text = SSHD_BASE + 'sshd_settings = ["MaxSessions 4", "Banner=/etc/issue.net", "  PrintMotd no"]\n'
    assert parse(text).admin.sshd_settings == ["MaxSessions 4", "Banner=/etc/issue.net", "PrintMotd no"]


BASE = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
HOST = '[[hosts]]\nname = "mx1"\naddress = "203.0.113.10"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a DMARC report address must not add tags (;), URIs (,) or a size limit (!)
        (BASE + '[dns]\ndmarc_rua = "x; p=none; rua=mailto:a@example.org"\n',
         "site.toml, line 5: dns.dmarc_rua: 'x; p=none; rua=mailto:a@example.org' is not a "
         "report address: ';' is not allowed before the @"),
        (BASE + '[dns]\ndmarc_rua = "a,mailto:b@example.org"\n',
         "site.toml, line 5: dns.dmarc_rua: 'a,mailto:b@example.org' is not a report address: "
         "',' is not allowed"),
        (BASE + '[dns]\ndmarc_rua = "mailto:a!10m@example.org"\n',
         "site.toml, line 5: dns.dmarc_rua: 'a!10m@example.org' is not a report address: "
         "'!' is not allowed"),
        (BASE + '[dns]\ntlsrpt_rua = "tls reports@example.org"\n',
         "site.toml, line 5: dns.tlsrpt_rua: 'tls reports@example.org' is not a report address: "
         "' ' is not allowed"),
        (BASE + '[dns]\ndmarc_rua = ".dmarc@example.org"\n',
         "site.toml, line 5: dns.dmarc_rua: '.dmarc@example.org' is not a report address: "
         "no leading, trailing or double dot"),
        # what ssh would read as an option, or a user name no system has
        (BASE + '[[hosts]]\nname = "mx1"\naddress = "-oProxyCommand=touch /tmp/x"\n',
         "site.toml, line 6: hosts[0].address: '-oProxyCommand=touch /tmp/x' starts with '-'"),
        (BASE + '[[hosts]]\nname = "mx1"\naddress = "-p2222"\n',
         "site.toml, line 6: hosts[0].address: '-p2222' starts with '-'"),
        (BASE + '[[hosts]]\nname = "mx1"\naddress = "root@host;x"\n',
         "site.toml, line 6: hosts[0].address: 'root@host;x' is not an IP address or host name"),
        (BASE + HOST + 'ssh_user = "-oProxyCommand=x"\n',
         "site.toml, line 7: hosts[0].ssh_user: '-oProxyCommand=x' is not a Unix user name"),
        (BASE + HOST + 'ssh_user = "Admin User"\n',
         "site.toml, line 7: hosts[0].ssh_user: 'Admin User' is not a Unix user name"),
        (BASE + HOST + 'ssh_known_hosts = "/tmp/known hosts"\n',
         "site.toml, line 7: hosts[0].ssh_known_hosts: '/tmp/known hosts' is not a usable "
         "file name (no spaces, quotes or control characters)"),
        (BASE + HOST + 'ssh_key = "/tmp/key\\nx"\n',
         "site.toml, line 7: hosts[0].ssh_key: '/tmp/key\\nx' is not a usable file name"),
        (BASE + HOST + 'ssh_key = ""\n',
         "site.toml, line 7: hosts[0].ssh_key: '' is not a usable file name"),
    ],
)
def test_report_addresses_and_ssh_fields_are_refused_with_file_line_and_key(text, expected):
    assert expected in _error(text)


def test_report_addresses_and_host_fields_that_are_fine_still_load():
    cfg = parse(BASE + '[dns]\ndmarc_rua = "mailto:DMARC+reports_1.x@Example.NET"\n'
                'tlsrpt_rua = "tls-reports@example.org"\n' + HOST + 'ssh_user = "mf_admin-2"\n'
                'ssh_key = "~/.ssh/id_ed25519"\n'
                '[[hosts]]\nname = "mx2"\naddress = "mx2.example.org"\n'
                '[[hosts]]\nname = "mx3"\naddress = "2001:db8::3"\n'
                '[[hosts]]\nname = "mx4"\naddress = "localhost"\n')
    assert cfg.dns.dmarc_rua == "DMARC+reports_1.x@Example.NET"
    assert [h.address for h in cfg.hosts] == ["203.0.113.10", "mx2.example.org", "2001:db8::3",
                                              "localhost"]
