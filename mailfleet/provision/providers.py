"""The provider module for a [hosts.provider] table, with its token.

`MAILFLEET_<PROVIDER>_API` (http://127.0.0.1:PORT) points a module at a local stand-in of
its API: the tests' fake servers. Only a loopback address is accepted there, so a stray
variable cannot send a token off this machine (it does send it, in plain HTTP, to whatever
listens on that port: a variable for tests, not for use)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from mailfleet.config import ProviderSettings
from mailfleet.errors import UsageError
from mailfleet.provision.base import Provider
from mailfleet.provision.tokens import api_token


def local_api(provider: str) -> tuple[int, str] | None:
    """(port, path) of the loopback API named by MAILFLEET_<PROVIDER>_API, if set."""
    variable = f"MAILFLEET_{provider.upper()}_API"
    value = os.environ.get(variable)
    if not value:
        return None
    url = urlsplit(value)
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme != "http" or url.hostname != "127.0.0.1" or not port:
        raise UsageError(f"{variable}={value!r}: only a stand-in API at http://127.0.0.1:PORT "
                         "may replace the provider's own.")
    return port, url.path.rstrip("/")


def provider_for(settings: ProviderSettings, host: str,
                 preinstalled: list[str] | None = None, log=print) -> Provider:
    """(`preinstalled` and `log` are the lab's: its image for plan "preinstalled", and where
    it tells of an image it builds.)"""
    if settings.provider == "lab":
        from mailfleet.provision.labhost import LabProvider
        return LabProvider(preinstalled or [], log)
    token = api_token(settings, host)
    local = local_api(settings.provider)
    if settings.provider == "hetzner":
        from mailfleet.provision.hetzner import ENDPOINT, Hetzner
        if local:
            return Hetzner(token, f"http://127.0.0.1:{local[0]}{local[1]}", poll_interval=0.05)
        return Hetzner(token, ENDPOINT)
    if settings.provider == "vultr":
        from mailfleet.provision.vultr import Vultr
        return Vultr(token, "127.0.0.1", local[0], secure=False) if local else Vultr(token)
    from mailfleet.provision.digitalocean import DigitalOcean
    return (DigitalOcean(token, "127.0.0.1", local[0], secure=False) if local
            else DigitalOcean(token))
