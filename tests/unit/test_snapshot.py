"""The host snapshot: one command's output split into what each service reads."""

from __future__ import annotations

from mailfleet import services
from mailfleet.engine import snapshot
from mailfleet.engine.snapshot import FileState
from mailfleet.services.postgres import DatabaseState


def test_command_runs_every_section_and_split_finds_them_again():
    command = services.layout().command()
    for name in ("files", "secrets", "os", "postgres", "dkim", "certificate", "aliases", "units"):
        assert f"@@mailfleet-section {name}'" in command
    output = ("@@mailfleet-section os\ndebian 13\n@@mailfleet-section secrets\n"
              "postgres-mailfleet_admin abc\ncheck-mailbox  \n@@mailfleet-section dkim\n")
    sections = snapshot.split(output)
    assert sections == {"os": "debian 13", "secrets": "postgres-mailfleet_admin abc\ncheck-mailbox  ",
                        "dkim": ""}
    assert snapshot.parse_secrets(sections["secrets"]) == {"postgres-mailfleet_admin": "abc"}


def test_files_pair_metadata_with_checksums():
    text = ("640 root postfix /etc/postfix/pgsql/virtual_domains.cf\n"
            "2770 vmail vmail /etc/mailfleet/odd\n==\n"
            f"{'a' * 40}  /etc/postfix/pgsql/virtual_domains.cf\n")
    assert snapshot.parse_files(text) == {
        "/etc/postfix/pgsql/virtual_domains.cf": FileState("640", "root", "postfix", "a" * 40)}
    layout = services.layout()
    assert layout.managed("/etc/postfix/main.cf") and layout.managed("/etc/aliases")
    assert not layout.managed("/etc/postfixx/main.cf") and not layout.managed("/etc/hosts")


def test_units_and_database_state():
    assert snapshot.parse_units("postfix active enabled\ndovecot inactive disabled\nbad\n") == {
        "postfix": ("active", "enabled"), "dovecot": ("inactive", "disabled")}
    state = DatabaseState.parse("db postgres\ndb mailfleet\nrole mailfleet_admin\nschema 1\n"
                                "domain example.org\nmailbox mailfleet-check@example.org\n")
    assert state.databases == {"postgres", "mailfleet"} and state.roles == {"mailfleet_admin"}
    assert state.schema_version == 1 and state.domains == {"example.org"}
    assert DatabaseState.parse("") == DatabaseState()
