"""WireGuard settings, keys and configs, the network checks' parsing: pure logic, no hosts."""

from __future__ import annotations

import subprocess

import pytest

from mailfleet.config import ConfigError, parse
import mailfleet.services as services
from mailfleet.services import firewall, network, plan_host, ssh_vpn, sshd, vpn_keys, wireguard

BASE = """
[mail]
domain = "example.org"
hostname = "mail.example.org"

[features]
wireguard = true

[vpn]
keys_dir = "{keys}"
{vpn}

[[hosts]]
name = "mx1"
address = "203.0.113.10"
ipv4 = "203.0.113.10"

[[hosts]]
name = "mx2"
address = "mx2.example.org"
ipv6 = "2001:db8::2"
{hosts}
"""


def config(tmp_path, vpn: str = "", hosts: str = ""):
    return parse(BASE.format(keys=tmp_path / "keys", vpn=vpn, hosts=hosts), tmp_path / "m.toml")


def test_hosts_take_addresses_by_place_and_peers_keep_theirs(tmp_path):
    c = config(tmp_path, '[[vpn.peers]]\nname = "laptop"\naddress = "10.8.0.100"')
    assert [c.vpn_address(h) for h in c.hosts] == ["10.8.0.1", "10.8.0.2"]
    assert wireguard.endpoint(c, c.hosts[0]) == "203.0.113.10:51820"
    assert wireguard.endpoint(c, c.hosts[1]) == "[2001:db8::2]:51820"  # public IPv6 over the name


@pytest.mark.parametrize("vpn, hosts, message", [
    ('[[vpn.peers]]\nname = "laptop"\naddress = "10.8.0.2"', "",
     "the VPN address 10.8.0.2 is given to both host mx2 and peer laptop"),
    ('[[vpn.peers]]\nname = "laptop"\naddress = "10.9.0.5"', "",
     "the VPN address 10.9.0.5 of peer laptop is not a host address in vpn.network 10.8.0.0/24"),
    ('[[vpn.peers]]\nname = "mx1"\naddress = "10.8.0.50"', "", "vpn peer 'mx1' has the name of a host"),
    ('[[vpn.peers]]\nname = "laptop"\naddress = "10.8.0.50"\npublic_key = "abc"', "",
     "is not a WireGuard public key"),
    ('network = "10.8.0.1/24"', "", "is not an IPv4 network like 10.8.0.0/24"),
    ('network = "8.8.8.0/24"', "", "must be a private IPv4 network"),
    ("", 'vpn_address = "10.8.0.255"', "is not a host address in vpn.network"),
])
def test_bad_vpn_settings_are_one_sentence(tmp_path, vpn, hosts, message):
    with pytest.raises(ConfigError) as err:
        config(tmp_path, vpn, hosts)
    assert message in err.value.message, err.value.message
    assert "m.toml" in err.value.message


def test_the_openssl_snippet_derives_the_same_public_key_as_wireguard(tmp_path):
    private = vpn_keys.generate_private_key()
    key_file = tmp_path / "wg0.key"
    key_file.write_text(private + "\n")
    snippet = wireguard.PUBLIC_KEY.replace(wireguard.KEY, str(key_file))
    done = subprocess.run(["sh", "-c", snippet], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == vpn_keys.public_key_of(private)
    # and `wg pubkey`, where wireguard-tools is installed (it is on the lab machine)
    wg = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True)
    assert wg.returncode != 0 or wg.stdout.strip() == vpn_keys.public_key_of(private)


def test_host_config_names_the_other_hosts_with_endpoints_and_the_peers_without(tmp_path):
    c = config(tmp_path, '[[vpn.peers]]\nname = "laptop"\naddress = "10.8.0.100"')
    keys = {"mx1": vpn_keys.public_key_of(vpn_keys.generate_private_key()),
            "mx2": vpn_keys.public_key_of(vpn_keys.generate_private_key())}
    text = wireguard.interface_config(c, c.hosts[0], keys)
    assert "Address = 10.8.0.1/24\nListenPort = 51820\n" in text
    assert f"PostUp = wg set %i private-key {wireguard.KEY}" in text
    assert "PrivateKey" not in text  # the private key stays in its own file on the host
    assert f"PublicKey = {keys['mx2']}\nAllowedIPs = 10.8.0.2/32\nEndpoint = [2001:db8::2]:51820" in text
    assert keys["mx1"] not in text
    laptop = vpn_keys.peer_keys(c, c.vpn.peers[0], create=False)
    assert laptop[0] and (tmp_path / "keys/laptop.key").stat().st_mode & 0o777 == 0o600
    assert f"PublicKey = {laptop[1]}\nAllowedIPs = 10.8.0.100/32\n" in text
    assert text.count("Endpoint") == 1
    # same input, same file: a second deploy changes nothing
    assert wireguard.interface_config(c, c.hosts[0], keys) == text


