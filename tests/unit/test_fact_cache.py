"""The snapshot's answers to pyinfra facts (engine/facts.py): each fact's command run here by
`sh`, as the snapshot runs it on a host, must give what pyinfra's own read would."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pyinfra.facts.files import Directory, File, FindInFile, Link
from pyinfra.facts.server import Command, Which

from mailfleet.engine import facts


def _answer(cls, **arguments):
    fact = cls()
    text = subprocess.run(["sh", "-c", facts.shell(fact, arguments)], capture_output=True,
                          text=True, check=True).stdout
    return facts.answer(fact, text.rstrip("\n"))


def test_a_directory_and_a_missing_one(tmp_path: Path):
    (tmp_path / "d").mkdir(mode=0o750)
    found = _answer(Directory, path=str(tmp_path / "d"))
    assert found["mode"] == 750 and found["user"] == "root"
    assert _answer(Directory, path=str(tmp_path / "none")) is None
    assert _answer(File, path=str(tmp_path / "none")) is None


def test_a_file_a_link_and_a_line(tmp_path: Path):
    target = tmp_path / "hosts"
    target.write_text("127.0.0.1 localhost\n127.0.1.1 n1.example.test n1\n")
    assert _answer(File, path=str(target))["size"] == target.stat().st_size
    (tmp_path / "link").symlink_to(target)
    assert _answer(Link, path=str(tmp_path / "link"))["link_target"] == str(target)
    lines = _answer(FindInFile, path=str(target), pattern=r"^127\.0\.1\.1\s.*$")
    assert lines == ["127.0.1.1 n1.example.test n1"]
    assert _answer(FindInFile, path=str(target), pattern="^nothing$") == []


def test_a_failing_command_is_left_to_a_live_read_and_output_keeps_its_lines():
    assert _answer(Command, command="printf 'a\\n\\nb\\n'") == "a\n\nb"
    with pytest.raises(facts.Unanswered):  # pyinfra fails the host: let it, live
        _answer(Command, command="echo partial; exit 3")
    assert _answer(Which, command="no-such-command-here") is None


def test_a_read_declared_twice_runs_once():
    reads = [(Directory, {"path": "/a"}), (Directory, {"path": "/a"}), (File, {"path": "/a"})]
    assert facts.unique(reads) == [(Directory, {"path": "/a"}), (File, {"path": "/a"})]


@pytest.mark.parametrize("spelled", [
    ((), {"path": "/x"}),
    (("/x",), {}),
    ((), {"path": "/x", "_sudo": True}),
])
def test_one_read_has_one_key_however_it_is_spelled(spelled):
    args, kwargs = spelled
    assert facts.key(FindInFile, facts.fact_arguments(FindInFile, args, {"pattern": "p", **kwargs})) \
        == facts.key(FindInFile, facts.fact_arguments(
            FindInFile, (), {"path": "/x", "pattern": "p", "interpolate_variables": False}))


class _Host:
    """What FactCache touches of a pyinfra Host."""

    state = None

    def __init__(self) -> None:
        self.sent: list[str] = []

    def run_shell_command(self, command, **kwargs):
        self.sent.append(command)
        return True, None

    def put_file(self, *args, **kwargs):
        self.sent.append("upload")
        return True


def test_answers_stop_at_the_first_command_that_is_not_a_read(monkeypatch):
    host = _Host()
    live = []

    def read_live(state, host_, cls, args=None, kwargs=None):
        live.append(kwargs)
        host_.run_shell_command("live read")  # what pyinfra's get_fact does
        return {"mode": 700}

    monkeypatch.setattr(facts, "get_fact", read_live)
    cache = facts.installed(host)
    # the snapshot's output for them: /a is missing, /c's read failed (left to a live read)
    cache.fill([(Directory, {"path": "/a"}), (Directory, {"path": "/c"})],
               [Directory(), Directory()], ["@@mailfleet-rc 0", "mode=755\n@@mailfleet-rc 1"])
    assert host.get_fact(Directory, path="/a") is None and live == []  # from the snapshot
    assert "/c" not in repr(cache.answers)
    assert host.get_fact(Directory, path="/b") == {"mode": 700}  # not declared: read live
    assert cache.misses == ["Directory(path='/b')"] and cache.valid  # a read changes nothing
    host.put_file("x", "/y")  # an operation's upload: the host may differ now
    assert not cache.valid
    assert host.get_fact(Directory, path="/a") == {"mode": 700}
    assert cache.misses == ["Directory(path='/b')"]  # live reads after a change are no misses
    assert cache.commands == 3 and facts.installed(host) is cache
