"""`check` reads each host in one SSH command: the batch's framing (run by a real shell) and
that every service declares the shell reads its checks make (else they would each cost a
round trip again, silently)."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager

import pytest

from mailfleet import services
from mailfleet.config import parse
from mailfleet.engine import reads
from mailfleet.services.checks import CheckResult


def _run(commands: list[str]) -> dict[str, str | None]:
    out = subprocess.run(["sh", "-c", reads.combined(commands)], capture_output=True,
                         text=True, check=True).stdout
    return reads.answers(commands, out)


def test_each_read_answers_as_its_own_command_would():
    commands = ["echo a; echo b", "false", "true", "printf 'x\\n\\n'; echo noise >&2",
                "cat <<'EOF'\n$HOME is not expanded\nEOF", "echo '=mailfleet-read= 9 0 eA=='",
                "printf 'no newline'", "echo partial; exit 3"]
    assert _run(commands) == {
        "echo a; echo b": "a\nb",
        "false": None,  # failed: as pyinfra's Command fact, no value
        "true": None,  # printed nothing
        "printf 'x\\n\\n'; echo noise >&2": "x",  # stderr is not part of it
        "cat <<'EOF'\n$HOME is not expanded\nEOF": "$HOME is not expanded",
        "echo '=mailfleet-read= 9 0 eA=='": "=mailfleet-read= 9 0 eA==",  # no confusion
        "printf 'no newline'": "no newline",
        "echo partial; exit 3": None,
    }


def test_a_read_whose_line_is_missing_is_left_out():
    commands = ["echo one", "echo two"]
    text = subprocess.run(["sh", "-c", reads.combined(commands)], capture_output=True,
                          text=True).stdout.splitlines()[0]
    assert reads.answers(commands, text) == {"echo one": "one"}
    assert reads.answers(commands, None) == {}


class RecordingEngine:
    """Stands in for the engine: records the shell reads the checks ask, answers nothing."""

    def __init__(self, config) -> None:
        self.config = config
        self.settings = {h.name: h for h in config.hosts}
        self.plans = services.plans(config, config.hosts)
        self.check = False
        self.asked: list[str] = []

    def facts(self, fact, hosts=None, **kwargs):
        if "command" in kwargs:
            self.asked.append(kwargs["command"])
        return {name: None for name in (hosts or self.settings)}

    @contextmanager
    def only(self, names):
        yield


CONFIGS = {
    "full stack": "",
    "sogo, vpn": '[features]\nwebmail = "sogo"\nwireguard = true\n'
                           '[ssh]\nvpn_only = true\n[[vpn.peers]]\nname = "laptop"\naddress = "10.8.0.100"\n'
                           'public_key = "' + "A" * 43 + '="\n',
    "radicale, backups": '[features]\nradicale = true\n[backup]\nrepository = "/srv/restic"\n',
    "acme": '[acme]\nenabled = true\nemail = "ops@example.org"\n',
}


@pytest.mark.parametrize("extra", CONFIGS.values(), ids=CONFIGS.keys())
def test_every_shell_read_of_the_checks_is_declared(extra):
    config = parse('[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
                   '[dns]\ncheck = false\n' + extra
                   + '[[hosts]]\nname = "mx1"\naddress = "192.0.2.1"\n')
    engine = RecordingEngine(config)
    plan = engine.plans["mx1"]
    # mailflow and dns talk to the host from outside (SMTP, IMAP, DNS): not shell reads
    for service in services.SERVICES:
        if service.checks is None or not service.applies(plan) or service.name in ("mailflow", "dns"):
            continue
        engine.asked.clear()
        found = service.checks(engine)
        assert all(isinstance(r, CheckResult) for r in found)
        declared = set(service.reads_for(engine, plan))
        assert set(engine.asked) <= declared, (service.name, set(engine.asked) - declared)
