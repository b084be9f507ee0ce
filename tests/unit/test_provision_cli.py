"""`mailfleet provision` and `destroy` against the local stand-ins of the providers' APIs
(fake_*.py): --dry-run and --list send read requests only; bad tokens, token files others
can read and tokens written into mailfleet.toml are refused with one sentence and exit 2;
`destroy` asks, and deletes the entry only after the provider did; and `provision` saves
the address and the host key before anything connects to the new server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fake_digitalocean
import fake_hetzner
import fake_vultr
import pytest

from mailfleet.config import ConfigError, load, parse
from mailfleet.provision import lifecycle
from mailfleet.provision.hetzner import Hetzner

BASE = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n'
FAKES = {"hetzner": (fake_hetzner.FakeHetzner, "fsn1", "cx22", "/v1"),
         "vultr": (fake_vultr.FakeVultr, "fra", "vc2-2c-4gb", ""),
         "digitalocean": (fake_digitalocean.FakeDigitalOcean, "fra1", "s-2vcpu-4gb", "")}
VARIABLES = {"hetzner": "HCLOUD_TOKEN", "vultr": "VULTR_API_KEY",
             "digitalocean": "DIGITALOCEAN_TOKEN"}


def _host(provider: str, region: str, plan: str, extra: str = "") -> str:
    return (f'[[hosts]]\nname = "mx1"\nfqdn = "mx1.example.org"\n\n[hosts.provider]\n'
            f'provider = "{provider}"\nregion = "{region}"\nplan = "{plan}"\n{extra}')


def mailfleet(*args: str, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES.values()}
    return subprocess.run([sys.executable, "-m", "mailfleet", "-c", str(config), *args],
                          capture_output=True, text=True, env={**clean, **env},
                          stdin=subprocess.DEVNULL, timeout=60)


@pytest.fixture(params=list(FAKES))
def api(request, tmp_path):
    fake_class, region, plan, path = FAKES[request.param]
    fake = fake_class()
    config = tmp_path / "mailfleet.toml"
    config.write_text(BASE + _host(request.param, region, plan))
    env = {f"MAILFLEET_{request.param.upper()}_API": f"http://127.0.0.1:{fake.port}{path}",
           VARIABLES[request.param]: fake.token}
    yield request.param, fake, config, env
    fake.close()


def test_dry_run_and_list_send_read_requests_only(api):
    name, fake, config, env = api
    before = config.read_text()
    dry = mailfleet("provision", "mx1", "--dry-run", "--json", config=config, env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["exists"] is False and plan["would_create"]["name"] == "mx1.example.org"
    assert "a month" in plan["would_create"]["plan"]  # the price, as the API says it
    listed = mailfleet("provision", "--list", name, config=config, env=env)
    assert listed.returncode == 0, listed.stderr
    assert FAKES[name][1] in listed.stdout and "debian-13" in listed.stdout
    assert fake.requests and {method for method, _, _ in fake.requests} == {"GET"}
    assert config.read_text() == before


def test_a_refused_token_is_one_sentence_and_exit_2(api):
    name, fake, config, env = api
    env = {**env, VARIABLES[name]: "wrong-token"}
    result = mailfleet("provision", "mx1", "--dry-run", config=config, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "refused" in result.stderr
    assert VARIABLES[name] in result.stderr and "Traceback" not in result.stderr


def test_without_a_token_nothing_is_asked(api):
    name, fake, config, env = api
    env = {k: v for k, v in env.items() if k != VARIABLES[name]}
    result = mailfleet("provision", "mx1", "--dry-run", config=config, env=env)
    assert result.returncode == 2
    assert f"No API token for {name} (host mx1): {VARIABLES[name]} is not set" in result.stderr
    assert fake.requests == []


def test_destroy_asks_and_deletes_the_entry_only_after_the_provider(api, tmp_path):
    name, fake, config, env = api
    address, server_id = _made_server(name, fake)
    config.write_text(config.read_text().replace(
        'fqdn = "mx1.example.org"\n',
        f'fqdn = "mx1.example.org"\naddress = "{address}"\nssh_known_hosts = "{tmp_path}/kh"\n'))
    (tmp_path / "kh").write_text(f"{address} ssh-ed25519 AAAA\nother ssh-ed25519 BBBB\n")
    # a server carrying the label that this config did not make (another config's mx1 in
    # the same account) is never deleted
    foreign = mailfleet("destroy", "mx1", "--yes", config=config, env=env)
    assert foreign.returncode == 1 and "was not made by this config" in foreign.stderr
    config.write_text(config.read_text() + f'server_id = "{server_id}"\n')
    unasked = mailfleet("destroy", "mx1", config=config, env=env)
    assert unasked.returncode == 2 and "no terminal to ask" in unasked.stderr
    assert not any(method == "DELETE" for method, _, _ in fake.requests)
    done = mailfleet("destroy", "mx1", "--yes", config=config, env=env)
    assert done.returncode == 0, done.stderr
    assert any(method == "DELETE" for method, _, _ in fake.requests)
    assert "mx1" not in config.read_text() and load(config).hosts == []
    assert (tmp_path / "kh").read_text() == "other ssh-ed25519 BBBB\n"


def test_destroy_refuses_before_deleting_when_the_rest_would_not_be_a_config(tmp_path):
    fake = fake_hetzner.FakeHetzner()
    try:
        address, server_id = _made_server("hetzner", fake)
        members = "".join(f'[[hosts]]\nname = "db{i}"\naddress = "192.0.2.{i}"\n'
                          for i in (2, 3))
        config = tmp_path / "mailfleet.toml"
        config.write_text(
            BASE + '[features]\nwireguard = true\n[cluster]\nenabled = true\n'
            + _host("hetzner", "fsn1", "cx22", f'server_id = "{server_id}"\n').replace(
                'fqdn = "mx1.example.org"\n', f'fqdn = "mx1.example.org"\naddress = "{address}"\n')
            + members)
        env = {"MAILFLEET_HETZNER_API": f"http://127.0.0.1:{fake.port}/v1",
               "HCLOUD_TOKEN": fake.token}
        before = config.read_text()
        refused = mailfleet("destroy", "mx1", "--yes", config=config, env=env)
        assert refused.returncode == 2, refused.stderr
        assert "Removing host mx1 would leave a config mailfleet refuses" in refused.stderr
        assert "needs 3 or 5 hosts with the db role" in refused.stderr
        assert not any(method == "DELETE" for method, _, _ in fake.requests)
        assert config.read_text() == before
        # without the cluster: gone, and the VPN addresses of the hosts after it stay theirs
        config.write_text(before.replace("[cluster]\nenabled = true\n", ""))
        done = mailfleet("destroy", "mx1", "--yes", config=config, env=env)
        assert done.returncode == 0, done.stderr
        assert [(h.name, h.vpn_address) for h in load(config).hosts] == [
            ("db2", "10.8.0.2"), ("db3", "10.8.0.3")]
    finally:
        fake.close()


def _made_server(name: str, fake) -> tuple[str, str]:
    """Create mx1 at the fake through the module itself; its IPv4 address and id."""
    from mailfleet.provision.base import ServerSpec
    from mailfleet.provision.providers import provider_for
    from mailfleet.config import ProviderSettings
    os.environ[f"MAILFLEET_{name.upper()}_API"] = f"http://127.0.0.1:{fake.port}{FAKES[name][3]}"
    os.environ[VARIABLES[name]] = fake.token
    try:
        provider = provider_for(ProviderSettings(provider=name, region=FAKES[name][1],
                                                 plan=FAKES[name][2]), "mx1")
        spec = ServerSpec("mx1", "mx1.example.org", FAKES[name][1], FAKES[name][2], "debian-13",
                          "#cloud-config\n{}\n")
        from mailfleet.provision.base import wait_running
        made = wait_running(provider, provider.create(spec), interval=0.01)
        return made.ipv4, made.id
    finally:
        del os.environ[f"MAILFLEET_{name.upper()}_API"], os.environ[VARIABLES[name]]


def test_a_token_in_the_config_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as refused:
        parse(BASE + _host("vultr", "fra", "vc2-2c-4gb", 'api_key = "abc"\n'), "site.toml")
    message = refused.value.message
    assert message.startswith("site.toml, line 8: hosts[0].provider: 'api_key' does not belong "
                              "in mailfleet.toml"), message
    assert "VULTR_API_KEY" in message and "token_file" in message


@pytest.mark.parametrize("table, words", [
    ('[[hosts]]\nname = "mx1"\n', "host 'mx1' has no address: give the address"),
    (_host("hetzner", "lab", "cx22"), "provider 'hetzner' needs a region"),
    (_host("lab", "lab", "cx22"), 'the lab provider has the plans "bare"'),
    (_host("vultr", "fra", "vc2 2c"), "is not a region or plan name"),
    (_host("hetzner", "fsn1", "cx22", 'image = "debian-11"\n'), "debian-12"),
])
def test_bad_provider_tables_are_one_sentence(table, words):
    with pytest.raises(ConfigError) as refused:
        parse(BASE + table, "site.toml")
    assert words in refused.value.message, refused.value.message


def test_a_host_without_its_server_stops_other_commands(tmp_path):
    config = tmp_path / "mailfleet.toml"
    config.write_text(BASE + _host("hetzner", "fsn1", "cx22"))
    result = mailfleet("check", config=config, env={})
    assert result.returncode == 2
    assert "Host mx1 in" in result.stderr and "has no server yet" in result.stderr
    assert "mailfleet provision mx1" in result.stderr


def test_a_token_file_others_can_read_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text(f"{fake_hetzner.TOKEN}\n")
    token.chmod(0o644)
    config = tmp_path / "mailfleet.toml"
    config.write_text(BASE + _host("hetzner", "fsn1", "cx22", f'token_file = "{token}"\n'))
    result = mailfleet("provision", "mx1", "--dry-run", config=config, env={})
    assert result.returncode == 2 and "can be read by others (mode 0644)" in result.stderr
    fake = fake_hetzner.FakeHetzner()
    try:
        token.chmod(0o600)
        env = {"MAILFLEET_HETZNER_API": f"http://127.0.0.1:{fake.port}/v1"}
        result = mailfleet("provision", "mx1", "--dry-run", config=config, env=env)
        assert result.returncode == 0, result.stderr
    finally:
        fake.close()


def test_a_stand_in_api_must_be_on_loopback(tmp_path):
    config = tmp_path / "mailfleet.toml"
    config.write_text(BASE + _host("hetzner", "fsn1", "cx22"))
    env = {"HCLOUD_TOKEN": "x", "MAILFLEET_HETZNER_API": "http://192.0.2.1:80/v1"}
    result = mailfleet("provision", "mx1", "--dry-run", config=config, env=env)
    assert result.returncode == 2 and "only a stand-in API at http://127.0.0.1" in result.stderr


def _keyed_config(tmp_path: Path) -> Path:
    """A Hetzner host with a deploy key of its own and known_hosts in `tmp_path`."""
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "mailfleet.toml"
    config.write_text(BASE + _host("hetzner", "fsn1", "cx22").replace(
        'fqdn = "mx1.example.org"\n',
        f'fqdn = "mx1.example.org"\nssh_key = "{key}"\nssh_known_hosts = "{tmp_path}/kh"\n'))
    return config


def test_address_and_host_key_are_saved_before_the_first_connection(tmp_path, monkeypatch):
    """The order that keeps a crash from paying for a server mailfleet cannot verify."""
    fake = fake_hetzner.FakeHetzner()
    config = _keyed_config(tmp_path)
    seen = {}

    def first_login(host, server):  # (no SSH to the fake's documentation addresses)
        seen["host"] = host
        seen["config"] = load(config).hosts[0]
        seen["known"] = (tmp_path / "kh").read_text()
        seen["reverse"] = dict(fake.servers[int(server.id)]["public_net"]["ipv4"].items())
        return "done"

    monkeypatch.setattr(lifecycle, "first_login", first_login)
    try:
        provider = Hetzner(fake.token, fake.endpoint, poll_interval=0.01)
        loaded = load(config)
        outcome = lifecycle.provision(config, loaded, loaded.hosts[0], provider, log=lambda m: None)
        assert outcome.created and outcome.cloud_init == "done"
        ipv4 = outcome.server.ipv4
        assert seen["config"].address == ipv4 and seen["host"].address == ipv4
        assert seen["config"].ipv6 == outcome.server.ipv6
        line = seen["known"].strip()
        sent = fake.user_data[int(outcome.server.id)]
        assert line.startswith(f"{ipv4} ssh-ed25519 ") and line.split()[2] in sent
        recorded = seen["config"].provider
        assert recorded.server_id == outcome.server.id and recorded.host_key in line
        assert seen["reverse"]["dns_ptr"] == "mx1.example.org"
        # a second run finds the server by its label and makes none
        again = lifecycle.provision(config, load(config), load(config).hosts[0], provider,
                                    log=lambda m: None)
        assert not again.created and len(fake.servers) == 1
    finally:
        fake.close()


def test_a_run_cut_short_after_create_is_finished_by_the_next(tmp_path, monkeypatch):
    fake = fake_hetzner.FakeHetzner()
    config = _keyed_config(tmp_path)
    real_wait = lifecycle.wait_running

    def cut_short(provider, server):
        raise lifecycle.ProviderError(f"{provider.name}: server mx1 ({server.id}) is still "
                                      "'initializing' after 600 s.")

    monkeypatch.setattr(lifecycle, "first_login", lambda host, server: "done")
    try:
        provider = Hetzner(fake.token, fake.endpoint, poll_interval=0.01)
        monkeypatch.setattr(lifecycle, "wait_running", cut_short)
        with pytest.raises(lifecycle.ProviderError) as stopped:
            lifecycle.provision(config, load(config), load(config).hosts[0], provider,
                                log=lambda m: None)
        (number,) = fake.servers
        assert f"server {number} exists at Hetzner Cloud" in stopped.value.message
        assert "provision mx1` again finishes it" in stopped.value.hint
        saved = load(config).hosts[0]
        assert saved.provider.server_id == str(number) and saved.provider.host_key
        assert not saved.address  # no address yet: nothing connected to it
        monkeypatch.setattr(lifecycle, "wait_running", real_wait)
        done = lifecycle.provision(config, load(config), load(config).hosts[0], provider,
                                   log=lambda m: None)
        assert not done.created and list(fake.servers) == [number]
        assert load(config).hosts[0].address == done.server.ipv4
        assert saved.provider.host_key in (tmp_path / "kh").read_text()
    finally:
        fake.close()
