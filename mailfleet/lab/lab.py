"""Local test hosts: booted Debian systems in network namespaces, reachable over SSH.

`up` boots nodes n1..nN from cached root filesystems (overlay mounts, so the cache stays
untouched), gives each its own SSH host keys, an apt proxy and a name, forwards a loopback
port to each node's SSH, and records every pid, mount and namespace in a state file.
`down` undoes all of it. Leftovers of a killed run are found by their names and by our
state directory in their command lines, never by guessing.

The Lab class is put together from one module per job: state.py (what a running lab is),
boot.py (up, restart, exec), cloud.py (one node at a time, made by cloud-init), forwards.py (loopback ports to nodes), operator_ns.py (the
operator's namespace and tunnel), teardown.py (down). This module reads the lab's state.
"""

from __future__ import annotations

import shlex

from mailfleet.errors import UsageError
from mailfleet.lab.boot import Booting
from mailfleet.lab.cloud import CloudNodes
from mailfleet.lab.forwards import Forwarding
from mailfleet.lab.operator_ns import Operator
from mailfleet.lab.paths import LabPaths, lab_id
from mailfleet.lab.state import LabState, Node
from mailfleet.lab.system import alive
from mailfleet.lab.teardown import Teardown


class Lab(Booting, CloudNodes, Forwarding, Operator, Teardown):
    def __init__(self, id: str | None = None, log=print) -> None:
        self.paths = LabPaths(id or lab_id())
        self.log = log

    # ----- reading -------------------------------------------------------------------
    def state(self) -> LabState | None:
        try:
            return LabState.from_json(self.paths.state_file.read_text())
        except (OSError, ValueError, TypeError):
            return None

    def status(self) -> dict:
        state = self.state()
        nodes = state.nodes if state else []
        return {
            "lab": self.paths.id,
            "running": bool(nodes) and all(alive(n.pid) for n in nodes),
            "nodes": [
                {
                    "name": n.name,
                    "release": n.release,
                    "debian": n.debian,
                    "address": n.address,
                    "ssh": f"127.0.0.1:{n.ssh_port}",
                    "running": alive(n.pid),
                }
                for n in nodes
            ],
        }

    def running_state(self) -> LabState:
        state = self.state()
        if not state or not state.nodes:
            raise UsageError(
                f"Lab {self.paths.id!r} is not running.", hint="Start it with `mailfleet lab up`."
            )
        return state

    def node(self, name: str) -> Node:
        state = self.running_state()
        for node in state.nodes:
            if node.name == name:
                return node
        names = ", ".join(n.name for n in state.nodes)
        raise UsageError(f"No lab node named {name!r} (nodes: {names}).")

    def ssh_login(self, name: str, user: str = "root") -> list[str]:
        """`ssh` as `user` on the node with the lab's key and host keys, up to the
        destination: add `-- COMMAND` to run something."""
        node = self.node(name)
        return [
            "ssh", "-i", str(self.paths.ssh_key), "-o", "IdentitiesOnly=yes",
            "-p", str(node.ssh_port),
            "-o", f"UserKnownHostsFile={self.paths.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR", f"{user}@127.0.0.1",
        ]

    def ssh_command(self, name: str, command: list[str] | None = None,
                    user: str = "root") -> list[str]:
        """Root on the node: directly, or through sudo once deploy made `user` the only
        login."""
        cmd = self.ssh_login(name, user)
        line = " ".join(command or [])  # like ssh: the remote shell parses it
        if user == "root":
            return cmd + (["--", line] if line else [])
        if line:
            return cmd + ["--", f"sudo -n sh -c {shlex.quote(line)}"]
        return [*cmd[:1], "-t", *cmd[1:], "--", "sudo -n -i"]

    def exec_command(self, command: list[str]) -> list[str]:
        """A local program run inside the lab network (it reaches nodes by their addresses)."""
        self.running_state()
        return ["ip", "netns", "exec", self.paths.bridge_ns, *command]

    def _save(self, state: LabState) -> None:
        tmp = self.paths.state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        tmp.replace(self.paths.state_file)
