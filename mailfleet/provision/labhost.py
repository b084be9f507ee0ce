"""The lab as a provider: a server is a lab node (of the lab MAILFLEET_LAB names) whose first
boot runs Debian's cloud-init with NoCloud's seed directory and the very user-data a cloud
provider would get. So the path user-data → first boot → verified first login → deploy is
tested here end to end."""

from __future__ import annotations

import secrets

from mailfleet.lab.lab import Lab
from mailfleet.lab.state import Node
from mailfleet.lab.system import alive
from mailfleet.provision.base import IMAGES, Offer, ProviderError, Server, ServerSpec
from mailfleet.provision.userdata import nocloud_seed

RELEASES = {"debian-12": "bookworm", "debian-13": "trixie"}
PLANS = {"bare": "a fresh Debian with cloud-init, as a VPS provider hands it over",
         "preinstalled": "the same, with the mail system's packages already installed"}


class LabProvider:
    name = "the lab"

    def __init__(self, preinstalled: list[str], log=print) -> None:
        self._lab = Lab(log=log)
        self._packages = {"bare": [], "preinstalled": preinstalled}

    def offer(self) -> Offer:
        return Offer(regions={"lab": f"this machine, lab {self._lab.paths.id}"},
                     plans=dict(PLANS), images=IMAGES)

    def find(self, name: str) -> Server | None:
        state = self._lab.state()
        # (only nodes `provision` made: `lab up`'s n1, n2, ... are no provider's servers)
        node = next((n for n in (state.nodes if state else []) if n.name == name and n.cloud),
                    None)
        return None if node is None else _server(node)

    def get(self, server_id: str) -> Server:
        server = self.find(server_id)
        if server is None:
            raise ProviderError(f"Lab {self._lab.paths.id} has no node {server_id} any more.")
        return server

    def create(self, spec: ServerSpec) -> Server:
        if spec.plan not in self._packages:
            raise ProviderError(f"The lab has no plan {spec.plan!r} (plans: "
                                f"{', '.join(self._packages)}).", exit_code=2)
        seed = nocloud_seed(f"mailfleet-{spec.name}-{secrets.token_hex(4)}", spec.name,
                            spec.user_data)
        node = self._lab.add_node(spec.name, RELEASES[spec.image], seed,
                                  self._packages[spec.plan])
        return _server(node)

    def set_reverse_dns(self, server: Server, fqdn: str) -> None:
        """(The lab's addresses have no reverse zone to set.)"""

    def destroy(self, server: Server) -> None:
        self._lab.remove_node(server.name)


def _server(node: Node) -> Server:
    running = alive(node.pid)
    return Server(id=node.name, name=node.name, status="running" if running else "stopped",
                  running=running, ipv4=node.address, ssh_address="127.0.0.1",
                  ssh_port=node.ssh_port)
