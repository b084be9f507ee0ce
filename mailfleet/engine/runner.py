"""The one place that drives pyinfra: inventory, operations, execution, reporting.

Services never import pyinfra's State or run anything themselves; they receive a
`HostContext` (context.py) and add operations to it. The engine runs them on all hosts in parallel
(pyinfra runs each operation on every host before the next one), and reads what changed
only after execution, from the operations' own results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
from pyinfra.api import BaseStateCallback, Config as PyinfraConfig, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.facts import get_fact, get_facts
from pyinfra.api.host import Host
from pyinfra.api.operations import run_ops
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.server import Command

from mailfleet.config import Config, HostSettings
from mailfleet.engine import facts as fact_cache, reads as read_batch, snapshot
from mailfleet.engine.context import HostContext, ServiceStep
from mailfleet.engine.operations import UPLOAD_DIR
from mailfleet.engine.report import DeployReport, HostReport
from mailfleet.engine.sshkey import checked_key
from mailfleet.errors import DeployError


class Progress(BaseStateCallback):
    """Forwards pyinfra's per-host operation events to a UI callback."""

    def __init__(self, on_event: Callable[[str, str, str], None],
                 op_names: dict[tuple[str, str], str]) -> None:
        self.on_event = on_event
        self.op_names = op_names

    def operation_host_success(self, state, host, op_hash, retry_count=0):
        self.on_event("ok", host.name, _op_name(state, host, op_hash, self.op_names))

    def operation_host_error(self, state, host, op_hash, retry_count=0, max_retries=0):
        self.on_event("error", host.name, _op_name(state, host, op_hash, self.op_names))


class _ConnectErrors(BaseStateCallback):
    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}

    def host_connect_error(self, state, host, error):
        text = str(error).replace("[Errno None] ", "").strip().rstrip(".")
        if text.startswith("Could not connect (") and text.endswith(")"):
            text = text[len("Could not connect ("):-1]
        self.reasons[host.name] = text or type(error).__name__


