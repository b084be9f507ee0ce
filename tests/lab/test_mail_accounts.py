"""Accounts through the real CLI (`mailfleet domain|user|alias ...`) on Debian 12 and 13,
proven by real IMAP and SMTP clients in the lab network."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shlex
import smtplib
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import DOMAIN, NODES, PASSWORD, Cli, Node

from mailfleet.accounts import db
from mailfleet.config import load
from mailfleet.engine.tunnel import tunnel

NEW_PASSWORD = "Another-Staple-9-horse"


def unique(prefix: str, node: Node) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}-{node.name}@{DOMAIN}"


def users(cli: Cli, node: str, *extra: str) -> dict[str, dict]:
    listed = json.loads(cli("user", "list", "--host", node, "--json", *extra).stdout)
    return {u["email"]: u for u in listed}


def test_a_user_added_with_the_cli_logs_in_sends_and_changes_password(node: Node):
    cli, email = node.cli, unique("ann", node)
    added = cli("user", "add", email, "--name", "Ann Example", "--quota", "1G",
                "--password-stdin", "--host", node.name, input=PASSWORD + "\n")
    assert f"added {email} on {node.name}" in added.stdout
    assert users(cli, node.name)[email] | {"created_at": ""} == {
        "email": email, "name": "Ann Example", "quota_bytes": 2**30, "active": True,
        "created_at": "", "home": None, "replica": None}  # a single host: no homes
    assert node.imap_login(email, PASSWORD)
    subject = node.submit(email, email)
    assert node.fetch(email, subject) is not None

    cli("user", "passwd", email, "--password-stdin", "--host", node.name, input=NEW_PASSWORD)
    assert not node.imap_login(email, PASSWORD), "the old password still works over IMAP"
    with pytest.raises(smtplib.SMTPAuthenticationError):
        node.submit(email, email)
    assert node.imap_login(email, NEW_PASSWORD)
    subject = node.submit(email, email, password=NEW_PASSWORD)
    assert node.fetch(email, subject, password=NEW_PASSWORD) is not None

    generated = cli("user", "passwd", email, "--generate", "--host", node.name).stdout
    password = generated.split(f"password for {email}: ")[1].split()[0]
    assert len(password) >= 20 and node.imap_login(email, password)


def _listeners(kind: str) -> list[str]:
    """`ss` lines of listening sockets with their processes (-t TCP, -x Unix)."""
    return subprocess.run(["ss", f"-l{kind}pH"], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def test_the_database_tunnel_is_a_private_socket_and_no_tcp_port(node: Node):
    """The forward to PostgreSQL ends in a Unix socket in a 0700 directory of this user,
    listened on by our ssh, which holds no TCP listener (any local user could use one, and a
    program holding the port first would get the password); `user add|list` go through it."""
    host = load(node.cli.config).select_hosts([node.name])[0]
    with tunnel(host, [db.PORT]) as forward:
        info = forward.directory.lstat()
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()
        ours = f"pid={forward.pid},"
        assert [line for line in _listeners("x")
                if f" {forward.socket(db.PORT)} " in line and ours in line], "no socket of our ssh"
        assert not [line for line in _listeners("t") if ours in line], "ssh listens on TCP"
    assert not forward.directory.exists()
    with db.connect(host) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == db.ADMIN_ROLE
    email = unique("sock", node)
    node.cli("user", "add", email, "--password-stdin", "--host", node.name, input=PASSWORD)
    assert email in users(node.cli, node.name)


def test_an_alias_and_a_catch_all_deliver_to_their_target(node: Node):
    cli, target = node.cli, unique("target", node)
    cli("user", "add", target, "--password-stdin", "--host", node.name, input=PASSWORD)
    alias = unique("alias", node)
    cli("alias", "add", alias, target, "--host", node.name)
    subject = f"via alias {uuid.uuid4().hex[:8]}"
    sender = node.user("alias-sender")
    node.submit(sender, alias, subject=subject)
    assert node.fetch(target, subject) is not None, "mail to the alias did not reach its target"
    listed = json.loads(cli("alias", "list", "--host", node.name, "--json").stdout)
    assert {"source": alias, "destination": target, "active": True} in listed

    other = f"sub{node.name}.{DOMAIN}"  # a catch-all needs a domain of its own
    cli("domain", "add", other)
    try:
        cli("user", "add", f"boss@{other}", "--password-stdin", "--host", node.name, input=PASSWORD)
        assert node.rcpt25(f"anything@{other}")[0] == 550
        cli("alias", "add", f"@{other}", f"boss@{other}", "--host", node.name)
        assert node.rcpt25(f"anything@{other}")[0] == 250
        subject = node.submit(sender, f"whatever-{uuid.uuid4().hex[:4]}@{other}")
        assert node.fetch(f"boss@{other}", subject) is not None, "the catch-all did not deliver"
    finally:
        cli("domain", "remove", other, "--yes", "--purge")

    cli("alias", "remove", alias, "--host", node.name)
    code, _ = node.rcpt25(alias)
    assert code == 550, "a removed alias still accepts mail"


def test_names_and_destinations_with_brackets_are_listed_literally(node: Node, monkeypatch):
    """Rich markup in stored data ([/], Bob[/bold]) is printed as text, not a MarkupError."""
    monkeypatch.setenv("COLUMNS", "400")  # one table line per row: the text is not wrapped
    cli, email, name = node.cli, unique("bob", node), "Bob[/bold] [/]"
    cli("user", "add", email, "--name", name, "--password-stdin", "--host", node.name,
        input=PASSWORD)
    assert users(cli, node.name)[email]["name"] == name
    listed = cli("user", "list", "--host", node.name, check=False)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert any(email in line and name in line for line in listed.stdout.splitlines()), \
        listed.stdout
    # stored through the database layer: the data may predate today's address rules
    alias, target = unique("brackets", node), "a[/]b[red]c@outside.test"
    cli.account(node.name, "alias", alias, target)
    aliases = cli("alias", "list", "--host", node.name, check=False)
    assert aliases.returncode == 0 and "Traceback" not in aliases.stderr, aliases.stderr
    assert any(alias in line and target in line for line in aliases.stdout.splitlines()), \
        aliases.stdout
    cli("alias", "remove", alias, "--host", node.name)
    cli("user", "remove", email, "--yes", "--purge", "--host", node.name)


def test_a_disabled_user_cannot_log_in_until_enabled(node: Node):
    cli, email = node.cli, unique("dis", node)
    cli("user", "add", email, "--password-stdin", "--host", node.name, input=PASSWORD)
    assert node.imap_login(email, PASSWORD)
    cli("user", "disable", email, "--host", node.name)
    assert users(cli, node.name)[email]["active"] is False
    assert not node.imap_login(email, PASSWORD), "a disabled user logged in over IMAP"
    with pytest.raises(smtplib.SMTPAuthenticationError):
        node.submit(email, email)
    assert node.rcpt25(email)[0] == 550
    cli("user", "enable", email, "--host", node.name)
    assert node.imap_login(email, PASSWORD)


def test_removing_a_user_keeps_archives_or_purges_its_mail(node: Node):
    cli = node.cli
    for how, flags in (("keep", ()), ("archive", ("--archive",)), ("purge", ("--purge",))):
        email = unique(how, node)
        cli("user", "add", email, "--password-stdin", "--host", node.name, input=PASSWORD)
        subject = node.submit(email, email)
        assert node.fetch(email, subject) is not None
        refused = cli("user", "remove", email, "--host", node.name, check=False)
        assert refused.returncode == 2 and "--yes" in refused.stderr  # no terminal, no --yes
        assert email in users(cli, node.name)
        out = cli("user", "remove", email, "--yes", *flags, "--host", node.name).stdout
        assert email not in users(cli, node.name)
        assert not node.imap_login(email, PASSWORD)
        home = f"/var/mail/vmail/{DOMAIN}/{email.split('@')[0]}"
        present = cli.ssh(node.name, f"test -d {home}/Maildir && echo yes || echo no")
        assert present == ("yes" if how == "keep" else "no"), out
        if how == "archive":
            archive = out.split("archived to ")[1].split()[0]
            listing = cli.ssh(node.name, f"stat -c %a {archive} && tar -tzf {archive}")
            assert listing.splitlines()[0] == "600" and "/Maildir/" in listing


def test_a_mailbox_with_shell_characters_in_its_name_is_removed_without_running_them(node: Node):
    """An older database may hold names today's rules refuse: removing them runs nothing."""
    cli, tag = node.cli, uuid.uuid4().hex[:6]
    survivor = unique("survivor", node)
    cli("user", "add", survivor, "--password-stdin", "--host", node.name, input=PASSWORD)
    subject = node.submit(survivor, survivor)
    assert node.fetch(survivor, subject) is not None
    marker = f"mf-pwned-{tag}"
    markers = f"/tmp/{marker} /root/{marker} /home/*/{marker}"
    hostile = [f"x`id`{tag}",  # the review's case: the archive came out named after `id`
               f"x$(cd;cd ..;cd ..;cd tmp;touch {marker}){tag}",
               f"q'\"`cd&&touch {marker}`\"'{tag}"]
    for how, local in [("archive", name) for name in hostile] + [("purge", hostile[1] + "p")]:
        email = f"{local}@{DOMAIN}"
        cli.account(node.name, "raw-mailbox", email, PASSWORD)
        home = f"/var/mail/vmail/{DOMAIN}/{local}"
        cli.ssh(node.name, f"install -d -o vmail -g vmail {shlex.quote(home + '/Maildir/cur')} && "
                           f"echo mail > {shlex.quote(home + '/Maildir/cur/1.eml')}")
        out = cli("user", "remove", email, "--yes", f"--{how}", "--host", node.name).stdout
        assert email not in users(cli, node.name)
        assert cli.ssh(node.name, f"ls -d {markers} 2>/dev/null || true") == "", (email, out)
        assert cli.ssh(node.name, f"test -e {shlex.quote(home)} && echo yes || echo no") == "no"
        if how == "archive":
            archive = out.split("archived to ")[1].split(f" on {node.name} and removed")[0]
            prefix = f"/var/backups/mailfleet/mailboxes/{email}-"
            assert archive.startswith(prefix) and archive.endswith(".tar.gz"), out
            listing = cli.ssh(node.name, f"tar -tzf {shlex.quote(archive)}")
            assert f"{local}/Maildir/cur/1.eml" in listing.splitlines(), listing
    # a name that is no single path component: its mail is never archived or deleted
    slash = f"/@{DOMAIN}"
    cli.account(node.name, "raw-mailbox", slash, PASSWORD)
    try:
        for flag in ("--purge", "--archive"):
            refused = cli("user", "remove", slash, "--yes", flag, "--host", node.name, check=False)
            assert refused.returncode == 2, (refused.stdout, refused.stderr)
            assert "path" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
            assert slash in users(cli, node.name), "refused, yet the mailbox was removed"
    finally:
        cli("user", "remove", slash, "--yes", "--host", node.name)  # its mail stays where it is
    assert node.fetch(survivor, subject) is not None, "another mailbox of the domain was lost"
    assert cli.ssh(node.name, f"ls /var/mail/vmail/{DOMAIN} | wc -l") != "0"


