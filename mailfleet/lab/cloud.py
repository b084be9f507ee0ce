"""Lab nodes made the way a provider makes a VPS: one at a time, into a running lab (started
without nodes if there is none), from an image with Debian's cloud-init, whose first boot
takes host key, root's key and name from the user-data in NoCloud's seed directory.
`mailfleet provision` with `provider = "lab"` drives these; `destroy` removes one."""

from __future__ import annotations

import shutil

from mailfleet.config import HOST_NAME_RE
from mailfleet.errors import LabError, UsageError
from mailfleet.lab import images, network
from mailfleet.lab.paths import LabPaths
from mailfleet.lab.state import LabState, Node
from mailfleet.lab.system import (alive, cmdline, ensure_inotify_instances,
                                  ensure_machine_tools, require_root, stop_pids, unmount)
from mailfleet.netutil import free_port

CLOUD_PACKAGES = ["cloud-init"]
MAX_NAME = 14  # the node's veth in the bridge namespace is "v" + its name (15 at most)
SLOTS = range(1, 10)  # the addresses n1..n9 of `lab up` would take


class CloudNodes:
    """The Lab's one-node-at-a-time part (mixed into lab.Lab)."""

    paths: LabPaths

    def add_node(self, name: str, release: str, seed: dict[str, str],
                 preinstall: list[str] | None = None) -> Node:
        """Boot node `name` from `seed` (the NoCloud files); returns once it was started
        (its SSH answers only after cloud-init ran: the caller waits, as for a VPS)."""
        if not HOST_NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
            raise UsageError(f"{name!r} cannot name a lab node (lower case letters, digits and "
                             f"'-', at most {MAX_NAME} characters).")
        require_root()
        ensure_machine_tools(self.paths.state_dir.parent, self.log)
        ensure_inotify_instances(self.log)
        base = images.ensure_rootfs(release, self.log, [*(preinstall or []), *CLOUD_PACKAGES])
        state = self.state()
        if state is not None and state.helpers and not all(alive(p) for p in state.helpers):
            if any(alive(n.pid) for n in state.nodes):
                raise LabError(f"Lab {self.paths.id!r} has running nodes but its helpers are "
                               "gone.", hint="Take it down with `mailfleet lab down` first.")
            state = None
        if state is None or not state.helpers:
            self.down(quiet=True)  # leftovers of a lab whose helpers are gone
            state = LabState(id=self.paths.id)
            self._start_network(state)
        if any(n.name == name for n in state.nodes):
            raise UsageError(f"Lab {self.paths.id!r} has a node named {name!r} already.")
        taken = {n.address for n in state.nodes}
        free = [i for i in SLOTS if network.node_address(i) not in taken]
        if not free:
            raise LabError(f"Lab {self.paths.id!r} has no free address for another node.")
        node = Node(name=name, release=release, address=network.node_address(free[0]),
                    ssh_port=free_port(), cloud=True)
        helpers = set(state.helpers)
        try:
            self._boot(state, node, base, [*state.nodes, node], seed=seed)
        except BaseException:
            # undone from what this run knows: the state file may not name the node yet
            self._discard(state, node, [p for p in state.helpers if p not in helpers])
            if not state.nodes:
                self.down(quiet=True)
            raise
        self._save(state)
        return node

    def remove_node(self, name: str) -> bool:
        """Power node `name` off and delete it (its disk, namespace and forwards); the whole
        lab goes with its last node. False if there was no such node."""
        state = self.state()
        if state is None:
            return False
        node = next((n for n in state.nodes if n.name == name), None)
        if node is None:
            return False
        if len(state.nodes) == 1:
            self.down(quiet=True)
            return True
        ports = [22, *(int(k.partition(":")[2]) for k in state.forwards
                       if k.partition(":")[0] == name)]
        sockets = [str(self.paths.socket(f"{name}-{port}")) for port in ports]
        mine = [p for p in state.helpers if any(s in (cmdline(p) or "") for s in sockets)]
        self._discard(state, node, mine)
        return True

    def _discard(self, state: LabState, node: Node, helpers: list[int]) -> None:
        """Stop `node` and its forward `helpers`, and remove its mount, namespace, veth and
        disk; the state without it is saved."""
        if node.pid:
            stop_pids([node.pid], timeout=20)
        stop_pids(helpers, timeout=5)
        state.helpers = [p for p in state.helpers if p not in helpers]
        state.forwards = {k: v for k, v in state.forwards.items()
                          if k.partition(":")[0] != node.name}
        node_dir = self.paths.node_dir(node.name)
        unmount(str(node_dir / "root"))
        network.detach_node(self.paths.bridge_ns, self.paths.node_ns(node.name), node.name)
        shutil.rmtree(node_dir, ignore_errors=True)
        state.nodes = [n for n in state.nodes if n.name != node.name]
        self._save(state)
