"""The user-data a new server boots with: mailfleet's host key and deploy key, every value
escaped by JSON (cloud-init reads it as YAML), hostile values refused."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from mailfleet.provision.userdata import (HostKey, checked_public_key, known_hosts,
                                          nocloud_seed, user_data)

DEPLOY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDYg/Ph2QQ9PPJo1WiE49otTSI0PnYZDUexp/sB4MGro deploy"


def test_the_user_data_is_cloud_config_with_the_host_key_and_the_deploy_key(tmp_path):
    key = HostKey.generate()
    text = user_data("mx1", "mx1.example.org", DEPLOY, key)
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)  # as cloud-init reads it
    assert config["ssh_keys"] == {"ed25519_private": key.private, "ed25519_public": key.public}
    assert config["ssh_authorized_keys"] == [DEPLOY]
    assert config["disable_root"] is False and config["ssh_pwauth"] is False
    assert config["users"] == [] and config["hostname"] == "mx1"
    # OpenSSH's own tool reads the private key and derives the same public key from it
    private = tmp_path / "key"
    private.write_text(key.private)
    private.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(private)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert derived[:2] == key.public.split()[:2]
    assert key.private not in repr(key) and "PRIVATE" not in repr(key)


@pytest.mark.parametrize("name, fqdn, deploy", [
    ("mx1\nssh_pwauth: true", "mx1.example.org", DEPLOY),
    ("mx1", "mx1.example.org\"\nruncmd: [reboot]", DEPLOY),
    ("mx1", "mx1.example.org", DEPLOY + "\nssh-ed25519 AAAAC3Nza other"),
    ("mx1", "mx1.example.org", 'command="/bin/sh" ' + DEPLOY),
    ("mx1", "mx1.example.org", "not a key"),
])
def test_hostile_or_malformed_values_are_refused(name, fqdn, deploy):
    with pytest.raises(ValueError):
        user_data(name, fqdn, deploy, HostKey.generate())


def test_a_deploy_key_is_one_line_of_a_known_type():
    assert checked_public_key(f"  {DEPLOY}\n", "k") == DEPLOY
    with pytest.raises(ValueError, match="the deploy key is not one SSH public key line"):
        checked_public_key("ssh-dss AAAAB3NzaC1kc3M=", "the deploy key")


def test_known_hosts_names_each_address_as_ssh_looks_it_up():
    key = HostKey.generate()
    assert known_hosts(["203.0.113.7", "2001:db8:0::1"], 22, key.public) == (
        f"203.0.113.7 {key.public}\n2001:db8::1 {key.public}\n")
    assert known_hosts(["127.0.0.1"], 2201, key.public) == f"[127.0.0.1]:2201 {key.public}\n"
    with pytest.raises(ValueError):
        known_hosts(["mx1.example.org"], 22, key.public)


def test_the_nocloud_seed_holds_the_same_user_data_and_leaves_the_network_alone():
    data = user_data("mx1", "mx1.example.org", DEPLOY, HostKey.generate())
    seed = nocloud_seed("mailfleet-lab-mx1-3f2a", "mx1", data)
    assert set(seed) == {"meta-data", "user-data", "network-config"}
    assert seed["user-data"] == data
    assert yaml.safe_load(seed["meta-data"]) == {"instance-id": "mailfleet-lab-mx1-3f2a",
                                                 "local-hostname": "mx1"}
    assert json.loads(seed["network-config"])["config"] == "disabled"
    with pytest.raises(ValueError):
        nocloud_seed("id with space", "mx1", data)