def test_a_mailbox_name_with_shell_characters_is_refused(node: Node):
    result = node.cli("user", "add", f"x`id`@{DOMAIN}", "--generate", "--host", node.name,
                      check=False)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "'`'" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"x`id`@{DOMAIN}" not in users(node.cli, node.name)


def test_a_removed_domains_mail_is_rejected(deployed: Cli, lab_net):
    cli = deployed
    domain = "gone.example.internal"
    added = cli("domain", "add", domain)
    assert "TXT" in added.stdout and f"mail._domainkey.{domain}" in added.stdout
    assert domain in cli.config.read_text()
    nodes = {}
    for name, (address, _) in NODES.items():
        email = f"user@{domain}"
        cli("user", "add", email, "--password-stdin", "--host", name, input=PASSWORD)
        nodes[name] = address
        assert _rcpt(lab_net, address, email)[0] == 250
    assert cli.json("deploy")["changes"] == 0

    refused = cli("domain", "remove", domain, check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    cli("domain", "remove", domain, "--yes")
    assert domain not in cli.config.read_text()
    for name, address in nodes.items():
        # the same address may still hit smtpd's one-entry resolver cache: 550 5.1.1
        code, text = _rcpt(lab_net, address, f"user@{domain}")
        assert code in (550, 554), (name, code, text)
        code, text = _rcpt(lab_net, address, f"anyone-else@{domain}")
        assert code == 554 and b"Relay access denied" in text, (name, code, text)
        assert f"user@{domain}" not in users(cli, name)
    assert cli.json("deploy")["changes"] == 0


def _rcpt(net, address: str, recipient: str) -> tuple[int, bytes]:
    def ask() -> tuple[int, bytes]:
        with smtplib.SMTP(address, 25, timeout=20) as smtp:
            smtp.ehlo("client.outside.test")
            smtp.mail("someone@outside.test")
            return smtp.rcpt(recipient)

    return net.run(ask)


LEFT = "left.internal"  # a domain in the database but not in mailfleet.toml


def test_bad_input_is_refused_with_exit_2_and_changes_nothing(node: Node, tmp_path):
    cli = node.cli
    before = users(cli, node.name)
    cases = [
        (("user", "add", f"x@{DOMAIN}", "--host", node.name), None, "no terminal"),
        (("user", "add", f"x@{DOMAIN}", "--password-stdin", "--host", node.name), "short\n",
         "shorter than 12"),
        (("user", "add", f"x@{DOMAIN}", "--password-stdin", "--host", node.name),
         "password1234\n", "most common"),
        (("user", "add", "x@unknown.test", "--generate", "--host", node.name), None,
         "not in mailfleet.toml"),
        # in the database, no longer in the file: Postfix refuses its mail, so no new
        # mailbox, alias or import row may go there
        (("user", "add", f"x@{LEFT}", "--generate", "--host", node.name), None,
         "not in mailfleet.toml"),
        (("alias", "add", f"@{LEFT}", f"x@{DOMAIN}", "--host", node.name), None,
         "not in mailfleet.toml"),
        (("user", "import", str(write_csv(tmp_path / "left.csv", [[f"x@{LEFT}", "", "", "", ""]])),
          "--host", node.name), None, f"left.csv, line 2: domain {LEFT} is not served"),
        (("user", "add", "not-an-address", "--generate", "--host", node.name), None,
         "not an email address"),
        (("user", "add", f"x@{DOMAIN}", "--quota", "lots", "--generate", "--host", node.name),
         None, "--quota: quota 'lots'"),
        (("user", "add", f"mailfleet-check@{DOMAIN}", "--generate", "--host", node.name), None,
         "exists already"),
        (("user", "remove", f"mailfleet-check@{DOMAIN}", "--yes", "--host", node.name), None,
         "health-check mailbox"),
        (("user", "passwd", f"nobody@{DOMAIN}", "--generate", "--host", node.name), None,
         "no mailbox"),
        (("alias", "add", f"a@{DOMAIN}", f"nobody@{DOMAIN}", "--host", node.name), None,
         "would bounce"),
        (("user", "list"), None, "--host"),  # two hosts with a database: which one?
        (("domain", "remove", DOMAIN, "--yes"), None, "primary domain"),
        (("domain", "add", "not_a_domain"), None, "not a valid domain"),
    ]
    left = shlex.quote(f"INSERT INTO domains (name) VALUES ('{LEFT}') ON CONFLICT DO NOTHING")
    cli.ssh(node.name, f"runuser -u postgres -- psql -XAtq -d mailfleet -c {left}")
    try:
        for args, stdin, message in cases:
            result = cli(*args, check=False, input=stdin)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            assert message in result.stderr and "Traceback" not in result.stderr, (args,
                                                                                 result.stderr)
            assert len(result.stderr.strip().splitlines()) <= 2, result.stderr
        assert users(cli, node.name) == before
    finally:
        gone = shlex.quote(f"DELETE FROM domains WHERE name = '{LEFT}'")
        cli.ssh(node.name, f"runuser -u postgres -- psql -XAtq -d mailfleet -c {gone}")


# -- CSV import -------------------------------------------------------------------------

def write_csv(path: Path, rows: list[list[str]], bom: bool = False, crlf: bool = False) -> Path:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n" if crlf else "\n").writerows(
        [["email", "name", "password", "quota", "aliases"], *rows])
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8"))
    return path


