"""Checks of single values that several config sections share (names, addresses, keys).

A check raises ValueError with the reason; pydantic turns it into the one sentence the
operator reads (see load.py).
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict

LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
DOMAIN_RE = re.compile(rf"^(?=.{{1,253}}$){LABEL}(\.{LABEL})+$")
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
UNIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# a host name as ssh and DNS take it (labels of letters, digits, '_' and '-', no leading '-')
SSH_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
                         r"(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?$")


class Strict(BaseModel):
    """Every section: an unknown (misspelt) key is an error, and a loaded config is not
    changed by accident (model_copy makes a changed one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def domain_name(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if not DOMAIN_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid domain name (like example.org)")
    return value


def checked_user_name(value: str, reason: str) -> str:
    """A Unix user name other than root; `reason` finishes the sentence when it is not."""
    if value == "root" or not UNIX_USER_RE.fullmatch(value):
        raise ValueError(f"{value!r} {reason}")
    return value


def checked_ip(value: str | None, version: int) -> str | None:
    """An IPv4 or IPv6 address (as `version` says) in its normal form; None stays None."""
    if value is None:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv{version} address") from None
    if address.version != version:
        raise ValueError(f"{value!r} is not an IPv{version} address")
    return str(address)


def resolver_address(value: str) -> tuple[str, int]:
    """"IP" or "IP:PORT" ("[v6]:PORT" for IPv6) as (ip, port)."""
    host, port = value, 53
    match = re.fullmatch(r"\[(.+)\]:(\d+)|([^:]+):(\d+)", value)
    if match:
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not a resolver address (IP or IP:PORT)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r} has no valid port")
    return host, port


WG_KEY_RE = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")


def wireguard_key(value: str) -> str:
    value = value.strip()
    if not WG_KEY_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a WireGuard public key (44 characters of base64, "
                         "as `wg pubkey` prints it)")
    return value
