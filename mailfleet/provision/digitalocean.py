"""DigitalOcean (API v2) through Apache libcloud's DigitalOcean connection, with the request
bodies written here.

Droplets carry the tag mailfleet-host:NAME (DigitalOcean's tags allow no "="), so a second
`provision` finds the first one's. DigitalOcean has no call for reverse DNS: it takes a
droplet's PTR records from its name, so the droplet is named with the host's FQDN.
"""

from __future__ import annotations

from libcloud.common.digitalocean import DigitalOcean_v2_Connection

from mailfleet.provision.base import IMAGES, LABEL, Offer, ProviderError, Server, ServerSpec
from mailfleet.provision.libcloud_api import LibcloudAPI

HOST = "api.digitalocean.com"
TOKEN_VARIABLE = "DIGITALOCEAN_TOKEN"  # the name DigitalOcean's own tools read
PER_PAGE = 200


class _Connection(DigitalOcean_v2_Connection):
    def add_default_params(self, params: dict) -> dict:  # (libcloud's asks its driver)
        params["per_page"] = PER_PAGE
        return params


def _tag(name: str) -> str:
    return f"{LABEL}:{name}"


class DigitalOcean(LibcloudAPI):
    name = "DigitalOcean"
    token_variable = TOKEN_VARIABLE
    version = "/v2"

    def __init__(self, token: str, host: str = HOST, port: int = 443, secure: bool = True):
        super().__init__(_Connection(token, secure=secure, host=host, port=port, timeout=60))

    def offer(self) -> Offer:
        what = "list its offers"
        regions = {r["slug"]: r["name"] for r in self.request(what, "/regions")["regions"]
                   if r.get("available")}
        plans = {s["slug"]: (f"{s['vcpus']} cores, {s['memory'] / 1024:g} GB, {s['disk']} GB "
                             f"disk, {float(s['price_monthly']):.2f} a month")
                 for s in self.request(what, "/sizes")["sizes"] if s.get("available", True)}
        slugs = {i["slug"] for i in self.request(what, "/images", params={
            "type": "distribution"})["images"] if i.get("slug")}
        return Offer(regions, plans, tuple(i for i in IMAGES if f"{i}-x64" in slugs))

    def find(self, name: str) -> Server | None:
        found = self.request(f"look up server {name}", "/droplets",
                             params={"tag_name": _tag(name)}).get("droplets", [])
        if len(found) > 1:
            raise ProviderError(f"{self.name} has {len(found)} droplets tagged {_tag(name)}: "
                                "mailfleet makes one a host and cannot tell which is it.")
        return _server(found[0], name) if found else None

    def create(self, spec: ServerSpec) -> Server:
        body = {"name": spec.fqdn, "region": spec.region, "size": spec.plan,
                "image": f"{spec.image}-x64", "user_data": spec.user_data,
                "ipv6": spec.ipv6, "backups": spec.backups, "monitoring": False,
                "tags": [_tag(spec.name)]}
        made = self.request(f"create server {spec.name} ({spec.plan} in {spec.region})",
                            "/droplets", "POST", body=body)
        return _server(made["droplet"], spec.name)

    def get(self, server_id: str) -> Server:
        droplet = self.request(f"read server {server_id}", f"/droplets/{server_id}")["droplet"]
        names = [t.partition(":")[2] for t in droplet.get("tags", [])
                 if t.startswith(f"{LABEL}:")]
        return _server(droplet, names[0] if names else droplet["name"])

    def set_reverse_dns(self, server: Server, fqdn: str) -> None:
        """Nothing to call: the droplet's name (the FQDN, see create) is its PTR record."""

    def destroy(self, server: Server) -> None:
        self.request(f"delete server {server.name} ({server.id})", f"/droplets/{server.id}",
                     "DELETE")


def _server(droplet: dict, name: str) -> Server:
    networks = droplet.get("networks") or {}

    def public(kind: str) -> str | None:
        return next((n["ip_address"] for n in networks.get(kind, [])
                     if n.get("type") == "public"), None)
    return Server(str(droplet["id"]), name, str(droplet.get("status")),
                  droplet.get("status") == "active", public("v4"), public("v6"))
