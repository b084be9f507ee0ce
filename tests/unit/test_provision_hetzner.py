"""The Hetzner Cloud module against a local stand-in for its API (fake_hetzner.py): what
it asks, what it sends (the user-data, the label), and its errors as one sentence."""

from __future__ import annotations

import pytest
from fake_hetzner import SOLD_OUT, TOKEN, FakeHetzner

from mailfleet.provision.base import LABEL, ProviderError, ServerSpec, wait_running
from mailfleet.provision.hetzner import Hetzner
from mailfleet.provision.userdata import HostKey, user_data

DEPLOY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDYg/Ph2QQ9PPJo1WiE49otTSI0PnYZDUexp/sB4MGro deploy"


@pytest.fixture
def api():
    fake = FakeHetzner()
    yield fake
    fake.close()


def _spec(region: str = "fsn1", plan: str = "cx22") -> ServerSpec:
    return ServerSpec(name="mx1", fqdn="mx1.example.org", region=region, plan=plan,
                      image="debian-13", backups=True,
                      user_data=user_data("mx1", "mx1.example.org", DEPLOY, HostKey.generate()))


def test_the_offer_is_read_with_get_requests_only(api):
    offer = Hetzner(TOKEN, api.endpoint).offer()
    assert offer.regions == {"fsn1": "Falkenstein, DE", SOLD_OUT: "Nuremberg, DE"}
    assert offer.plans == {"cx22": "2 cores, 4 GB, 40 GB disk, from 4.51 a month"}
    assert offer.images == ("debian-12", "debian-13")
    assert {method for method, _, _ in api.requests} == {"GET"}


def test_a_server_is_made_once_with_the_user_data_and_its_label(api):
    hetzner = Hetzner(TOKEN, api.endpoint, poll_interval=0.01)
    spec = _spec()
    assert hetzner.find("mx1") is None
    server = hetzner.create(spec)
    assert not server.running and server.name == "mx1"
    (number,) = api.servers
    assert api.user_data[number] == spec.user_data
    assert api.servers[number]["labels"] == {LABEL: "mx1"}
    assert api.servers[number]["backup_window"]  # backups on
    running = wait_running(hetzner, server, timeout=5, interval=0.01)
    assert running.running and running.ipv4 == f"203.0.113.{number - 90}"
    assert running.ipv6 == f"2001:db8:{number:x}::1"  # the /64's first address
    assert hetzner.find("mx1") == running  # a second provision finds it
    hetzner.set_reverse_dns(running, "mx1.example.org")
    net = api.servers[number]["public_net"]
    assert net["ipv4"]["dns_ptr"] == "mx1.example.org"
    assert net["ipv6"]["dns_ptr"] == [{"ip": running.ipv6, "dns_ptr": "mx1.example.org"}]
    hetzner.destroy(running)
    assert api.servers == {} and hetzner.find("mx1") is None


def test_two_servers_with_one_label_are_refused(api):
    hetzner = Hetzner(TOKEN, api.endpoint, poll_interval=0.01)
    hetzner.create(_spec())
    hetzner.create(_spec())
    with pytest.raises(ProviderError, match="2 servers labelled mailfleet-host=mx1"):
        hetzner.find("mx1")


@pytest.mark.parametrize("token, region, plan, words, code", [
    ("wrong", "fsn1", "cx22", "refused to create server mx1 (cx22 in fsn1): unable to "
                              "authenticate (unauthorized).", 2),
    (TOKEN, SOLD_OUT, "cx22", "error during placement (resource_unavailable).", 1),
    (TOKEN, "fsn1", "cx99", "server type cx99 not found (invalid_input).", 2),
])
def test_an_api_error_is_one_sentence_with_its_exit_code(api, token, region, plan, words, code):
    with pytest.raises(ProviderError) as err:
        Hetzner(token, api.endpoint).create(_spec(region, plan))
    assert err.value.message.startswith("Hetzner Cloud ") and words in err.value.message
    assert err.value.exit_code == code and "\n" not in err.value.message
    assert api.servers == {}


def test_an_unreachable_api_is_one_sentence(api):
    endpoint = api.endpoint
    api.close()
    with pytest.raises(ProviderError, match="could not be reached to list its offers"):
        Hetzner(TOKEN, endpoint).offer()
