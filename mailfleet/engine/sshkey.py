"""The private key a host is reached with, checked on this machine before connecting.

pyinfra loads the key inside a connection greenlet: a file that is not a key, or one with a
passphrase, ended there as a greenlet traceback followed by a misleading "no answer". Here it
is loaded the way pyinfra loads it (paramiko, the same key types) and refused in one sentence.
"""

from __future__ import annotations

from pathlib import Path

from paramiko import ECDSAKey, Ed25519Key, PasswordRequiredException, RSAKey, SSHException

from mailfleet.config import HostSettings
from mailfleet.errors import ConfigError

KEY_TYPES = (RSAKey, ECDSAKey, Ed25519Key)  # what pyinfra's ssh connector tries, in its order


def checked_key(host: HostSettings) -> Path | None:
    """The host's ssh_key as a path, after proving it is a private key usable without a
    passphrase (mailfleet runs unattended: it never asks for one); None when unset."""
    if not host.ssh_key:
        return None
    key = Path(host.ssh_key).expanduser()
    where = f"hosts {host.name!r}: ssh_key {host.ssh_key}"
    if not key.exists():
        raise ConfigError(f"{where} does not exist on this machine.")
    if not key.is_file():
        raise ConfigError(f"{where} is not a file.")
    for key_type in KEY_TYPES:
        try:
            key_type.from_private_key_file(str(key))
            return key
        except PasswordRequiredException:
            raise ConfigError(
                f"{where} needs a passphrase, which mailfleet cannot type.",
                hint="Give mailfleet a key without a passphrase, readable only by you "
                     "(ssh-keygen -t ed25519 -N '' -f FILE).",
            ) from None
        except OSError as err:
            raise ConfigError(f"{where} cannot be read ({err.strerror or err}).") from None
        except (SSHException, ValueError, TypeError):
            continue  # not this key type: try the next, as pyinfra does
    raise ConfigError(f"{where} is not a private key (an RSA, ECDSA or Ed25519 key, "
                      "as ssh-keygen writes it; not the .pub file).")
