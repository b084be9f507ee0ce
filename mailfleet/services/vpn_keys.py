"""The WireGuard keys kept on the operator's machine, in `[vpn] keys_dir`.

The hosts' public keys (copied at each deploy, so `mailfleet vpn client` can write a config
while the VPN is down) and the key pairs of [[vpn.peers]] without a public_key (made here,
mode 0600, never sent anywhere but into that peer's client config). Used by the tunnel's
deploy and check (services/wireguard.py) and by `mailfleet vpn` (cli/vpn.py); it touches no
host.
"""

from __future__ import annotations

import base64
from pathlib import Path

from mailfleet.config import Config, VpnPeer
from mailfleet.errors import ConfigError


def keys_dir(config: Config) -> Path:
    return Path(config.vpn.keys_dir).expanduser()


def remember_host_key(config: Config, fqdn: str, key: str) -> None:
    """Kept on this machine so `vpn client` can write a config while the VPN is down."""
    path = keys_dir(config) / "hosts" / f"{fqdn}.pub"
    if not path.exists() or path.read_text().strip() != key:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key + "\n")


def known_host_key(config: Config, fqdn: str) -> str | None:
    path = keys_dir(config) / "hosts" / f"{fqdn}.pub"
    return path.read_text().strip() if path.exists() else None


def generate_private_key() -> str:
    # (cryptography is imported only where a key is made or read: most commands need none)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def public_key_of(private_key: str) -> str:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_key))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def peer_keys(config: Config, peer: VpnPeer, create: bool) -> tuple[str | None, str | None]:
    """(private key or None, public key) of a peer: its public_key from the config, else the
    key pair mailfleet keeps for it on this machine (made when `create`)."""
    path = keys_dir(config) / f"{peer.name}.key"
    private = None
    if path.exists():
        private = path.read_text().strip()
    elif create and peer.public_key is None:
        private = generate_private_key()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.touch(mode=0o600)
        path.write_text(private + "\n")
    try:
        derived = public_key_of(private) if private else None
    except ValueError:
        raise ConfigError(f"{path} does not hold a WireGuard private key.") from None
    if peer.public_key:
        return (private if derived == peer.public_key else None), peer.public_key
    return private, derived