def test_a_thousand_users_import_and_can_log_in(node: Node, tmp_path):
    deployed, name = node.cli, node.name
    rows = []
    for i in range(1000):
        email = f"bulk{i:04d}-{name}@{DOMAIN}"
        password = "" if i % 10 == 0 else f"Bulk-{i:04d}-staple-horse"
        rows.append([email, f"Bulk User {i}", password, "1G" if i % 3 == 0 else "",
                     f"bulkalias{i:04d}-{name}@{DOMAIN}" if i % 50 == 0 else ""])
    path = write_csv(tmp_path / "users.csv", rows, bom=True, crlf=True)
    dry = deployed("user", "import", str(path), "--dry-run", "--host", name)
    assert "1000 to create" in dry.stdout and "100 password(s) to generate" in dry.stdout
    assert not any(e.startswith(f"bulk0001-{name}") for e in users(deployed, name))

    result = deployed("user", "import", str(path), "--host", name, timeout=600)
    assert "1000 created" in result.stdout, result.stdout
    listed = users(deployed, name)
    assert sum(1 for e in listed if e.startswith("bulk") and e.endswith(f"-{name}@{DOMAIN}")) == 1000
    assert listed[f"bulk0003-{name}@{DOMAIN}"]["quota_bytes"] == 2**30
    generated = tmp_path / "users-passwords.csv"
    assert stat.S_IMODE(generated.stat().st_mode) == 0o600
    handed_out = dict(list(csv.reader(generated.open()))[1:])
    assert len(handed_out) == 100
    assert "Bulk-" not in generated.read_text() and handed_out[f"bulk0000-{name}@{DOMAIN}"] not in result.stdout

    sample = random.Random(7).sample(range(1000), 12) + [0, 999]
    for i in sample:
        email = rows[i][0]
        password = rows[i][2] or handed_out[email]
        assert node.imap_login(email, password), f"{email} cannot log in after the import"
    assert node.rcpt25(f"bulkalias0050-{name}@{DOMAIN}")[0] == 250

    again = deployed("user", "import", str(path), "--host", name)
    assert "0 created, 0 updated, 1000 existing skipped" in again.stdout
    rows[5][1], rows[5][2] = "Renamed User", NEW_PASSWORD
    write_csv(path, rows)
    generated.unlink()
    updated = deployed("user", "import", str(path), "--update", "--host", name, timeout=600)
    assert "0 created, 1000 updated" in updated.stdout
    assert not generated.exists(), "an update must not generate new passwords"
    assert users(deployed, name)[rows[5][0]]["name"] == "Renamed User"
    assert node.imap_login(rows[5][0], NEW_PASSWORD)
    assert node.imap_login(rows[0][0], handed_out[rows[0][0]]), "update reset a kept password"