class _EngineState(State):
    """pyinfra's State, knowing the Engine that runs it: code that runs during execution
    (python.call callbacks) reaches its own engine through pyinfra's context, so two
    engines in one process keep their notes apart."""

    def __init__(self, engine: Engine, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.engine = engine


def explain_failure(host_name: str, message: str) -> None:
    """Why an operation failed, in a sentence, from code that runs during execution
    (python.call callbacks): pyinfra itself only logs "executed 0 commands". The sentence
    becomes the host's error in the report of the engine running the operation."""
    state = ctx_state.get()
    if not isinstance(state, _EngineState):
        raise RuntimeError("explain_failure() is for code that an Engine runs")
    state.engine.reasons.setdefault(host_name, []).append(message)


def _op_name(state: State, host: Host, op_hash: str, op_names: dict[tuple[str, str], str]) -> str:
    """The operation's name for this host. pyinfra keeps one set of names per operation hash
    for all hosts, and hosts whose step lists differ share hashes for different operations."""
    if (host.name, op_hash) in op_names:
        return op_names[(host.name, op_hash)]
    names = state.get_op_meta(op_hash).names
    return sorted(names)[0] if names else op_hash


def build_inventory(hosts: Iterable[HostSettings]) -> Inventory:
    """pyinfra inventory with SSH settings; a missing key file is a config error."""
    entries = []
    for h in hosts:
        data: dict[str, Any] = {
            "ssh_hostname": h.address,
            "ssh_port": h.ssh_port,
            "ssh_user": h.ssh_user,
            "ssh_connect_retries": 2,
            "_sudo": h.sudo,
        }
        key = checked_key(h)  # a bad key is one sentence here, not a greenlet traceback
        if key:
            data["ssh_key"] = str(key)
        if h.ssh_known_hosts:
            data["ssh_known_hosts_file"] = str(Path(h.ssh_known_hosts).expanduser())
            data["ssh_strict_host_key_checking"] = "yes"
        entries.append((h.name, data))
    return Inventory((entries, {}))


class Engine:
    """Connects to the selected hosts once and runs deploy steps or fact reads on them."""

    def __init__(self, config: Config, hosts: list[HostSettings], verbose: bool = False,
                 diff: bool = False, check: bool = False, plans: dict[str, Any] | None = None,
                 layout: snapshot.Layout | None = None) -> None:
        self.config = config
        self.settings = {h.name: h for h in hosts}
        self.plans = plans or {}
        self.layout = layout or snapshot.Layout()
        self.check = check
        self.shared: dict[str, Any] = {}
        # answers of `prefetch`: {command: {host name: output}}
        self._reads: dict[str, dict[str, Any]] = {}
        self._only: set[str] | None = None
        # each operation's name per host (HostContext.op notes them; the report and the
        # progress events read them), and why operations failed (explain_failure), per host
        self.op_names: dict[tuple[str, str], str] = {}
        self.reasons: dict[str, list[str]] = {}
        # sudo uploads are staged in the SSH user's own 0700 directory (see system.deploy)
        pyinfra_config = PyinfraConfig(DIFF=diff, CONNECT_TIMEOUT=15, TEMP_DIR=UPLOAD_DIR)
        self.state = _EngineState(self, build_inventory(hosts), pyinfra_config,
                                  check_for_changes=check)
        self._log_handler = _quiet_pyinfra(verbose or diff)

    def __enter__(self) -> Engine:
        errors = _ConnectErrors()
        self.state.add_callback_handler(errors)
        try:
            connect_all(self.state)
        except PyinfraError:
            pass  # "no hosts remaining": the reasons were collected per host
        unreachable = [h for h in self.state.inventory if not h.connected]
        if unreachable:
            self.__exit__(None, None, None)  # close the hosts that did connect, drop our log handler
            reasons = "; ".join(
                f"{h.name} ({h.data.ssh_hostname}:{h.data.ssh_port}): "
                f"{errors.reasons.get(h.name, 'no answer')}"
                for h in unreachable
            )
            hint = ("Check the host's address, ssh_port, ssh_user and ssh_key in the config."
                    if "host key" not in reasons.lower() else
                    "mailfleet never logs in to a host whose SSH key is not the one in its "
                    "known_hosts: if the server was rebuilt, replace its line there (a server "
                    "made by `mailfleet provision`: destroy it and provision it again).")
            raise DeployError(f"Could not connect over SSH to {reasons}.", hint=hint)
        for host in self.hosts():
            fact_cache.installed(host)  # counts the commands sent; answers from snapshots
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            disconnect_all(self.state)
        finally:
            logging.getLogger("pyinfra").removeHandler(self._log_handler)

    def hosts(self) -> list[Host]:
        return list(self.state.inventory)

    def facts(self, fact: Any, hosts: Iterable[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        """One fact from every host (or these; or those of `only`), in parallel: {host name:
        value}. A shell read that `prefetch` made already is answered from there."""
        wanted = set(hosts) if hosts is not None else self._only
        known = self._reads.get(kwargs.get("command", ""), {}) if fact is Command else {}
        if wanted is None and not known:
            results = get_facts(self.state, fact, kwargs=kwargs)
            return {host.name: value for host, value in results.items()}
        wanted = wanted if wanted is not None else {host.name for host in self.hosts()}
        missing = wanted - set(known)
        return {**{name: value for name, value in known.items() if name in wanted},
                **(self._facts_on(missing, fact, kwargs) if missing else {})}

    @contextmanager
    def only(self, names: Iterable[str]) -> Iterator[None]:
        """Fact reads inside ask these hosts only (a service's checks, of the hosts that
        run it)."""
        before, self._only = self._only, set(names)
        try:
            yield
        finally:
            self._only = before

    def prefetch(self, reads: dict[str, list[str]]) -> None:
        """Each host's shell reads (what `check` will ask) in one SSH command per host;
        `facts(Command, command=...)` answers them from here afterwards."""
        groups: dict[tuple[str, ...], set[str]] = {}
        for name, commands in reads.items():
            if commands:
                groups.setdefault(tuple(dict.fromkeys(commands)), set()).add(name)
        for commands, names in groups.items():  # hosts with the same reads: one call
            texts = self._facts_on(names, Command, {"command": read_batch.combined(list(commands))})
            for name, text in texts.items():
                for command, value in read_batch.answers(list(commands), text).items():
                    self._reads.setdefault(command, {})[name] = value

    def _facts_on(self, names: set[str], fact: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """One fact from the named hosts only, in parallel."""
        def one(host: Host) -> Any:
            with ctx_host.use(host):
                return get_fact(self.state, host, fact, kwargs=kwargs)

        with ctx_state.use(self.state):
            jobs = {self.state.pool.spawn(one, host): host
                    for host in self.state.inventory.get_active_hosts() if host.name in names}
        gevent.joinall(list(jobs))
        return {host.name: job.get() for job, host in jobs.items()}

    def deploy(self, steps: list[ServiceStep],
               on_event: Callable[[str, str, str], None] | None = None) -> DeployReport:
        self.op_names.clear()
        if on_event:
            self.state.add_callback_handler(Progress(on_event, self.op_names))
        contexts = [HostContext(self.config, self.settings[host.name], host, self.state,
                                self.check, plan=self.plans.get(host.name), layout=self.layout,
                                shared=self.shared, op_names=self.op_names)
                    for host in self.hosts()]
        # every host's snapshot at once (the steps below run one host after the other)
        gevent.joinall([self.state.pool.spawn(ctx.snapshot, "os") for ctx in contexts
                        if ctx.host.connected], raise_error=True)
        for ctx in contexts:
            for step in steps:
                step(ctx)
        if not self.check:
            try:
                run_ops(self.state)
            except PyinfraError:
                pass  # failures are read per operation below
        return self._report()

    def operation_count(self, host: Host) -> int:
        return len(self.state.ops[host])

    def _report(self) -> DeployReport:
        reports = {}
        for host in self.hosts():
            cache = fact_cache.installed(host)
            report = HostReport(host.name, commands=cache.commands,
                                fact_misses=list(dict.fromkeys(cache.misses)))
            for op_hash in host.op_hash_order:
                data = self.state.ops[host].get(op_hash)
                if data is None:
                    continue
                report.operations += 1
                meta = data.operation_meta
                name = _op_name(self.state, host, op_hash, self.op_names)
                if self.check:
                    if meta._maybe_is_change:
                        report.changed.append(name)
                elif not meta.is_complete():
                    continue  # not reached: an earlier operation failed
                elif meta.did_error():
                    report.failed.append(name)
                elif meta.did_change():
                    report.changed.append(name)
            if host in self.state.failed_hosts and not report.failed:
                report.error = "failed"
            if self.reasons.get(host.name):
                report.error = " ".join(self.reasons.pop(host.name))
            reports[host.name] = report
        return DeployReport(check=self.check, hosts=reports)


def _quiet_pyinfra(verbose: bool) -> logging.Handler:
    """pyinfra logs to its own logger; show it only with -v or --diff."""
    logger = logging.getLogger("pyinfra")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:  # connection failures are reported once, as a DeployError; a failed
        # callback says why itself (explain_failure), not "executed 0 commands"
        handler.addFilter(lambda record: "Could not connect" not in record.getMessage()
                          and "executed 0 commands" not in record.getMessage())
    logger.propagate = False
    return handler
