"""Each provider module (Hetzner Cloud, Vultr, DigitalOcean) against a local stand-in for
its API (fake_*.py, shaped after the provider's published reference): the offer read with
GET requests only, a server made once with the user-data and mailfleet's label, found
again, running, its reverse DNS, destroyed; and the API's refusals as one sentence with
exit 1 or 2."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import fake_digitalocean
import fake_hetzner
import fake_vultr
import pytest

from mailfleet.provision.base import ProviderError, ServerSpec, wait_running
from mailfleet.provision.digitalocean import DigitalOcean
from mailfleet.provision.hetzner import Hetzner
from mailfleet.provision.userdata import HostKey, user_data
from mailfleet.provision.vultr import Vultr

DEPLOY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDYg/Ph2QQ9PPJo1WiE49otTSI0PnYZDUexp/sB4MGro deploy"


@dataclass(frozen=True)
class Case:
    fake: type
    connect: Callable  # (fake, token) -> provider
    region: str
    plan: str
    offer: tuple[dict, dict]  # regions, plans as `offer()` shows them
    made: Callable  # (fake) -> {"user_data", "label", "image", "backups"} of the one server
    reverse: Callable  # (fake, server) -> {address: name} the API holds
    refusals: tuple[tuple[str, str, str, int], ...]  # token, region, words, exit code


def _hetzner_made(api) -> dict:
    (number, server), = api.servers.items()
    return {"user_data": api.user_data[number], "label": server["labels"],
            "image": server["image"]["name"], "backups": bool(server["backup_window"]),
            "name": server["name"]}


def _hetzner_reverse(api, server) -> dict:
    net = api.servers[int(server.id)]["public_net"]
    return {net["ipv4"]["ip"]: net["ipv4"]["dns_ptr"],
            **{p["ip"]: p["dns_ptr"] for p in net["ipv6"]["dns_ptr"]}}


def _vultr_made(api) -> dict:
    (key, instance), = api.instances.items()
    return {"user_data": api.user_data[key], "label": instance["tags"],
            "image": instance["os_id"], "backups": instance["backups"] == "enabled",
            "name": instance["label"]}


def _ocean_made(api) -> dict:
    (number, droplet), = api.droplets.items()
    return {"user_data": api.user_data[number], "label": droplet["tags"],
            "image": droplet["image"]["slug"], "backups": "backups" in droplet["features"],
            "name": droplet["name"]}


CASES = {
    "hetzner": Case(
        fake_hetzner.FakeHetzner,
        lambda api, token: Hetzner(token, api.endpoint, poll_interval=0.01), "fsn1", "cx22",
        ({"fsn1": "Falkenstein, DE", fake_hetzner.SOLD_OUT: "Nuremberg, DE"},
         {"cx22": "2 cores, 4 GB, 40 GB disk, from 4.51 a month"}),
        _hetzner_made, _hetzner_reverse,
        (("wrong", "fsn1", "unable to authenticate (unauthorized).", 2),
         (fake_hetzner.TOKEN, fake_hetzner.SOLD_OUT,
          "error during placement (resource_unavailable).", 1))),
    "vultr": Case(
        fake_vultr.FakeVultr,
        lambda api, token: Vultr(token, "127.0.0.1", api.port, secure=False), "fra",
        "vc2-2c-4gb",
        ({"fra": "Frankfurt, DE", fake_vultr.SOLD_OUT: "New Jersey, US"},
         {"vc2-2c-4gb": "2 cores, 4 GB, 80 GB disk, 20.00 a month"}),
        _vultr_made, lambda api, server: api.reverse,
        (("wrong", "fra", "Invalid API token (HTTP 401).", 2),
         (fake_vultr.TOKEN, fake_vultr.SOLD_OUT,
          "Plan is not available in the selected region (HTTP 400).", 2))),
    "digitalocean": Case(
        fake_digitalocean.FakeDigitalOcean,
        lambda api, token: DigitalOcean(token, "127.0.0.1", api.port, secure=False), "fra1",
        "s-2vcpu-4gb",
        ({"fra1": "Frankfurt 1", fake_digitalocean.SOLD_OUT: "San Francisco 3"},
         {"s-2vcpu-4gb": "2 cores, 4 GB, 80 GB disk, 24.00 a month"}),
        # no call for it: the droplet's name (the FQDN) is its PTR record
        _ocean_made, lambda api, server: {a: api.droplets[int(server.id)]["name"]
                                          for a in (server.ipv4, server.ipv6)},
        (("wrong", "fra1", "Unable to authenticate you (HTTP 401).", 2),
         (fake_digitalocean.TOKEN, fake_digitalocean.SOLD_OUT,
          "Size is not available in this region (HTTP 422).", 2))),
}
# what each module sends for image "debian-13"
IMAGE_SENT = {"hetzner": "debian-13", "vultr": 2625, "digitalocean": "debian-13-x64"}
LABEL_SENT = {"hetzner": {"mailfleet-host": "mx1"}, "vultr": ["mailfleet-host=mx1"],
              "digitalocean": ["mailfleet-host:mx1"]}
NAME_SENT = {"hetzner": "mx1.example.org", "vultr": "mx1.example.org",
             "digitalocean": "mx1.example.org"}


@pytest.fixture(params=list(CASES))
def case(request):
    chosen = CASES[request.param]
    api = chosen.fake()
    yield request.param, chosen, api
    api.close()


def _spec(case: Case, region: str | None = None) -> ServerSpec:
    return ServerSpec(name="mx1", fqdn="mx1.example.org", region=region or case.region,
                      plan=case.plan, image="debian-13", backups=True,
                      user_data=user_data("mx1", "mx1.example.org", DEPLOY, HostKey.generate()))


def test_the_offer_is_read_with_get_requests_only(case):
    _, chosen, api = case
    offer = chosen.connect(api, api.token).offer()
    assert (offer.regions, offer.plans) == chosen.offer
    assert offer.images == ("debian-12", "debian-13")
    assert {method for method, _, _ in api.requests} == {"GET"}


def test_a_server_is_made_once_with_the_user_data_and_its_label(case):
    name, chosen, api = case
    provider = chosen.connect(api, api.token)
    spec = _spec(chosen)
    assert provider.find("mx1") is None
    server = provider.create(spec)
    assert not server.running and server.name == "mx1"
    assert chosen.made(api) == {"user_data": spec.user_data, "label": LABEL_SENT[name],
                                "image": IMAGE_SENT[name], "backups": True,
                                "name": NAME_SENT[name]}
    running = wait_running(provider, server, timeout=5, interval=0.01)
    assert running.running and running.ipv4 and running.ipv6
    assert provider.find("mx1") == running  # a second provision finds it
    provider.set_reverse_dns(running, "mx1.example.org")
    assert chosen.reverse(api, running) == {running.ipv4: "mx1.example.org",
                                            running.ipv6: "mx1.example.org"}
    provider.destroy(running)
    assert provider.find("mx1") is None


def test_two_servers_with_one_label_are_refused(case):
    _, chosen, api = case
    provider = chosen.connect(api, api.token)
    provider.create(_spec(chosen))
    provider.create(_spec(chosen))
    with pytest.raises(ProviderError, match="has 2 .* mailfleet-host.mx1: mailfleet makes one"):
        provider.find("mx1")


def test_an_api_refusal_is_one_sentence_with_its_exit_code(case):
    _, chosen, api = case
    for token, region, words, code in chosen.refusals:
        with pytest.raises(ProviderError) as err:
            chosen.connect(api, token).create(_spec(chosen, region))
        message = err.value.message
        assert message.startswith(f"{chosen.connect(api, token).name} refused to create "
                                  f"server mx1 ({chosen.plan} in {region}): "), message
        assert message.endswith(words) and "\n" not in message
        assert err.value.exit_code == code
        if token == "wrong":
            assert "token" in err.value.hint
    assert chosen.connect(api, api.token).find("mx1") is None  # nothing was made


def test_an_unreachable_api_is_one_sentence(case):
    _, chosen, api = case
    provider = chosen.connect(api, api.token)
    api.close()
    with pytest.raises(ProviderError, match="could not be reached to list its offers"):
        provider.offer()


def test_a_missing_image_is_refused_before_anything_is_made():
    api = fake_vultr.FakeVultr()
    try:
        spec = ServerSpec(name="mx1", fqdn="mx1.example.org", region="fra", plan="vc2-2c-4gb",
                          image="debian-11", user_data="#cloud-config\n{}\n")
        with pytest.raises(ProviderError, match="Vultr offers no debian-11 image.") as err:
            Vultr(api.token, "127.0.0.1", api.port, secure=False).create(spec)
        assert err.value.exit_code == 2 and api.instances == {}
    finally:
        api.close()
