"""The lab network: one namespace holding a bridge and the gateway, one namespace per node.

Nothing here ever adds an address to the machine's root namespace: veth pairs are created
directly inside the lab's namespaces.
"""

from __future__ import annotations

import ipaddress

from mailfleet.lab.system import run

SUBNET = ipaddress.ip_network("10.77.0.0/24")
GATEWAY = "10.77.0.1"
OPERATOR = "10.77.0.2"  # the operator's namespace, when a lab has one
BRIDGE = "br0"


def node_address(index: int) -> str:
    """n1 → 10.77.0.11, n2 → 10.77.0.12, …"""
    return str(SUBNET.network_address + 10 + index)


def own_namespaces(prefix: str) -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefix)]


def create_bridge(ns: str) -> None:
    run(["ip", "netns", "add", ns])
    ip = ["ip", "-n", ns]
    run([*ip, "link", "set", "lo", "up"])
    run([*ip, "link", "add", BRIDGE, "type", "bridge"])
    run([*ip, "addr", "add", f"{GATEWAY}/{SUBNET.prefixlen}", "dev", BRIDGE])
    run([*ip, "link", "set", BRIDGE, "up"])


def attach_node(bridge_ns: str, node_ns: str, node: str, address: str) -> None:
    """A node namespace with `host0` (as systemd-nspawn names it) wired to the bridge."""
    run(["ip", "netns", "add", node_ns])
    peer = _veth(node)
    run(["ip", "-n", bridge_ns, "link", "add", peer, "type", "veth",
         "peer", "name", "host0", "netns", node_ns])
    run(["ip", "-n", bridge_ns, "link", "set", peer, "master", BRIDGE, "up"])
    ip = ["ip", "-n", node_ns]
    run([*ip, "link", "set", "lo", "up"])
    run([*ip, "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "host0"])
    run([*ip, "link", "set", "host0", "up"])
    run([*ip, "route", "add", "default", "via", GATEWAY])


def _veth(node: str) -> str:
    """The bridge side of a node's veth pair (interface names have 15 characters at most)."""
    return f"v{node}"[:15]


def detach_node(bridge_ns: str, node_ns: str, node: str) -> None:
    """Undo `attach_node`: the node's namespace and its veth on the bridge."""
    delete(node_ns)
    run(["ip", "-n", bridge_ns, "link", "delete", _veth(node)], check=False)


def delete(ns: str) -> None:
    run(["ip", "netns", "delete", ns], check=False)
