"""Runs the engine's own helpers (validated config write, debconf preseed, service restart
on change) against lab hosts, as a deploy would, and prints the report as JSON.

Usage: python engine_probe.py CONFIG SCENARIO — a separate process because gevent must
patch the standard library before pyinfra is imported.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from mailfleet.config import load  # noqa: E402
from mailfleet import services  # noqa: E402
from mailfleet.engine import Engine, HostContext, config_file, debconf  # noqa: E402

GOOD_SSHD = "# mailfleet probe\nPermitRootLogin prohibit-password\n"
BAD_SSHD = "# mailfleet probe\nPermitRootLogin sometimes-maybe\n"


def steps(scenario: str):
    def write(ctx: HostContext) -> None:
        content = {"good": GOOD_SSHD, "bad": BAD_SSHD, "other": GOOD_SSHD + "MaxAuthTries 5\n"}[scenario]
        changed = ctx.op(config_file, name="sshd drop-in", dest="/etc/ssh/sshd_config.d/50-probe.conf",
                         content=content, mode="600", validate="sshd -t -f {path}")
        ctx.op(debconf, name="preseed", package="tzdata",
               answers={"tzdata/Areas": ("select", "Europe"), "tzdata/Zones/Europe": ("select", "Berlin")})
        ctx.service("ssh", reload_when=(changed,))

    return [write]


def main() -> None:
    config_path, scenario, *check = sys.argv[1:]
    config = load(Path(config_path))
    with Engine(config, config.select_hosts(["n1", "n2"]), check=bool(check),
                layout=services.layout()) as engine:
        report = engine.deploy(steps(scenario))
    print(json.dumps(report.as_dict()))


main()
