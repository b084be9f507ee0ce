"""pyinfra facts answered from the host snapshot, while nothing has changed on the host yet.

pyinfra's own operations (files.directory, server.user, apt.packages, systemd.service, ...)
read their facts one SSH command at a time, at the moment they need them: a no-change deploy
of the mail stack sent 57 of them after the snapshot (about 100 ms each). Each service
declares the facts its operations will ask (`Service.facts`); the snapshot runs their
commands in its one round trip, and `FactCache` answers the host's `get_fact` from there.

The answers are the host as it was when the snapshot ran. So they are given only until the
deploy runs its first command on the host that is not a fact read (an operation that
changes something, an upload, a callback's command): from then on every fact is read live
again, as pyinfra would. A fact nobody declared is read live too (slower, never wrong);
`misses` lists them, and the deploy report counts every command sent.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from pyinfra.api import StringCommand
from pyinfra.api.facts import FactBase, ShortFactBase, get_fact
from pyinfra.api.host import Host
from pyinfra.facts.server import Groups, Os, Users

# (fact class, its arguments) as an operation asks it: host.get_fact(Directory, path="/x")
FactRead = tuple[type[FactBase], dict[str, Any]]

# what pyinfra's server.user and server.group ask on every host
USER_FACTS: list[FactRead] = [(Users, {}), (Groups, {}), (Os, {})]

_RC = "@@mailfleet-rc "
_MISSING = "##MAILFLEET_NOCMD##"


def fact_arguments(cls: type[FactBase], args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The fact's own arguments by name, defaults filled in (pyinfra's global ones, `_sudo`
    etc., left out): the same read has the same key however it was spelled."""
    own = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    command = cls().command
    if not callable(command):
        return {}
    bound = inspect.signature(command).bind(*args, **own)
    bound.apply_defaults()
    return dict(bound.arguments)


def unique(reads: list[FactRead]) -> list[FactRead]:
    """`reads` without repeats (two services may declare one read)."""
    found: dict[tuple[str, str], FactRead] = {}
    for cls, arguments in reads:
        found.setdefault(key(cls, fact_arguments(cls, (), arguments)), (cls, arguments))
    return list(found.values())


def key(cls: type[FactBase], arguments: dict[str, Any]) -> tuple[str, str]:
    return (f"{cls.__module__}.{cls.__qualname__}", repr(sorted(arguments.items())))


def shell(fact: FactBase, arguments: dict[str, Any]) -> str:
    """The fact's command as pyinfra would run it, then its exit status on a line of its own
    (some facts keep what their command chose for `process`: give both the same instance)."""
    command = fact.command(**arguments) if callable(fact.command) else fact.command
    text = command.get_raw_value() if isinstance(command, StringCommand) else str(command)
    requires = fact.requires_command
    requires = requires(**arguments) if callable(requires) else requires
    if requires:
        text = (f"if command -v {requires} >/dev/null 2>&1; then ( {text} ); "
                f"else echo '{_MISSING}'; fi")
    return f"( {text} ); printf '\\n{_RC}%s\\n' $?"


class Unanswered(Exception):
    """The snapshot holds no answer pyinfra would have accepted: the command failed (pyinfra
    then fails the host) or its output did not parse. Left to a live read, which does what
    pyinfra does."""


def answer(fact: FactBase, output: str) -> Any:
    """The fact's value from what `shell` printed, as pyinfra's get_fact makes it (or
    Unanswered)."""
    lines = output.split("\n")
    status = ""
    while lines:
        line = lines.pop()
        if line.startswith(_RC):
            status = line[len(_RC):].strip()
            break
    if lines and lines[-1] == "":
        lines.pop()  # the newline `shell` printed before the status
    if lines == [_MISSING]:
        return fact.default()
    if status != "0":
        raise Unanswered(status or "no status")
    if not lines:
        return fact.default()
    try:
        return fact.process(lines)
    except Exception as error:  # FactProcessError and whatever a fact's parser raises
        raise Unanswered(str(error)) from error


class FactCache:
    """Answers one host's facts from its snapshot until the deploy changes the host.

    Installed on the pyinfra Host object itself (`get_fact`, `run_shell_command`,
    `put_file`): pyinfra's operations ask their facts through `host.get_fact`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.answers: dict[tuple[str, str], Any] = {}
        self.valid = False
        self.misses: list[str] = []
        self.commands = 0  # SSH commands and uploads sent to the host by this deploy
        self._reading = 0
        self._run = host.run_shell_command
        self._put = host.put_file
        host.get_fact = self.get_fact  # type: ignore[method-assign]
        host.run_shell_command = self._run_shell_command  # type: ignore[method-assign]
        host.put_file = self._put_file  # type: ignore[method-assign]

    def fill(self, reads: list[FactRead], instances: list[FactBase], outputs: list[str]) -> None:
        self.answers = {}
        for (cls, arguments), fact, output in zip(reads, instances, outputs, strict=True):
            try:
                self.answers[key(cls, fact_arguments(cls, (), arguments))] = answer(fact, output)
            except Unanswered:
                continue  # read live when asked
        self.valid = True

    def get_fact(self, cls: Any, *args: Any, **kwargs: Any) -> Any:
        if issubclass(cls, ShortFactBase):
            return cls().process_data(self.get_fact(cls.fact, *args, **kwargs))
        if self.valid:
            arguments = fact_arguments(cls, args, kwargs)
            found = self.answers.get(key(cls, arguments), self)
            if found is not self:
                return copy.deepcopy(found)  # operations may change what they are given
            shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
            self.misses.append(f"{cls.__name__}({shown})")
        return self.read(cls, *args, **kwargs)

    def read(self, cls: Any, *args: Any, **kwargs: Any) -> Any:
        """The fact read live (the snapshot itself is one)."""
        self._reading += 1
        try:
            return get_fact(self.host.state, self.host, cls, args=args, kwargs=kwargs)
        finally:
            self._reading -= 1

    def _run_shell_command(self, *args: Any, **kwargs: Any) -> Any:
        self._sent()
        return self._run(*args, **kwargs)

    def _put_file(self, *args: Any, **kwargs: Any) -> Any:
        self._sent()
        return self._put(*args, **kwargs)

    def _sent(self) -> None:
        self.commands += 1
        if not self._reading:
            self.valid = False  # the host may differ from its snapshot from now on


def installed(host: Host) -> FactCache:
    """The host's cache (made and installed on first use)."""
    cache = getattr(host, "_mailfleet_facts", None)
    if cache is None:
        cache = FactCache(host)
        host._mailfleet_facts = cache  # type: ignore[attr-defined]
    return cache

