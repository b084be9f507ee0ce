"""The Vultr module against a local stand-in for its API (fake_vultr.py): what it asks,
what it sends (the user-data, the tag), and its errors as one sentence."""

from __future__ import annotations

import pytest
from fake_vultr import SOLD_OUT, TOKEN, FakeVultr

from mailfleet.provision.base import LABEL, ProviderError, ServerSpec, wait_running
from mailfleet.provision.userdata import HostKey, user_data
from mailfleet.provision.vultr import Vultr

DEPLOY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDYg/Ph2QQ9PPJo1WiE49otTSI0PnYZDUexp/sB4MGro deploy"


@pytest.fixture
def api():
    fake = FakeVultr()
    yield fake
    fake.close()


def _vultr(api: FakeVultr, token: str = TOKEN) -> Vultr:
    return Vultr(token, "127.0.0.1", api.port, secure=False)


def _spec(region: str = "fra", image: str = "debian-13") -> ServerSpec:
    return ServerSpec(name="mx1", fqdn="mx1.example.org", region=region, plan="vc2-2c-4gb",
                      image=image, backups=True,
                      user_data=user_data("mx1", "mx1.example.org", DEPLOY, HostKey.generate()))


def test_the_offer_is_read_with_get_requests_only(api):
    offer = _vultr(api).offer()
    assert offer.regions == {"fra": "Frankfurt, DE", SOLD_OUT: "New Jersey, US"}
    assert offer.plans == {"vc2-2c-4gb": "2 cores, 4 GB, 80 GB disk, 20.00 a month"}
    assert offer.images == ("debian-12", "debian-13")
    assert {method for method, _, _ in api.requests} == {"GET"}


def test_a_server_is_made_once_with_the_user_data_and_its_tag(api):
    vultr = _vultr(api)
    spec = _spec()
    assert vultr.find("mx1") is None
    server = vultr.create(spec)
    assert not server.running and server.ipv4 is None  # 0.0.0.0 while pending
    (key,) = api.instances
    assert api.user_data[key] == spec.user_data
    made = api.instances[key]
    assert made["tags"] == [f"{LABEL}=mx1"] and made["os_id"] == 2625
    assert made["backups"] == "enabled" and made["hostname"] == "mx1"
    running = wait_running(vultr, server, timeout=5, interval=0.01)
    assert running.running and running.name == "mx1"
    assert running.ipv4 == made["_ip"] and running.ipv6 == made["_ip6"]
    assert vultr.find("mx1") == running  # a second provision finds it
    vultr.set_reverse_dns(running, "mx1.example.org")
    assert api.reverse == {running.ipv4: "mx1.example.org", running.ipv6: "mx1.example.org"}
    vultr.destroy(running)
    assert api.instances == {} and vultr.find("mx1") is None


def test_two_servers_with_one_tag_are_refused(api):
    vultr = _vultr(api)
    vultr.create(_spec())
    vultr.create(_spec())
    with pytest.raises(ProviderError, match="2 servers tagged mailfleet-host=mx1"):
        vultr.find("mx1")


@pytest.mark.parametrize("token, region, image, words, code", [
    ("wrong", "fra", "debian-13", "refused to create server mx1 (vc2-2c-4gb in fra): Invalid "
                                  "API token (HTTP 401).", 2),
    (TOKEN, SOLD_OUT, "debian-13",
     "Plan is not available in the selected region (HTTP 400).", 2),
    (TOKEN, "fra", "debian-11", "offers no debian-11 image.", 2),
])
def test_an_api_error_is_one_sentence_with_its_exit_code(api, token, region, image, words, code):
    with pytest.raises(ProviderError) as err:
        _vultr(api, token).create(_spec(region, image))
    assert err.value.message.startswith("Vultr ") and words in err.value.message
    assert err.value.exit_code == code and "\n" not in err.value.message
    assert api.instances == {}


def test_an_unreachable_api_is_one_sentence(api):
    vultr = _vultr(api)
    api.close()
    with pytest.raises(ProviderError, match="could not be reached to list its offers"):
        vultr.offer()
