"""Hetzner Cloud through its official client library, `hcloud`.

Servers carry the label mailfleet-host=NAME, so a second `provision` finds the first one's
server instead of making another. Hetzner gives a server an IPv6 /64; the host's own address
is the network's ::1 (what its cloud image configures), and reverse DNS is set for both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TypeVar

import requests
from hcloud import APIException, Client
from hcloud.actions import ActionException, ActionTimeoutException
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer, ServerCreatePublicNetwork

from mailfleet.provision.base import (IMAGES, LABEL, Offer, ProviderError, Server, ServerSpec,
                                      refused, unreachable)

ENDPOINT = "https://api.hetzner.cloud/v1"
TOKEN_VARIABLE = "HCLOUD_TOKEN"  # the name Hetzner's own CLI reads
# error codes that the operator fixes in mailfleet.toml or the token, not by trying again
SETTING_ERRORS = {"unauthorized", "forbidden", "invalid_input", "not_found"}
T = TypeVar("T")


class Hetzner:
    name = "Hetzner Cloud"

    def __init__(self, token: str, endpoint: str = ENDPOINT, poll_interval: float = 1.0):
        self._client = Client(token=token, api_endpoint=endpoint, poll_interval=poll_interval,
                              application_name="mailfleet")

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except APIException as err:
            raise refused(self.name, what, f"{err.message} ({err.code})",
                          err.code in SETTING_ERRORS,
                          TOKEN_VARIABLE if err.code == "unauthorized" else None) from None
        except ActionException as err:  # an accepted call whose action failed or took long
            state = "timed out" if isinstance(err, ActionTimeoutException) else "failed"
            raise ProviderError(f"{self.name} could not {what}: its action {state}.") from None
        except requests.RequestException as err:
            raise unreachable(self.name, what, err) from None

    def offer(self) -> Offer:
        def read() -> Offer:
            regions = {loc.name: f"{loc.city}, {loc.country}"
                       for loc in self._client.locations.get_all()}
            plans = {}
            for kind in self._client.server_types.get_all():
                prices = sorted(float(p["price_monthly"]["gross"]) for p in kind.prices or [])
                price = f", from {prices[0]:.2f} a month" if prices else ""
                plans[kind.name] = (f"{kind.cores} cores, {kind.memory:g} GB, {kind.disk} GB disk"
                                    f"{price}")
            images = tuple(i.name for i in self._client.images.get_all(type="system")
                           if i.name in IMAGES)
            return Offer(regions, plans, images)
        return self._call("list its offers", read)

    def find(self, name: str) -> Server | None:
        found = self._call(f"look up server {name}", lambda: self._client.servers.get_all(
            label_selector=f"{LABEL}={name}"))
        if len(found) > 1:
            raise ProviderError(f"{self.name} has {len(found)} servers labelled {LABEL}={name}: "
                                "mailfleet makes one a host and cannot tell which is it.")
        return _server(found[0]) if found else None

    def create(self, spec: ServerSpec) -> Server:
        def make() -> Server:
            made = self._client.servers.create(
                spec.fqdn, server_type=ServerType(name=spec.plan), image=Image(name=spec.image),
                location=Location(name=spec.region), user_data=spec.user_data,
                labels={LABEL: spec.name}, start_after_create=True,
                public_net=ServerCreatePublicNetwork(enable_ipv4=True, enable_ipv6=spec.ipv6))
            if spec.backups:
                made.server.enable_backup()
            return _server(made.server)
        return self._call(f"create server {spec.name} ({spec.plan} in {spec.region})", make)

    def get(self, server_id: str) -> Server:
        return _server(self._call(f"read server {server_id}",
                                  lambda: self._client.servers.get_by_id(int(server_id))))

    def set_reverse_dns(self, server: Server, fqdn: str) -> None:
        bound = self._call(f"read server {server.id}",
                           lambda: self._client.servers.get_by_id(int(server.id)))
        for address in (server.ipv4, server.ipv6):
            if address:
                self._call(f"set the reverse DNS of {address}",
                           lambda a=address: bound.change_dns_ptr(a, fqdn).wait_until_finished())

    def destroy(self, server: Server) -> None:
        self._call(f"delete server {server.name} ({server.id})",
                   lambda: self._client.servers.get_by_id(int(server.id)).delete()
                   .wait_until_finished())


def _server(bound: BoundServer) -> Server:
    net = bound.public_net
    ipv4 = net.ipv4.ip if net and net.ipv4 else None
    ipv6 = None
    if net and net.ipv6:
        ipv6 = str(ipaddress.ip_network(net.ipv6.ip, strict=False).network_address + 1)
    return Server(str(bound.id), bound.labels.get(LABEL, bound.name), bound.status,
                  bound.status == "running", ipv4, ipv6)
