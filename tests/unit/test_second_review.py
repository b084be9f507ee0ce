"""What the second security review found after issue 21's fixes: each case was accepted before."""

from __future__ import annotations

import pytest

from mailfleet.accounts import rules
from mailfleet.config import BackupSettings, HostSettings, parse
from mailfleet.dns.publish import read_key
from mailfleet.errors import ConfigError


@pytest.mark.parametrize("repository", ["sftp:-oProxyCommand=touch${IFS}/tmp/x:/srv",
                                        "sftp:user@-oProxyCommand=x:/srv", "sftp://-oX=y/srv",
                                        "rclone:--config=/tmp/x:path"])
def test_a_backup_host_that_ssh_or_rclone_would_read_as_an_option_is_refused(repository):
    with pytest.raises(ValueError, match="starting with '-'"):
        BackupSettings(repository=repository)


@pytest.mark.parametrize("repository", ["sftp:backup@host.example:/srv/restic",
                                        "sftp://backup@host.example:2222//srv/restic",
                                        "rclone:remote:bucket", "/srv/restic-a-b"])
def test_real_backup_addresses_still_pass(repository):
    assert BackupSettings(repository=repository).repository == repository


@pytest.mark.parametrize(("field", "value"), [("name", "n1\n"), ("address", "host.example\n"),
                                              ("ssh_user", "admin\n")])
def test_a_trailing_line_break_is_not_a_name(field, value):
    with pytest.raises(ValueError):
        HostSettings(**{"name": "n1", "address": "192.0.2.1", field: value})


@pytest.mark.parametrize("value", ["evil@attacker.example,me@example.org", "a<b>@example.org",
                                   'a"b@example.org', "a;b@example.org", "a(b)@example.org"])
def test_an_alias_destination_is_one_plain_address(value):
    with pytest.raises(ValueError, match="not part of a plain address"):
        rules.destination(value)
    assert rules.destination("Someone+tag@Elsewhere.example") == "someone+tag@elsewhere.example"


def test_a_tsig_key_file_holds_a_dns_name_and_base64(tmp_path):
    good = tmp_path / "good.key"
    good.write_text('key "acme-n1" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0+/=";\n};\n')
    assert read_key(str(good)).secret == "c2VjcmV0+/="
    bad = tmp_path / "bad.key"
    bad.write_text('key "acme-n1" {\n\talgorithm hmac-sha256;\n'
                   '\tsecret "abc\ndns_rfc2136_server = 198.51.100.9";\n};\n')
    with pytest.raises(ConfigError, match="base64"):
        read_key(str(bad))


@pytest.mark.parametrize("line", ["TrustedUserCAKeys /etc/ssh/ca.pub",
                                  "AuthorizedPrincipalsFile /etc/ssh/principals",
                                  "AuthorizedPrincipalsCommand /bin/true"])
def test_sshd_settings_cannot_add_a_certificate_login(line):
    text = ('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n[admin]\n'
            f'sshd_settings = ["{line}"]\n')
    with pytest.raises(ConfigError, match="is set by mailfleet"):
        parse(text)
