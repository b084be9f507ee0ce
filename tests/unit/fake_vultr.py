"""A local stand-in for Vultr's API v2 on 127.0.0.1, answering with the shapes of its
published reference (regions, plans, os, instances, instances/{id}/ipv4|ipv6/reverse;
errors as {"error": "...", "status": N}), as far as mailfleet's module and libcloud's
connection read them. It keeps the instances it made and every request it saw."""

from __future__ import annotations

import base64

from fake_api import FakeAPI

TOKEN = "test-token-vultr"
SOLD_OUT = "ewr"


def _listed(key: str, items: list) -> dict:
    return {key: items, "meta": {"total": len(items), "links": {"next": "", "prev": ""}}}


REGIONS = [{"id": "fra", "city": "Frankfurt", "country": "DE", "continent": "Europe",
            "options": ["ddos_protection"]},
           {"id": SOLD_OUT, "city": "New Jersey", "country": "US", "continent": "North America",
            "options": []}]
PLANS = [{"id": "vc2-2c-4gb", "vcpu_count": 2, "ram": 4096, "disk": 80, "disk_count": 1,
          "bandwidth": 3072, "monthly_cost": 20, "type": "vc2", "locations": ["fra", SOLD_OUT]}]
SYSTEMS = [{"id": 2136, "name": "Debian 12 x64 (bookworm)", "arch": "x64", "family": "debian"},
           {"id": 2625, "name": "Debian 13 x64 (trixie)", "arch": "x64", "family": "debian"},
           {"id": 2626, "name": "Debian 13 i386 (trixie)", "arch": "i386", "family": "debian"},
           {"id": 2284, "name": "Ubuntu 24.04 LTS x64", "arch": "x64", "family": "ubuntu"}]


class FakeVultr(FakeAPI):
    token = TOKEN
    unauthorized = (401, {"error": "Invalid API token.", "status": 401})

    def __init__(self) -> None:
        self.instances: dict[str, dict] = {}
        self.user_data: dict[str, str] = {}
        self.reverse: dict[str, str] = {}  # address: name
        super().__init__()

    def route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict | None]:
        parts = path.strip("/").split("/")[1:]  # after "v2"
        if method == "GET" and parts == ["regions"]:
            return 200, _listed("regions", REGIONS)
        if method == "GET" and parts == ["plans"]:
            return 200, _listed("plans", PLANS)
        if method == "GET" and parts == ["os"]:
            return 200, _listed("os", SYSTEMS)
        if method == "GET" and parts == ["instances"]:
            tag = query.get("tag", [None])[0]
            return 200, _listed("instances", [i for i in self.instances.values()
                                              if tag is None or tag in i["tags"]])
        if method == "POST" and parts == ["instances"]:
            return self._create(body)
        if parts[:1] == ["instances"] and len(parts) >= 2:
            instance = self.instances.get(parts[1])
            if instance is None:
                return 404, {"error": "Invalid instance-id.", "status": 404}
            if method == "GET" and len(parts) == 2:
                answer = dict(instance)
                instance.update(status="active", power_status="running", server_status="ok",
                                main_ip=instance["_ip"], v6_main_ip=instance["_ip6"])
                return 200, {"instance": answer}
            if method == "DELETE" and len(parts) == 2:
                del self.instances[parts[1]]
                return 204, None
            if method == "POST" and parts[2:] in (["ipv4", "reverse"], ["ipv6", "reverse"]):
                self.reverse[body["ip"]] = body["reverse"]
                return 204, None
        return 404, {"error": f"no route {method} {path}", "status": 404}

    def _create(self, body: dict) -> tuple[int, dict]:
        if body["region"] == SOLD_OUT:
            return 400, {"error": "Plan is not available in the selected region.", "status": 400}
        if not isinstance(body["os_id"], int):
            return 400, {"error": "Invalid os_id.", "status": 400}
        number = len(self.user_data) + 10
        key = f"cb676a46-66fd-4dfb-b839-{number:012d}"
        self.instances[key] = {
            "id": key, "os": "Debian", "ram": 4096, "disk": 80, "main_ip": "0.0.0.0",
            "vcpu_count": 2, "region": body["region"], "plan": body["plan"],
            "date_created": "2026-12-06T00:00:00+00:00", "status": "pending",
            "allowed_bandwidth": 3072, "netmask_v4": "", "gateway_v4": "0.0.0.0",
            "power_status": "stopped", "server_status": "none", "v6_network": "",
            "v6_main_ip": "", "v6_network_size": 0, "label": body["label"],
            "internal_ip": "", "kvm": "", "hostname": body["hostname"], "tags": body["tags"],
            "os_id": body["os_id"], "app_id": 0, "image_id": "", "firewall_group_id": "",
            "features": ["ipv6"] if body["enable_ipv6"] else [], "backups": body["backups"],
            "_ip": f"198.51.100.{number}", "_ip6": f"2001:db8:5::{number}" if body["enable_ipv6"] else ""}
        self.user_data[key] = base64.b64decode(body["user_data"]).decode()
        return 202, {"instance": dict(self.instances[key])}
