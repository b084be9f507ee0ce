"""What a service's deploy step receives: `HostContext`, one host's view of a deploy.

Services add pyinfra operations through it (`op`, `service`, `changed`) and read the host
snapshot through it (`snapshot`, `file_state`, `secret`); the engine (runner.py) builds one
per host and runs the operations afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from secrets import token_urlsafe
from typing import Any

from pyinfra.api import State
from pyinfra.api.host import Host
from pyinfra.api.operation import OperationMeta, add_op
from pyinfra.facts.server import Command
from pyinfra.operations import systemd

from mailfleet.config import Config, HostSettings
from mailfleet.engine import facts, snapshot
from mailfleet.engine.operations import config_file, unit_enabled, unit_restarted, unit_running
from mailfleet.engine.snapshot import SECRETS_DIR, FileState

ServiceStep = Callable[["HostContext"], None]
# engine.shared's key for secrets whose value every host holding them shares ({name: value})
FLEET_SECRETS = "fleet secrets"


@dataclass
class HostContext:
    """What a service's deploy step sees: the config, this host's settings, and `op()`."""

    config: Config
    settings: HostSettings
    host: Host
    state: State
    check: bool
    # the services' plan of this host (services/plan.py: what runs here, with which settings)
    plan: Any = None
    layout: snapshot.Layout = field(default_factory=snapshot.Layout)

    # what steps share across hosts, gathered before any operation is added (WireGuard keys)
    shared: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, tuple[str, bool]] = field(default_factory=dict)
    # the operation creating the staging directory (config_file stages uploads there)
    staging: OperationMeta | None = None
    # what the services' steps hand on to later steps (services/shape.py's Provided)
    provided: Any = None
    # each operation's name, by (host name, operation hash): the engine's, shared by its hosts
    op_names: dict[tuple[str, str], str] = field(default_factory=dict)
    _snapshot: dict[str, str] | None = None
    _files: dict[str, FileState] | None = None

    @property
    def fqdn(self) -> str:
        return self.config.host_fqdn(self.settings)

    def fact(self, fact: Any, **kwargs: Any) -> Any:
        """A fact read now, while operations are being added (pyinfra does not cache it:
        prefer a snapshot section for anything read more than once)."""
        return self.host.get_fact(fact, **kwargs)

    def snapshot(self, section: str) -> str:
        """A section of the host snapshot (see engine/snapshot.py), read once per deploy."""
        if self._snapshot is None:
            reads = facts.unique(self.layout.facts(self)) if self.layout.facts else []
            instances = [cls() for cls, _ in reads]
            named = {f"fact {i}": facts.shell(fact, arguments)
                     for i, (fact, (_, arguments)) in enumerate(zip(instances, reads))}
            cache = facts.installed(self.host)
            output = cache.read(Command, command=self.layout.command(named)) or ""
            self._snapshot = snapshot.split(output)
            cache.fill(reads, instances, [self._snapshot.get(name, "") for name in named])
        return self._snapshot.get(section, "")

    def file_state(self, path: str) -> FileState | None | str:
        """The file's state before the deploy: from the snapshot, or "unknown" (which also
        makes config_file upload without the staging directory, until one exists)."""
        if not self.layout.managed(path):
            return "unknown"
        if self.staging is None and self.snapshot("staging") != "present":
            return "unknown"
        if self._files is None:
            self._files = snapshot.parse_files(self.snapshot("files"))
        return self._files.get(path)

    def file_matches(self, path: str, content: str) -> bool:
        """The file holds exactly `content` already (per the snapshot): no change coming."""
        known = self.file_state(path)
        return isinstance(known, FileState) and known.sha1 == hashlib.sha1(content.encode()).hexdigest()

    def secret(self, name: str) -> tuple[str, bool]:
        """A generated secret kept on the host (/etc/mailfleet/secrets/NAME, mode 0600):
        (value, fresh). The fleet's value when hosts share it (FLEET_SECRETS), else read
        from the host when it exists, else generated here; written by an operation; fresh
        when the host did not hold this value. Never stored in the config file.
        """
        if name not in self.secrets:
            existing = snapshot.parse_secrets(self.snapshot("secrets")).get(name)
            # one value for every host that shares it (a cluster's database roles)
            value = self.shared.get(FLEET_SECRETS, {}).get(name) or existing or token_urlsafe(24)
            self.op(config_file, name=f"Keep the {name} secret", dest=f"{SECRETS_DIR}/{name}",
                    content=value + "\n", mode="600", secret=True)
            self.secrets[name] = (value, existing != value)
        return self.secrets[name]

    def op(self, operation: Any, *args: Any, name: str, **kwargs: Any) -> OperationMeta | None:
        """Add one pyinfra operation for this host.

        In check mode an `_if` condition is decided now from the earlier operations'
        predicted changes (pyinfra itself would ignore `_if` until execution and so report
        a restart that will never happen); a false condition adds nothing.
        """
        if operation is config_file and "known" not in kwargs:
            kwargs["known"] = self.file_state(kwargs["dest"])
        condition = kwargs.get("_if")
        if self.check and condition is not None:
            if not condition():
                return None
            kwargs.pop("_if")
        meta = add_op(self.state, operation, *args, host=self.host, name=name, **kwargs)[self.host]
        self.op_names[(self.host.name, meta._hash)] = name
        return meta

    def service(self, unit: str, *, restart_when: tuple[OperationMeta | None, ...] = (),
                reload_when: tuple[OperationMeta | None, ...] = (),
                enabled: bool = True, no_block: bool = False) -> OperationMeta | None:
        """Keep a systemd unit enabled and running; restart or reload it when the
        operations it depends on (its config files, its packages) changed.
        Returns the "Run" operation: it changes when the unit had to be started.
        `no_block`: start and restart without waiting for the unit to be up."""
        state = snapshot.parse_units(self.snapshot("units")).get(unit)
        if state is None and no_block:  # (pyinfra's systemd.service waits for the start)
            state = ("inactive", "disabled")
        if state is None:
            run = self.op(systemd.service, name=f"Run {unit}", service=unit, running=True,
                          enabled=enabled)
        else:
            if enabled:
                self.op(unit_enabled, name=f"Enable {unit}", unit=unit,
                        was_enabled=state[1] == "enabled")
            run = self.op(unit_running, name=f"Run {unit}", unit=unit,
                          was_active=state[0] == "active", no_block=no_block)
        # A unit this deploy just started already runs the new config; restarting it at
        # once raced its PID file ("failed because of unavailable resources").
        started = self.changed(run)
        restarted = self.changed(*restart_when) if restart_when else (lambda: False)
        if restart_when:
            self.op(unit_restarted, name=f"Restart {unit}", unit=unit, no_block=no_block,
                    _if=lambda: restarted() and not started())
        if reload_when:
            # not after a restart, which read the new files already; a reload right after
            # it failed ("Job for postgresql.service failed": the cluster still starting)
            wanted = self.changed(*reload_when)
            self.op(systemd.service, name=f"Reload {unit}", service=unit, reloaded=True,
                    _if=lambda: wanted() and not started() and not restarted())
        return run

    def changed(self, *metas: OperationMeta | None) -> Callable[[], bool]:
        """A condition for `_if=`: true when any of these operations changes (or would)."""

        def condition() -> bool:
            for meta in metas:
                if meta is None:
                    continue
                if self.check:
                    if meta._maybe_is_change:
                        return True
                elif meta.is_complete() and meta.did_change():
                    return True
            return False

        return condition
