"""What every provider module offers (one module a provider), and the errors they raise.

A module turns its provider's API into these few calls; `mailfleet provision` (being built)
drives them: find the server by its mailfleet label, create it with the user-data, wait
until the provider calls it running, set its reverse DNS, destroy it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from mailfleet.errors import MailfleetError

IMAGES = ("debian-12", "debian-13")
LABEL = "mailfleet-host"  # the label (tag) naming the [[hosts]] entry a server was made for


class ProviderError(MailfleetError):
    """The provider's API refused or failed: one sentence, exit 1 (2 for a bad token or a
    wrong setting, which the operator fixes in the config or the environment)."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message, hint)
        self.exit_code = exit_code


def refused(provider: str, what: str, reason: str, setting: bool,
            bad_token: str | None = None) -> ProviderError:
    """The API's refusal as one sentence ("PROVIDER refused to WHAT: REASON."): exit 2 when
    the operator fixes it in the config (`setting`), a hint naming `bad_token`'s variable
    when the token was refused."""
    hint = (f"check the API token ({bad_token} or the provider's token_file)"
            if bad_token else None)
    return ProviderError(f"{provider} refused to {what}: {reason}.", hint, 2 if setting else 1)


def unreachable(provider: str, what: str, err: Exception) -> ProviderError:
    return ProviderError(f"{provider} could not be reached to {what}: {type(err).__name__}.")


@dataclass(frozen=True)
class ServerSpec:
    """What to create for one [[hosts]] entry."""

    name: str  # the [[hosts]] name, also the server's label
    fqdn: str
    region: str
    plan: str
    image: str  # one of IMAGES
    user_data: str = field(repr=False)  # (holds the host's private key)
    ipv6: bool = True
    backups: bool = False
    private_network: bool = False  # Vultr's VPC; elsewhere mailfleet's WireGuard is the one


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    status: str  # the provider's word; `running` tells whether it is up
    running: bool
    ipv4: str | None = None
    ipv6: str | None = None  # the host's own address (not its network)
    # where SSH reaches it, when not at ipv4 (or ipv6) port 22: a lab node's loopback forward
    ssh_address: str | None = None
    ssh_port: int = 22

    @property
    def login_address(self) -> str | None:
        return self.ssh_address or self.ipv4 or self.ipv6


@dataclass(frozen=True)
class Offer:
    """What a provider offers: `provision --list`, and the dry run's prices."""

    regions: dict[str, str] = field(default_factory=dict)  # name: where
    plans: dict[str, str] = field(default_factory=dict)  # name: cores, memory, disk, price
    images: tuple[str, ...] = ()  # of IMAGES, those it has


class Provider(Protocol):
    name: str

    def offer(self) -> Offer: ...

    def find(self, name: str) -> Server | None: ...

    def create(self, spec: ServerSpec) -> Server: ...

    def get(self, server_id: str) -> Server: ...

    def set_reverse_dns(self, server: Server, fqdn: str) -> None: ...

    def destroy(self, server: Server) -> None: ...


def wait_running(provider: Provider, server: Server, timeout: float = 600,
                 interval: float = 3) -> Server:
    """The server once the provider calls it running, or ProviderError after `timeout`."""
    deadline = time.monotonic() + timeout
    while not server.running:
        if time.monotonic() > deadline:
            raise ProviderError(f"{provider.name}: server {server.name} ({server.id}) is still "
                                f"{server.status!r} after {timeout:.0f} s.")
        time.sleep(interval)
        server = provider.get(server.id)
    return server
