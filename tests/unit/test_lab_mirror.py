"""The lab takes its Debian mirror from this machine's apt sources, never a name of its own."""

from __future__ import annotations

import pytest

from mailfleet.errors import UsageError
from mailfleet.lab.mirror import lab_mirror


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_deb822_main_archive_not_security(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILFLEET_LAB_MIRROR", raising=False)
    write(tmp_path, "sources.list.d/debian.sources", """\
Types: deb
# a comment inside the stanza
URIs: http://security.mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
""")
    write(tmp_path, "sources.list.d/other.sources", "Types: deb\nEnabled: no\nURIs: http://x.example/d\nSuites: stable\n")
    assert lab_mirror(tmp_path) == "http://mirror.example/debian"


def test_one_line_sources_with_options(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILFLEET_LAB_MIRROR", raising=False)
    write(tmp_path, "sources.list", "# deb http://old.example/debian bookworm main\n"
          "deb-src http://src.example/debian bookworm main\n"
          "deb [arch=amd64 signed-by=/k.gpg] https://local.example/debian bookworm main\n")
    assert lab_mirror(tmp_path) == "https://local.example/debian"


def test_environment_overrides_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILFLEET_LAB_MIRROR", "http://proxy.example:3142/debian/")
    assert lab_mirror(tmp_path) == "http://proxy.example:3142/debian"
    monkeypatch.setenv("MAILFLEET_LAB_MIRROR", "not a uri; rm -rf /")
    with pytest.raises(UsageError, match="MAILFLEET_LAB_MIRROR"):
        lab_mirror(tmp_path)


def test_no_sources_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILFLEET_LAB_MIRROR", raising=False)
    with pytest.raises(UsageError, match="No Debian archive found"):
        lab_mirror(tmp_path)

