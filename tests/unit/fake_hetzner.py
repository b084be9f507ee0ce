"""A local stand-in for Hetzner Cloud's API (v1) on 127.0.0.1, answering with the shapes of
its published documentation (docs.hetzner.cloud: servers, server_types, locations, images,
actions, change_dns_ptr; errors as {"error": {"code", "message"}}) as far as `hcloud` reads
them. It keeps the servers it made and every request it saw."""

from __future__ import annotations

from fake_api import FakeAPI

TOKEN = "test-token-hetzner"
SOLD_OUT = "nbg1"  # a location where every create fails for want of capacity
NOW = "2026-12-06T00:00:00+00:00"


def _page(key: str, items: list) -> dict:
    return {key: items, "meta": {"pagination": {
        "page": 1, "per_page": 50, "previous_page": None, "next_page": None, "last_page": 1,
        "total_entries": len(items)}}}


def _action(number: int, command: str, server: int) -> dict:
    return {"id": number, "command": command, "status": "success", "progress": 100,
            "started": NOW, "finished": NOW, "resources": [{"id": server, "type": "server"}],
            "error": None}


LOCATIONS = [{"id": 1, "name": "fsn1", "description": "Falkenstein DC Park 1", "country": "DE",
              "city": "Falkenstein", "latitude": 50.47, "longitude": 12.37,
              "network_zone": "eu-central"},
             {"id": 2, "name": SOLD_OUT, "description": "Nuremberg DC Park 1", "country": "DE",
              "city": "Nuremberg", "latitude": 49.45, "longitude": 11.07,
              "network_zone": "eu-central"}]
SERVER_TYPES = [{"id": 22, "name": "cx22", "description": "CX22", "cores": 2, "memory": 4.0,
                 "disk": 40, "storage_type": "local", "cpu_type": "shared",
                 "architecture": "x86", "deprecation": None,
                 "prices": [{"location": "fsn1", "price_hourly": {"net": "0.006", "gross": "0.0071"},
                             "price_monthly": {"net": "3.79", "gross": "4.51"}}]}]
IMAGES = [{"id": 7 + n, "name": name, "type": "system", "description": name, "os_flavor": "debian",
           "os_version": name[-2:], "architecture": "x86", "status": "available",
           "rapid_deploy": True, "deprecation": None, "labels": {}, "created": NOW,
           "image_size": None, "disk_size": 5, "bound_to": None, "created_from": None,
           "protection": {"delete": False}}
          for n, name in enumerate(("debian-12", "debian-13", "ubuntu-24.04"))]


class FakeHetzner(FakeAPI):
    token = TOKEN
    unauthorized = (401, {"error": {"code": "unauthorized", "details": {},
                                    "message": "unable to authenticate"}})

    def __init__(self) -> None:
        self.servers: dict[int, dict] = {}
        self.user_data: dict[int, str] = {}
        self._next = 100
        super().__init__()
        self.endpoint = f"http://127.0.0.1:{self.port}/v1"

    def route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        parts = path.strip("/").split("/")[1:]  # after "v1"
        if method == "GET" and parts == ["locations"]:
            return 200, _page("locations", LOCATIONS)
        if method == "GET" and parts == ["server_types"]:
            return 200, _page("server_types", SERVER_TYPES)
        if method == "GET" and parts == ["images"]:
            kinds = query.get("type", ["system"])
            return 200, _page("images", [i for i in IMAGES if i["type"] in kinds])
        if method == "GET" and parts == ["servers"]:
            wanted = query.get("label_selector", [""])[0]
            key, _, value = wanted.partition("=")
            found = [s for s in self.servers.values() if not wanted or s["labels"].get(key) == value]
            return 200, _page("servers", found)
        if method == "POST" and parts == ["servers"]:
            return self._create(body)
        if parts[:1] == ["servers"] and len(parts) >= 2:
            number = int(parts[1])
            if number not in self.servers:
                return 404, {"error": {"code": "not_found", "message": "server not found",
                                       "details": {}}}
            server = self.servers[number]
            if method == "GET" and len(parts) == 2:
                answer = dict(server)
                server["status"] = "running"  # up from the second look on
                return 200, {"server": answer}
            if method == "DELETE" and len(parts) == 2:
                del self.servers[number]
                return 200, {"action": _action(3, "delete_server", number)}
            if method == "POST" and parts[2:] == ["actions", "change_dns_ptr"]:
                net = server["public_net"]
                if body["ip"] == net["ipv4"]["ip"]:
                    net["ipv4"]["dns_ptr"] = body["dns_ptr"]
                else:
                    net["ipv6"]["dns_ptr"].append({"ip": body["ip"], "dns_ptr": body["dns_ptr"]})
                return 201, {"action": _action(4, "change_dns_ptr", number)}
            if method == "POST" and parts[2:] == ["actions", "enable_backup"]:
                server["backup_window"] = "22-02"
                return 201, {"action": _action(5, "enable_backup", number)}
        if method == "GET" and parts[:1] == ["actions"]:
            return 200, {"action": _action(int(parts[1]), "create_server", 0)}
        return 404, {"error": {"code": "not_found", "message": f"no route {method} {path}",
                               "details": {}}}

    def _create(self, body: dict) -> tuple[int, dict]:
        if body["location"] == SOLD_OUT:
            return 412, {"error": {"code": "resource_unavailable", "details": {},
                                   "message": "error during placement"}}
        if body["server_type"] not in {t["name"] for t in SERVER_TYPES}:
            return 400, {"error": {"code": "invalid_input", "details": {},
                                   "message": f"server type {body['server_type']} not found"}}
        self._next += 1
        number = self._next
        image = next(i for i in IMAGES if i["name"] == body["image"])
        v6 = body.get("public_net", {}).get("enable_ipv6", True)
        self.servers[number] = {
            "id": number, "name": body["name"], "status": "initializing", "created": NOW,
            "public_net": {
                "ipv4": {"id": number, "ip": f"203.0.113.{number - 90}", "blocked": False,
                         "dns_ptr": f"static.{number}.clients.example"},
                "ipv6": {"id": number, "ip": f"2001:db8:{number:x}::/64", "blocked": False,
                         "dns_ptr": []} if v6 else None,
                "floating_ips": [], "firewalls": []},
            "private_net": [], "server_type": {"id": 22, "name": body["server_type"]},
            "location": next(dict(l) for l in LOCATIONS if l["name"] == body["location"]),
            "image": image, "labels": body.get("labels", {}), "volumes": [],
            "protection": {"delete": False, "rebuild": False}, "backup_window": None}
        self.user_data[number] = body.get("user_data", "")
        return 201, {"server": dict(self.servers[number]),
                     "action": dict(_action(1, "create_server", number), status="running",
                                    progress=0, finished=None),
                     "next_actions": [], "root_password": None}
