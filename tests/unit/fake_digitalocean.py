"""A local stand-in for DigitalOcean's API v2 on 127.0.0.1, answering with the shapes of its
published reference (regions, sizes, images, droplets; errors as {"id", "message"}), as far
as mailfleet's module and libcloud's connection read them."""

from __future__ import annotations

from fake_api import FakeAPI

TOKEN = "test-token-digitalocean"
SOLD_OUT = "sfo3"

REGIONS = [{"name": "Frankfurt 1", "slug": "fra1", "features": ["ipv6"], "available": True,
            "sizes": ["s-2vcpu-4gb"]},
           {"name": "San Francisco 3", "slug": SOLD_OUT, "features": [], "available": True,
            "sizes": []},
           {"name": "Amsterdam 2", "slug": "ams2", "features": [], "available": False,
            "sizes": []}]
SIZES = [{"slug": "s-2vcpu-4gb", "memory": 4096, "vcpus": 2, "disk": 80, "transfer": 4.0,
          "price_monthly": 24.0, "price_hourly": 0.03571, "regions": ["fra1"],
          "available": True, "description": "Basic"}]
IMAGES = [{"id": n, "name": name, "distribution": "Debian", "slug": slug, "public": True,
           "regions": ["fra1"], "created_at": "2026-01-01T00:00:00Z", "min_disk_size": 15,
           "type": "base"}
          for n, name, slug in ((1, "12 x64", "debian-12-x64"), (2, "13 x64", "debian-13-x64"),
                                (3, "24.04 (LTS) x64", "ubuntu-24-04-x64"))]


class FakeDigitalOcean(FakeAPI):
    token = TOKEN
    unauthorized = (401, {"id": "unauthorized", "message": "Unable to authenticate you."})

    def __init__(self) -> None:
        self.droplets: dict[int, dict] = {}
        self.user_data: dict[int, str] = {}
        super().__init__()

    def route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict | None]:
        parts = path.strip("/").split("/")[1:]  # after "v2"
        if method == "GET" and parts == ["regions"]:
            return 200, {"regions": REGIONS, "links": {}, "meta": {"total": len(REGIONS)}}
        if method == "GET" and parts == ["sizes"]:
            return 200, {"sizes": SIZES, "links": {}, "meta": {"total": len(SIZES)}}
        if method == "GET" and parts == ["images"]:
            return 200, {"images": IMAGES, "links": {}, "meta": {"total": len(IMAGES)}}
        if method == "GET" and parts == ["droplets"]:
            tag = query.get("tag_name", [None])[0]
            found = [d for d in self.droplets.values() if tag is None or tag in d["tags"]]
            return 200, {"droplets": found, "links": {"pages": {}}, "meta": {"total": len(found)}}
        if method == "POST" and parts == ["droplets"]:
            return self._create(body)
        if parts[:1] == ["droplets"] and len(parts) == 2:
            droplet = self.droplets.get(int(parts[1]))
            if droplet is None:
                return 404, {"id": "not_found",
                             "message": "The resource you were accessing could not be found."}
            if method == "GET":
                answer = {k: v for k, v in droplet.items() if not k.startswith("_")}
                droplet["status"] = "active"
                droplet["networks"] = droplet.pop("_networks", droplet["networks"])
                return 200, {"droplet": answer}
            if method == "DELETE":
                del self.droplets[int(parts[1])]
                return 204, None
        return 404, {"id": "not_found", "message": f"no route {method} {path}"}

    def _create(self, body: dict) -> tuple[int, dict]:
        if body["region"] == SOLD_OUT:
            return 422, {"id": "unprocessable_entity",
                         "message": "Size is not available in this region."}
        number = 3164400 + len(self.user_data)
        networks = {"v4": [{"ip_address": f"192.0.2.{len(self.user_data) + 40}",
                            "netmask": "255.255.240.0", "gateway": "192.0.2.1", "type": "public"},
                           {"ip_address": "10.114.0.2", "netmask": "255.255.240.0",
                            "gateway": "", "type": "private"}],
                    "v6": [{"ip_address": f"2001:db8:6::{len(self.user_data) + 40}",
                            "netmask": 64, "gateway": "2001:db8:6::1", "type": "public"}]
                    if body["ipv6"] else []}
        self.droplets[number] = {
            "id": number, "name": body["name"], "memory": 4096, "vcpus": 2, "disk": 80,
            "locked": False, "status": "new", "created_at": "2026-12-06T00:00:00Z",
            "features": ["backups"] if body["backups"] else [], "backup_ids": [],
            "snapshot_ids": [], "volume_ids": [],
            "image": next(i for i in IMAGES if i["slug"] == body["image"]),
            "size_slug": body["size"], "networks": {"v4": [], "v6": []},
            "_networks": networks, "region": next(r for r in REGIONS
                                                  if r["slug"] == body["region"]),
            "tags": body["tags"], "vpc_uuid": ""}
        self.user_data[number] = body["user_data"]
        public = {k: v for k, v in self.droplets[number].items() if not k.startswith("_")}
        return 202, {"droplet": public, "links": {"actions": [
            {"id": 7, "rel": "create", "href": "/v2/actions/7"}]}}
