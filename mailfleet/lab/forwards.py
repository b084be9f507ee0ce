"""Loopback ports reaching lab nodes: socat through a unix socket into the lab network,
so nothing but 127.0.0.1 is ever bound in the root namespace."""

from __future__ import annotations

from mailfleet.errors import LabError
from mailfleet.lab.paths import LabPaths
from mailfleet.lab.state import LabState, Node
from mailfleet.lab.system import spawn
from mailfleet.netutil import free_port, port_open, wait_until


class Forwarding:
    """The Lab's port forwarding part: the SSH forward of each node, and `forward` for tests
    (mixed into lab.Lab)."""

    paths: LabPaths

    def _forward(self, state: LabState, node: Node, remote: int, local: int) -> None:
        """127.0.0.1:local → node:remote (TCP), through a unix socket into the lab network."""
        paths = self.paths
        sock = paths.socket(f"{node.name}-{remote}")
        helpers_log = paths.state_dir / "helpers.log"
        state.helpers.append(spawn(
            ["ip", "netns", "exec", paths.bridge_ns, "socat",
             f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600", f"TCP:{node.address}:{remote}"],
            helpers_log))
        # the loopback side only once the inner side listens: a first client could otherwise
        # reach a forward whose unix socket is not there yet and get its connection closed
        if not wait_until(sock.exists, 10):
            raise LabError(f"The forward to {node.name}:{remote} did not start.")
        state.helpers.append(spawn(
            ["socat", f"TCP-LISTEN:{local},bind=127.0.0.1,reuseaddr,fork",
             f"UNIX-CONNECT:{sock}"], helpers_log))
        self._save(state)

    def forward(self, name: str, remote: int) -> int:
        """A loopback port reaching `remote` on lab node `name`; made once, kept until down."""
        state = self.running_state()
        key = f"{name}:{remote}"
        if key not in state.forwards:
            node = next(n for n in state.nodes if n.name == name)
            state.forwards[key] = free_port()
            self._forward(state, node, remote, state.forwards[key])
            if not wait_until(lambda: port_open(state.forwards[key]), 10):
                raise LabError(f"The forward to {name}:{remote} did not start.")
        return state.forwards[key]