def test_a_given_public_key_is_used_and_a_kept_key_that_does_not_match_is_not_handed_out(tmp_path):
    other = vpn_keys.public_key_of(vpn_keys.generate_private_key())
    c = config(tmp_path, f'[[vpn.peers]]\nname = "laptop"\naddress = "10.8.0.100"\n'
                         f'public_key = "{other}"')
    assert vpn_keys.peer_keys(c, c.vpn.peers[0], create=True) == (None, other)
    assert not (tmp_path / "keys/laptop.key").exists()


def test_firewall_keeps_ssh_public_until_the_vpn_path_is_proven(tmp_path):
    c = config(tmp_path)
    plan = plan_host(c, c.hosts[0])
    public = firewall.wanted_rules(c, plan, {22}, ssh_on_vpn=False)
    assert "allow 22/tcp" in public and "allow 51820/udp" in public
    closed = firewall.wanted_rules(c, plan, {22}, ssh_on_vpn=True)
    assert "allow 22/tcp" not in closed
    assert closed["allow in on wg0 to any port 22 proto tcp"] == "ssh over the VPN"
    assert "allow 25/tcp" in closed


def test_ssh_moves_onto_the_vpn_right_after_the_firewall():
    """The firewall must already let the tunnel in when sshd is told to listen only there."""
    order = services.SERVICES
    assert order.index(ssh_vpn.SERVICE) == order.index(firewall.SERVICE) + 1
    assert order.index(wireguard.SERVICE) < order.index(sshd.SERVICE) < order.index(firewall.SERVICE)
    assert ssh_vpn.SERVICE.deploy is ssh_vpn.restrict_ssh and ssh_vpn.SERVICE.checks is ssh_vpn.checks


def test_sshd_listen_addresses_from_sshd_t():
    text = "listenaddress 10.8.0.1:22\nlistenaddress 10.8.0.1:2222\nport 22\n"
    assert ssh_vpn.parse_listen(text) == ["10.8.0.1:22", "10.8.0.1:2222"]
    assert ssh_vpn.parse_listen("Bad configuration option\n") == []
    assert "user=root,host=203.0.113.1,addr=203.0.113.1" in ssh_vpn._LISTEN


def test_wireguard_status_parsing():
    text = ("unit active\nkind tun\n"
            "KEY1=\t(none)\t10.77.0.12:51820\t10.8.0.2/32\t1764170000\t100\t200\t25\n"
            "KEY2=\t(none)\t(none)\t10.8.0.100/32\t0\t0\t0\toff\nnow 1764170030\n")
    facts, handshakes = wireguard.parse_status(text)
    assert facts == {"unit": "active", "kind": "tun", "now": "1764170030"}
    assert handshakes == {"KEY1=": 1764170000, "KEY2=": 0}


NETWORK = """@@links
host0@if12        UP             7e:1f:aa:bb:cc:dd <BROADCAST,MULTICAST,UP,LOWER_UP>
wg0               UNKNOWN        <POINTOPOINT,NOARP,UP,LOWER_UP>
@@route4
default via 10.77.0.1 dev host0 onlink
@@route6
@@addr6
@@resolvers
10.77.0.13
@@name
mx1.example.org
@@lookup
203.0.113.10
"""


def test_network_checks_read_interfaces_routes_resolution_and_ipv6(tmp_path):
    c = config(tmp_path)
    mx1 = c.hosts[0]
    results = network.host_checks("mx1", mx1, network.parse(NETWORK), True, "wg0")
    by_name = {r.name: r for r in results}
    assert by_name["network interfaces"].status == "ok"
    assert by_name["network interfaces"].message == "host0 UP, wg0 UNKNOWN"
    assert by_name["default route"].message == "default via 10.77.0.1 dev host0 onlink"
    assert by_name["name resolution"].status == "ok"
    assert by_name["IPv6"].status == "ok" and "IPv4 only" in by_name["IPv6"].message

    wrong = network.parse(NETWORK.replace("203.0.113.10", "198.51.100.7"))
    result = {r.name: r for r in network.host_checks("mx1", mx1, wrong, True, None)}
    assert result["name resolution"].status == "fail"
    assert "resolves to 198.51.100.7, not 203.0.113.10" in result["name resolution"].message

    silent = network.parse(NETWORK.replace("@@lookup\n203.0.113.10\n", "@@lookup\n")
                           .replace("wg0               UNKNOWN", "wg0               DOWN"))
    result = {r.name: r for r in network.host_checks("mx1", mx1, silent, False, "wg0")}
    assert result["name resolution"].status == "warn"  # [dns] check = false: no DNS yet
    assert result["network interfaces"].status == "fail" and "wg0 DOWN" in result["network interfaces"].message

    v6 = network.parse(NETWORK.replace("@@route6\n", "@@route6\ndefault via fe80::1 dev host0\n")
                       .replace("@@addr6\n", "@@addr6\n  2001:db8::10/64\n"))
    result = {r.name: r for r in network.host_checks("mx1", mx1, v6, True, None)}
    assert result["IPv6"].status == "warn" and "2001:db8::10" in result["IPv6"].message
    mx2 = c.hosts[1]  # names 2001:db8::2, which the host does not have
    result = {r.name: r for r in network.host_checks("mx2", mx2, v6, True, None)}
    assert result["IPv6"].status == "fail"
