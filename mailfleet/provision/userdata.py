"""cloud-init user-data for a server mailfleet creates.

The server's SSH host key is made here, not on the server: cloud-init installs it at first
boot (`ssh_keys`), and mailfleet writes its public half into known_hosts before it ever
connects, so no first connection trusts an unknown key. The user-data is JSON after the
`#cloud-config` line (JSON is YAML that cloud-init reads), so every value is escaped by
`json.dumps`, never by hand.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mailfleet.config import DOMAIN_RE, HOST_NAME_RE

# a public key as an authorized_keys line holds it: type, base64, optional comment
PUBLIC_KEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|"
                           r"sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?$")


@dataclass(frozen=True)
class HostKey:
    """An Ed25519 SSH host key pair in OpenSSH's formats."""

    private: str  # "-----BEGIN OPENSSH PRIVATE KEY-----..." (a secret: never printed)
    public: str  # "ssh-ed25519 AAAA..."

    @classmethod
    def generate(cls) -> HostKey:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
        return cls(private, public)

    def __repr__(self) -> str:  # (a traceback or a debug print shows no private key)
        return f"HostKey(public={self.public!r})"


def checked_public_key(value: str, what: str) -> str:
    """One authorized_keys line (no options, no second line), or ValueError naming `what`."""
    value = value.strip()
    if not PUBLIC_KEY_RE.fullmatch(value):
        raise ValueError(f"{what} is not one SSH public key line (like 'ssh-ed25519 AAAA... "
                         "comment')")
    return value


def user_data(name: str, fqdn: str, deploy_key: str, host_key: HostKey) -> str:
    """The #cloud-config a provider (or the lab's NoCloud seed) hands to the new server:
    root logs in with the deploy key only, the host key is mailfleet's, and cloud-init makes
    no default user (mailfleet's admin user takes uid 1000 later)."""
    if not HOST_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid host name")
    if not DOMAIN_RE.fullmatch(fqdn):
        raise ValueError(f"{fqdn!r} is not a fully qualified host name")
    config = {
        "hostname": name,
        "fqdn": fqdn,
        "prefer_fqdn_over_hostname": False,  # (deploy sets the name it wants)
        "users": [],
        "disable_root": False,  # (Debian's default would refuse root's key)
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_keys": {"ed25519_private": host_key.private, "ed25519_public": host_key.public},
        "ssh_authorized_keys": [checked_public_key(deploy_key, "the deploy key")],
    }
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def known_host(address: str, port: int) -> str:
    """An address as ssh looks it up in known_hosts (`[address]:port` when not port 22)."""
    ip = ipaddress.ip_address(address)  # ValueError for a name: only addresses here
    return ip.compressed if port == 22 else f"[{ip.compressed}]:{port}"


def known_hosts(addresses: Iterable[str], port: int, public_key: str) -> str:
    """known_hosts lines admitting the host key `public_key` at each address."""
    key = checked_public_key(public_key, "the host key")
    return "".join(f"{known_host(address, port)} {key}\n" for address in addresses)


def nocloud_seed(instance_id: str, name: str, data: str) -> dict[str, str]:
    """The files of cloud-init's NoCloud seed directory (/var/lib/cloud/seed/nocloud/) for a
    lab node: the same user-data a provider gets; the network is set up from outside."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", instance_id):
        raise ValueError(f"{instance_id!r} is not an instance id")
    meta = {"instance-id": instance_id, "local-hostname": name}
    return {"meta-data": json.dumps(meta) + "\n", "user-data": data,
            "network-config": json.dumps({"version": 1, "config": "disabled"}) + "\n"}
