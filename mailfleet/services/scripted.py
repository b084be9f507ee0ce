"""A script of mailfleet's run by a systemd service of its own, restarted when either
changes (replication.py, takeover.py): installed where the service applies, removed where it
no longer does."""

from __future__ import annotations

import shlex

from pyinfra.api import operation
from pyinfra.operations import systemd

from mailfleet.engine import HostContext, config_file
from mailfleet.engine.snapshot import FileState


def unit_file(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.service"


def install(ctx: HostContext, unit: str, script: str, script_text: str, unit_text: str,
            what: str) -> None:
    written = ctx.op(config_file, name=f"Install the {what} script", dest=script, mode="755",
                     content=script_text)
    service = ctx.op(config_file, name=f"Write {unit}.service", dest=unit_file(unit),
                     content=unit_text)
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(service))
    # not waiting for the start: the unit is ordered after others (Patroni, which on a host
    # joining a cluster starts only once later steps on the other hosts ran)
    ctx.service(unit, restart_when=(written, service), no_block=True)


@operation()
def stop(unit: str, paths: list[str]):
    yield (f"systemctl disable --now {shlex.quote(unit)} >/dev/null 2>&1; "
           f"rm -f {' '.join(shlex.quote(p) for p in paths)} && systemctl daemon-reload")


def remove(ctx: HostContext, unit: str, script: str, what: str) -> None:
    """Stop the service and remove both files, when the snapshot saw either."""
    present = [path for path in (script, unit_file(unit))
               if isinstance(ctx.file_state(path), FileState)]
    if present:
        ctx.op(stop, name=f"Stop the {what}", unit=unit, paths=present)
