"""Account rules and the CSV import's parsing and judging (pure logic, no hosts)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mailfleet.accounts import bulk, rules
from mailfleet.accounts.passwords import hash_many, verify_password
from mailfleet.errors import UsageError

GOOD = "Correct-Horse-7-battery"


@pytest.mark.parametrize("value, expected", [
    ("Alice@Example.ORG", "alice@example.org"),
    ("first.last@example.org", "first.last@example.org"),
    ("First.Last-2_x@example.org", "first.last-2_x@example.org"),
])
def test_addresses_are_normalised(value, expected):
    assert rules.address(value) == expected


@pytest.mark.parametrize("value, reason", [
    ("alice", "not an email address"),
    ("@example.org", "not an email address"),
    ("a..b@example.org", "two dots in a row"),
    (".a@example.org", "starts or ends with a dot"),
    ("a.@example.org", "starts or ends with a dot"),
    ("a b@example.org", "contains ' '"),
    ("bob+tag@example.org", "contains '\\+'"),
    ("bob@example", "no valid domain"),
    ("bob@exa_mple.org", "no valid domain"),
    ("x" * 65 + "@example.org", "longer than 64"),
])
def test_bad_addresses_say_why(value, reason):
    with pytest.raises(ValueError, match=reason):
        rules.address(value)


# Everything RFC 5321 allows beyond letters, digits, "." "-" "_": each reached a root
# shell through the mailbox's name (issue 21, finding 1), or a path ("/").
SHELL_CHARS = "!#$%&'*/=?^`{|}~\"\\;()<>[]: \t"


@pytest.mark.parametrize("char", list(SHELL_CHARS))
def test_each_character_outside_letters_digits_dot_dash_underscore_is_refused_by_name(char):
    for check in (rules.address, rules.alias_source):
        with pytest.raises(ValueError) as refused:
            check(f"a{char}b@example.org")
        assert repr(char) in str(refused.value) and "letters, digits" in str(refused.value)
    with pytest.raises(ValueError, match="only contain letters"):
        rules.address("x`id`@example.org")


def test_non_ascii_letters_are_refused_too():
    with pytest.raises(ValueError, match="'é'"):
        rules.address("josé@example.org")


def test_existing_names_from_an_older_database_can_still_be_named():
    """remove/disable/passwd must reach a mailbox the old rules let in."""
    assert rules.existing("X`id`@Example.org") == "x`id`@example.org"
    assert rules.existing("/@example.org") == "/@example.org"
    assert rules.existing_alias_source("a$(b)@example.org") == "a$(b)@example.org"
    for bad in ("nobody", "a\nb@example.org", "a@nodomain"):
        with pytest.raises(ValueError):
            rules.existing(bad)


def test_alias_destinations_stay_permissive_but_refuse_control_characters():
    assert rules.destination("o'brien+x@outside.test") == "o'brien+x@outside.test"
    with pytest.raises(ValueError, match="not part of a plain address"):
        rules.destination("a\x1bb@outside.test")


def test_alias_sources_and_destinations():
    assert rules.alias_source("@Example.org") == "@example.org"
    assert rules.destination("Someone+lists@outside.test") == "someone+lists@outside.test"
    with pytest.raises(ValueError):
        rules.alias_source("@nodot")
    with pytest.raises(ValueError):
        rules.destination("not-an-address")


@pytest.mark.parametrize("value, expected", [
    ("", None), ("default", None), ("750", 750 * 2**20), ("500M", 500 * 2**20),
    ("2G", 2 * 2**30), ("1.5GiB", int(1.5 * 2**30)), ("2 gb", 2 * 2**30), ("1T", 2**40),
])
def test_quota_sizes(value, expected):
    assert rules.quota(value) == expected


@pytest.mark.parametrize("value", ["lots", "-5G", "5X", "100K", "0"])
def test_bad_quotas(value):
    with pytest.raises(ValueError, match="quota"):
        rules.quota(value)


def test_format_size():
    assert rules.format_size(2 * 2**30) == "2G"
    assert rules.format_size(int(1.5 * 2**30)) == "1.5G"
    assert rules.format_size(None, "2048M (default)") == "2048M (default)"


@pytest.mark.parametrize("password, reason", [
    ("", "empty"), ("short", "shorter than 12"), ("password1234", "most common"),
    ("aaaaaaaaaaaaaa", "most common|too few"), ("xx-alice-2024-xx", "user name"),
    (" leading-space-pw", "space"),
])
def test_weak_passwords_are_refused(password, reason):
    with pytest.raises(ValueError, match=reason):
        rules.password(password, "alice@example.org", 12)


def test_a_good_password_passes():
    assert rules.password(GOOD, "alice@example.org", 12) == GOOD


def test_names_allow_unicode_but_not_control_characters():
    assert rules.display_name(" Zoë Ångström ") == "Zoë Ångström"
    with pytest.raises(ValueError, match="control"):
        rules.display_name("a\x00b")


def test_hash_many_hashes_in_order_and_reports_progress():
    seen = []
    passwords = [f"{GOOD}-{i}" for i in range(6)]
    hashes = hash_many(passwords, seen.append)
    assert len(seen) == 6
    assert all(verify_password(h, p) for h, p in zip(hashes, passwords))
    assert not verify_password(hashes[0], passwords[1])


# -- CSV ------------------------------------------------------------------------------

def write(tmp_path: Path, text: str | bytes, name: str = "users.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


DB = bulk.Database(
    domains={"example.org", "other.test"},
    mailboxes={"old@example.org": False, "mailfleet-check@example.org": True},
    aliases={"sales@example.org": {"old@example.org"}},
)


def test_bom_crlf_quoted_commas_and_utf8_names(tmp_path):
    text = ('\ufeffemail,name,password,quota,aliases\r\n'
            f'zoe@example.org,"Ångström, Zoë",{GOOD},2G,"z@example.org, zz@other.test"\r\n'
            '"bob@example.org","Bob ""the builder"" Smith",,,\r\n'
            'jose@other.test,"José Núñez",,500M,\r\n')
    rows = bulk.read_rows(write(tmp_path, text.encode("utf-8")))
    assert [line for line, _ in rows] == [2, 3, 4]
    plan = bulk.plan(rows, DB, update=False, min_password_length=12)
    assert plan.problems == []
    zoe, bob, jose = plan.rows
    assert zoe.name == "Ångström, Zoë" and zoe.quota_bytes == 2 * 2**30
    assert zoe.aliases == ["z@example.org", "zz@other.test"] and zoe.password == GOOD
    assert bob.name == 'Bob "the builder" Smith' and bob.generated and len(bob.password) >= 20
    assert jose.name == "José Núñez" and jose.quota_bytes == 500 * 2**20


def test_a_quoted_line_break_keeps_the_following_line_numbers_right(tmp_path):
    text = ('email,name\r\nann@example.org,"Ann\r\nSecond line"\r\nbo b@example.org,Bob\r\n')
    plan = bulk.plan(bulk.read_rows(write(tmp_path, text)), DB, False, 12)
    assert plan.problems[0] == "line 2: name contains control characters"
    assert plan.problems[1].startswith("line 4: email 'bo b@example.org'")


def test_semicolon_separated_files_from_spreadsheets(tmp_path):
    rows = bulk.read_rows(write(tmp_path, f"Email;Name;Password\nann@example.org;Ann;{GOOD}\n"))
    assert rows == [(2, {"email": "ann@example.org", "name": "Ann", "password": GOOD})]


def test_every_bad_line_is_named(tmp_path):
    text = ("email,name,password,quota,aliases\n"
            f"good@example.org,Good,{GOOD},,\n"          # 2 fine
            f"not-an-address,X,{GOOD},,\n"                # 3
            f"x@unknown.test,X,{GOOD},,\n"                # 4
            f"good@example.org,Again,{GOOD},,\n"          # 5 duplicate of 2
            "weak@example.org,W,secret,,\n"              # 6
            f"q@example.org,Q,{GOOD},lots,\n"             # 7
            f"a@example.org,A,{GOOD},,old@example.org\n"  # 8 alias is a mailbox
            f"b@example.org,B,{GOOD},,sales@example.org\n"  # 9 alias delivers elsewhere
            f"mailfleet-check@example.org,C,{GOOD},,\n"   # 10
            f"sales@example.org,S,{GOOD},,\n"             # 11 is an alias
            "\n"
            f"c@example.org,C,{GOOD},,,extra\n")          # 13 too many fields
    plan = bulk.plan(bulk.read_rows(write(tmp_path, text)), DB, False, 12)
    lines = sorted({int(p.split(":")[0].split()[1]) for p in plan.problems})
    assert lines == [3, 4, 5, 6, 7, 8, 9, 10, 11, 13], plan.problems
    assert any("line 5: good@example.org is also on line 2" == p for p in plan.problems)
    assert any("line 6: password is shorter than 12" in p for p in plan.problems)
    message = bulk.describe(plan.problems, Path("users.csv"))
    assert message.startswith(f"users.csv: {len(plan.problems)} problem(s), nothing was imported")
    assert message.count("\n  users.csv, line ") == len(plan.problems)


def test_existing_users_are_skipped_or_updated_and_keep_their_password(tmp_path):
    path = write(tmp_path, "email,name\nold@example.org,Old Timer\nnew@example.org,New\n")
    skip = bulk.plan(bulk.read_rows(path), DB, update=False, min_password_length=12)
    assert [(r.email, r.action, r.generated) for r in skip.rows] == [
        ("old@example.org", "skip", False), ("new@example.org", "create", True)]
    update = bulk.plan(bulk.read_rows(path), DB, update=True, min_password_length=12)
    old = update.rows[0]
    assert old.action == "update" and old.password is None and not old.generated
    assert [r.email for r in update.writes] == ["old@example.org", "new@example.org"]


def test_an_alias_already_pointing_at_the_same_user_is_fine(tmp_path):
    path = write(tmp_path, "email,aliases\nold@example.org,sales@example.org\n")
    assert bulk.plan(bulk.read_rows(path), DB, True, 12).problems == []


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("mail,name\nx@example.org,X\n", "unknown column 'mail'"),
    ("name\nX\n", "no email column"),
    ("email,email\nx@example.org,y@example.org\n", "appears twice"),
    (b"email,name\nx@example.org,Jos\xe9\n", "line 2: not UTF-8"),
])
def test_file_level_problems(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        bulk.read_rows(write(tmp_path, text))


def test_generated_passwords_file_is_private_and_new(tmp_path):
    rows = [bulk.Row(2, "a@example.org", "", "s3cret-generated-1", True, None, []),
            bulk.Row(3, "b@example.org", "", GOOD, False, None, [])]
    out = tmp_path / "out.csv"
    bulk.write_passwords(out, rows)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert out.read_text().splitlines() == ["email,password", "a@example.org,s3cret-generated-1"]
    with pytest.raises(FileExistsError):
        bulk.write_passwords(out, rows)


def test_the_guides_in_docs_match_what_mailfleet_guide_prints_for_the_example():
    from mailfleet.cli.guide import render_guide
    from mailfleet.config import parse
    from mailfleet.templating import render_init

    config = parse(render_init("example.org", "mail.example.org"))
    docs = Path(__file__).parents[2] / "docs"
    for name, file in (("clients", "mail-clients.md"), ("import", "bulk-import.md")):
        assert (docs / file).read_text() == render_guide(name, config, for_docs=True), (
            f"docs/{file} is stale: regenerate it with render_guide({name!r}, …, for_docs=True)")
    mine = render_guide("clients", config.model_copy(update={"mail": config.mail.model_copy(
        update={"hostname": "mx.family.test"})}))
    assert "`mx.family.test`" in mine and "example install" not in mine


def test_a_csv_row_with_shell_characters_is_refused_by_line(tmp_path):
    text = ("email,name,password,quota,aliases\n"
            f"good@example.org,Good,{GOOD},,\n"                  # 2
            f"x`id`@example.org,X,{GOOD},,\n"                     # 3
            f"ok@example.org,O,{GOOD},,a$(reboot)@example.org\n"  # 4: the alias
            f"/@example.org,S,{GOOD},,\n")                        # 5
    plan = bulk.plan(bulk.read_rows(write(tmp_path, text)), DB, False, 12)
    assert plan.problems == [
        "line 3: email 'x`id`@example.org' contains '`' before the @; a mailbox or alias "
        "name may only contain letters, digits, '.', '-' and '_'",
        "line 4: alias 'a$(reboot)@example.org' contains '$' before the @; a mailbox or "
        "alias name may only contain letters, digits, '.', '-' and '_'",
        "line 5: email '/@example.org' contains '/' before the @; a mailbox or alias "
        "name may only contain letters, digits, '.', '-' and '_'",
    ], plan.problems


# -- removing a mailbox's mail: the root shell command, run here against a temp directory --

HOSTILE = ["x`id`y", "$(touch pwned)", "a'; touch pwned; '", '"$(touch pwned)"', "-rf",
           "a b\\c", "${IFS}touch${IFS}pwned", "*"]


def _run_disposal(tmp_path: Path, local: str | None, how: str):
    from mailfleet.services.mailboxes import dispose_command

    vmail, backups = tmp_path / "vmail", tmp_path / "backups"
    cwd = tmp_path / "cwd"  # where a relative `touch pwned` would land
    cwd.mkdir(exist_ok=True)
    command = dispose_command("example.org", local, how, vmail=str(vmail),
                              backup_root=str(backups), archive_dir=str(backups / "mailboxes"))
    import subprocess

    result = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, (command, result.stderr)
    assert list(cwd.iterdir()) == [], f"{command!r} ran something: {list(cwd.iterdir())}"
    return result.stdout, vmail / "example.org"


def _mailbox(domain_dir: Path, local: str) -> None:
    (domain_dir / local / "Maildir" / "cur").mkdir(parents=True)
    (domain_dir / local / "Maildir" / "cur" / "1.eml").write_text("mail")


@pytest.mark.parametrize("local", HOSTILE)
def test_archiving_a_hostile_name_runs_nothing_and_names_the_archive_after_it(tmp_path, local):
    import re
    import tarfile

    domain_dir = tmp_path / "vmail" / "example.org"
    _mailbox(domain_dir, local)
    _mailbox(domain_dir, "other")
    out, _ = _run_disposal(tmp_path, local, "archive")
    archive = Path(out.rstrip("\n"))
    assert archive.parent == tmp_path / "backups" / "mailboxes"
    assert re.fullmatch(re.escape(f"{local}@example.org-") + r"\d{8}-\d{6}\.tar\.gz",
                        archive.name), archive.name
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive) as tar:
        assert f"{local}/Maildir/cur/1.eml" in tar.getnames()
    assert sorted(p.name for p in domain_dir.iterdir()) == ["other"]
    assert (domain_dir / "other" / "Maildir" / "cur" / "1.eml").exists()


@pytest.mark.parametrize("local", HOSTILE)
def test_purging_a_hostile_name_deletes_only_its_own_directory(tmp_path, local):
    domain_dir = tmp_path / "vmail" / "example.org"
    _mailbox(domain_dir, local)
    _mailbox(domain_dir, "other")
    _run_disposal(tmp_path, local, "purge")
    assert sorted(p.name for p in domain_dir.iterdir()) == ["other"]


@pytest.mark.parametrize("local", ["/", "..", ".", "", "a/b", "../x"])
def test_a_name_that_is_no_single_path_component_is_never_archived_or_purged(tmp_path, local):
    from mailfleet.services.mailboxes import dispose_command

    for how in ("archive", "purge"):
        with pytest.raises(UsageError, match="not a single path component"):
            dispose_command("example.org", local, how)
    assert dispose_command("example.org", local, "keep") is None


def test_archiving_a_whole_domain(tmp_path):
    domain_dir = tmp_path / "vmail" / "example.org"
    _mailbox(domain_dir, "ann")
    out, _ = _run_disposal(tmp_path, None, "archive")
    assert Path(out.strip()).name.startswith("example.org-") and not domain_dir.exists()