def test_a_csv_with_bad_rows_changes_nothing_and_names_every_bad_line(deployed: Cli, tmp_path):
    before = users(deployed, "n1")
    rows = [
        [f"fine1@{DOMAIN}", "Fine", PASSWORD, "", ""],            # line 2
        ["broken-address", "X", PASSWORD, "", ""],                # 3
        [f"fine2@{DOMAIN}", "Fine", "weak", "", ""],              # 4
        ["x@not-served.test", "X", PASSWORD, "", ""],             # 5
        [f"fine1@{DOMAIN}", "Again", PASSWORD, "", ""],           # 6
        [f"fine3@{DOMAIN}", "Q", PASSWORD, "a lot", ""],          # 7
        [f"fine4@{DOMAIN}", "A", PASSWORD, "", f"mailfleet-check@{DOMAIN}"],  # 8
        [f"fine5@{DOMAIN}", "Fine", PASSWORD, "", ""],            # 9 fine
    ]
    path = write_csv(tmp_path / "bad.csv", rows)
    for extra in ((), ("--dry-run",)):
        result = deployed("user", "import", str(path), "--host", "n1", *extra, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "6 problem(s), nothing was imported" in result.stderr, result.stderr
        for line in (3, 4, 5, 6, 7, 8):
            assert f"bad.csv, line {line}:" in result.stderr, (line, result.stderr)
        assert "line 2:" not in result.stderr and "line 9:" not in result.stderr
    assert users(deployed, "n1") == before
    assert not (tmp_path / "bad-passwords.csv").exists()


def test_bom_crlf_quoted_commas_and_utf8_names_import_correctly(node: Node, tmp_path):
    rows = [
        [unique("zoe", node), "Ångström, Zoë", PASSWORD, "2G", ""],
        [unique("jose", node), 'José "Pepe" Núñez', PASSWORD, "", ""],
        [unique("li", node), "李小龙", PASSWORD, "", ""],
    ]
    path = write_csv(tmp_path / "utf8.csv", rows, bom=True, crlf=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf") and b"\r\n" in path.read_bytes()
    node.cli("user", "import", str(path), "--host", node.name)
    listed = users(node.cli, node.name)
    for email, name, *_ in rows:
        assert listed[email]["name"] == name
    assert listed[rows[0][0]]["quota_bytes"] == 2 * 2**30
    assert node.imap_login(rows[2][0], PASSWORD)


def test_user_add_in_a_terminal_asks_twice_without_echo(node: Node):
    """A real pseudo-terminal: the password is asked for twice, never shown, and a refused
    one is asked for again."""
    import os
    import pty
    import select
    import sys
    import time

    email = unique("tty", node)
    weak, good = email.split("@")[0] + "-Pass-123", "Typed-In-Secret-42"
    env = {**os.environ, "MAILFLEET_LAB": node.cli.lab, "MAILFLEET_CONFIG": str(node.cli.config)}
    pid, fd = pty.fork()
    if pid == 0:  # the child: mailfleet on the terminal
        os.execve(sys.executable, [sys.executable, "-m", "mailfleet", "user", "add", email,
                                   "--host", node.name], env)
    seen = b""

    def wait_for(token: bytes, start: int) -> int:
        nonlocal seen
        deadline = time.monotonic() + 60
        while token not in seen[start:]:
            assert time.monotonic() < deadline, f"no {token!r} in {seen!r}"
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        return seen.index(token, start) + len(token)

    try:
        at = 0
        for password in (weak, good):
            at = wait_for(b"Password for", at)
            time.sleep(0.3)  # getpass turns echo off after printing the prompt
            os.write(fd, password.encode() + b"\n")
            at = wait_for(b"Repeat for confirmation", at)
            time.sleep(0.3)
            os.write(fd, password.encode() + b"\n")
        wait_for(b"added", at)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    text = seen.decode(errors="replace")
    assert "contains the user name" in text
    assert weak not in text and good not in text, "a password was echoed"
    assert node.imap_login(email, good)
