"""Vultr (API v2) through Apache libcloud's Vultr connection: its authentication, JSON and
error handling, with the request bodies written here (libcloud's create_node still sends
fields that API v2 deprecated, and reads back one it may drop).

Servers carry the tag mailfleet-host=NAME, so a second `provision` finds the first one's.
"""

from __future__ import annotations

import base64

from libcloud.common.vultr import VultrConnectionV2

from mailfleet.provision.base import IMAGES, LABEL, Offer, ProviderError, Server, ServerSpec
from mailfleet.provision.libcloud_api import LibcloudAPI

HOST = "api.vultr.com"
TOKEN_VARIABLE = "VULTR_API_KEY"  # the name Vultr's own tools read


class Vultr(LibcloudAPI):
    name = "Vultr"
    token_variable = TOKEN_VARIABLE
    version = "/v2"

    def __init__(self, token: str, host: str = HOST, port: int = 443, secure: bool = True):
        super().__init__(VultrConnectionV2(token, secure=secure, host=host, port=port,
                                           timeout=60))

    def _os_ids(self, what: str) -> dict[str, int]:
        """{"debian-13": os id} for the Debian releases Vultr offers (x64)."""
        found = {}
        for system in self.request(what, "/os").get("os", []):
            name = str(system.get("name", ""))
            if system.get("family") == "debian" and system.get("arch") == "x64":
                for image in IMAGES:
                    if name.startswith(f"Debian {image.split('-')[1]} "):
                        found[image] = int(system["id"])
        return found

    def offer(self) -> Offer:
        what = "list its offers"
        regions = {r["id"]: f"{r['city']}, {r['country']}"
                   for r in self.request(what, "/regions").get("regions", [])}
        plans = {p["id"]: (f"{p['vcpu_count']} cores, {p['ram'] / 1024:g} GB, {p['disk']} GB disk"
                           f", {float(p['monthly_cost']):.2f} a month")
                 for p in self.request(what, "/plans").get("plans", [])}
        return Offer(regions, plans, tuple(sorted(self._os_ids(what))))

    def find(self, name: str) -> Server | None:
        found = self.request(f"look up server {name}", "/instances",
                              params={"tag": f"{LABEL}={name}"}).get("instances", [])
        if len(found) > 1:
            raise ProviderError(f"{self.name} has {len(found)} servers tagged {LABEL}={name}: "
                                "mailfleet makes one a host and cannot tell which is it.")
        return _server(found[0], name) if found else None

    def create(self, spec: ServerSpec) -> Server:
        what = f"create server {spec.name} ({spec.plan} in {spec.region})"
        os_id = self._os_ids(what).get(spec.image)
        if os_id is None:
            raise ProviderError(f"{self.name} offers no {spec.image} image.", exit_code=2)
        body = {"region": spec.region, "plan": spec.plan, "os_id": os_id,
                "label": spec.fqdn, "hostname": spec.name, "tags": [f"{LABEL}={spec.name}"],
                "user_data": base64.b64encode(spec.user_data.encode()).decode(),
                "enable_ipv6": spec.ipv6, "backups": "enabled" if spec.backups else "disabled",
                "enable_vpc": spec.private_network, "activation_email": False}
        made = self.request(what, "/instances", "POST", body=body)
        return _server(made["instance"], spec.name)

    def get(self, server_id: str) -> Server:
        found = self.request(f"read server {server_id}", f"/instances/{server_id}")
        instance = found["instance"]
        return _server(instance, _tagged_name(instance))

    def set_reverse_dns(self, server: Server, fqdn: str) -> None:
        for kind, address in (("ipv4", server.ipv4), ("ipv6", server.ipv6)):
            if address:
                self.request(f"set the reverse DNS of {address}",
                              f"/instances/{server.id}/{kind}/reverse", "POST",
                              body={"ip": address, "reverse": fqdn})

    def destroy(self, server: Server) -> None:
        self.request(f"delete server {server.name} ({server.id})",
                      f"/instances/{server.id}", "DELETE")


def _tagged_name(instance: dict) -> str:
    for tag in instance.get("tags") or []:
        key, _, value = str(tag).partition("=")
        if key == LABEL:
            return value
    return str(instance.get("hostname") or instance.get("label") or "")


def _server(instance: dict, name: str) -> Server:
    ipv4 = instance.get("main_ip") or None
    ipv6 = instance.get("v6_main_ip") or None
    running = instance.get("status") == "active" and instance.get("power_status") == "running"
    return Server(str(instance["id"]), name, str(instance.get("status")), running,
                  None if ipv4 in (None, "0.0.0.0") else ipv4,
                  None if ipv6 in (None, "", "::") else ipv6)
