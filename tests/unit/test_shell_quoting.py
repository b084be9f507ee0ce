"""Shell commands and shell-script templates keep every value one word: a hostile value
(issue 21, finding 1) is data, never code. Each built command is run here with bash
against stand-in programs, in a directory where an injected `touch pwned` would land."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from mailfleet.config import HostSettings
from mailfleet.services import checks, opendkim, wireguard
from mailfleet.templating import _env, render

HOSTILE = ["$(touch pwned)", "`touch pwned`", "'; touch pwned; '", "a\"$(touch pwned)\"b",
           "x;touch pwned", "-rf"]


def run_here(tmp_path: Path, command: str, stubs: dict[str, str] | None = None) -> str:
    """Run `command` with bash in tmp_path/cwd, with `stubs` ({program: shell body}) first on
    PATH; assert that nothing was created in the working directory."""
    cwd, bin_dir = tmp_path / "cwd", tmp_path / "bin"
    cwd.mkdir(exist_ok=True)
    bin_dir.mkdir(exist_ok=True)
    for name, body in (stubs or {}).items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True)
    assert list(cwd.iterdir()) == [], f"{command!r} ran an injected command"
    return done.stdout


def test_the_shquote_filter_makes_one_shell_word(tmp_path):
    template = _env.from_string("printf '%s\\n' {{ value | shquote }}")
    for value in HOSTILE:
        assert run_here(tmp_path, template.render(value=value)) == value + "\n"


@pytest.mark.parametrize("value", HOSTILE)
def test_the_https_check_passes_its_path_as_data(tmp_path, value):
    out = run_here(tmp_path, checks.https_fetch("/" + value),
                   {"hostname": "echo host.test", "curl": 'printf "%s\\n" "$@"'})
    assert out.splitlines()[-1] == f"https://host.test/{value}"


@pytest.mark.parametrize("value", HOSTILE)
def test_the_dkim_key_listing_quotes_the_domain(tmp_path, value):
    config = SimpleNamespace(mail=SimpleNamespace(dkim_selector="mail", all_domains=[value]))
    out = run_here(tmp_path, opendkim.print_keys_command(config))
    assert out.splitlines()[0] == f"== {value}"


def test_the_local_ca_script_quotes_the_host_name(tmp_path):
    script = render("certs/local-ca.sh.j2", tls_dir="/etc/x", fqdn="$(touch pwned)", days=825)
    subject = next(line for line in script.splitlines() if "-subj" in line)
    assert "'/O=mailfleet/CN=mailfleet local CA for $(touch pwned)'" in subject


def test_a_host_public_key_is_used_only_if_it_is_one():
    """A host's answer goes into the other hosts' wg0.conf, whose PostUp runs as root."""
    key = "A" * 43 + "="
    assert wireguard._public_key(f" {key}\n") == key
    for bad in (f"{key}\nPostUp = touch /tmp/pwned", "openssl: not found", "", None):
        assert wireguard._public_key(bad) is None


@pytest.mark.parametrize("user", ["a;reboot", "-oProxyCommand=touch pwned", "a b", "$(id)", ""])
def test_an_ssh_user_that_is_no_login_name_is_refused(user):
    with pytest.raises(ValueError, match="not a Unix user name"):
        HostSettings(name="n1", address="192.0.2.1", ssh_user=user)
    assert HostSettings(name="n1", address="192.0.2.1", ssh_user="ec2-user").ssh_user == "ec2-user"


def test_a_restore_takes_only_ids_and_names_restic_and_debian_make():
    """The snapshot's host name comes from the repository: whoever can write there names it."""
    from mailfleet.services.restore import check_restore_values
    from mailfleet.errors import ConfigError

    good = {"id": "a" * 64, "short_id": "a" * 8, "hostname": "n1.example.test"}
    check_restore_values(good, "15")
    for bad, postgresql in [({**good, "hostname": "x$(touch /tmp/p)"}, "15"),
                            ({**good, "hostname": "n1\nreboot"}, "15"),
                            ({**good, "id": "latest; reboot"}, "15"),
                            (good, "15; reboot")]:
        with pytest.raises(ConfigError, match="nothing was restored"):
            check_restore_values(bad, postgresql)
