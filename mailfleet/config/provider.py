"""[hosts.provider]: where `mailfleet provision` creates a host's server. The API token
never lives in mailfleet.toml (a config file is shared, backed up and committed): it comes
from the provider's environment variable or from a file of its own."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mailfleet.config.values import Strict

PROVIDERS = ("lab", "hetzner", "vultr", "digitalocean")
# the variable each provider's own tools read the token from (hcloud CLI, Vultr CLI, doctl)
TOKEN_VARIABLES = {"hetzner": "HCLOUD_TOKEN", "vultr": "VULTR_API_KEY",
                   "digitalocean": "DIGITALOCEAN_TOKEN"}
# a region or plan as providers spell them: fsn1, fra, ams3, cx22, vc2-2c-4gb, s-2vcpu-4gb
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TOKEN_KEYS = {"token", "api_token", "api_key", "apikey", "key", "secret", "password"}


class ProviderSettings(Strict):
    """The server of one [[hosts]] entry, as `mailfleet provision NAME` creates it."""

    provider: Literal["lab", "hetzner", "vultr", "digitalocean"] = Field(
        description="Where the server is made; `lab` boots a lab node with cloud-init.")
    region: str = Field("lab", description="The provider's region or location (fsn1, fra, "
                                           "ams3; `provision --list PROVIDER` shows them).")
    plan: str = Field(description="The provider's server type or plan (cx22, vc2-2c-4gb, "
                                  "s-2vcpu-4gb); lab: `bare` or `preinstalled`.")
    image: Literal["debian-12", "debian-13"] = "debian-13"
    ipv6: bool = Field(True, description="Give the server an IPv6 address (AAAA, PTR).")
    private_network: bool = Field(False, description="Attach the provider's private network "
                                                     "where one exists (Vultr VPC).")
    backups: bool = Field(False, description="The provider's own backups (they cost extra).")
    server_id: str | None = Field(
        None, description="Written by `provision`: the provider's id of the server it made "
                          "(`destroy` deletes that server and no other).")
    host_key: str | None = Field(
        None, description="Written by `provision`: the public half of the SSH host key it "
                          "made for the server (the first login is checked against it).")
    token_file: str | None = Field(
        None, description="A file holding the API token, readable by its owner only; default: "
                          "the environment (HCLOUD_TOKEN, VULTR_API_KEY, DIGITALOCEAN_TOKEN).")

    @model_validator(mode="before")
    @classmethod
    def _no_token_here(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if str(key).lower() in TOKEN_KEYS:
                    raise ValueError(
                        f"{key!r} does not belong in mailfleet.toml: an API token in a config "
                        "file travels with every copy of it; put it in the environment ("
                        + ", ".join(TOKEN_VARIABLES.values()) + ") or in a file of its own "
                        "with mode 0600, named by token_file")
        return data

    @field_validator("region", "plan")
    @classmethod
    def _check_slug(cls, value: str) -> str:
        if not SLUG_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a region or plan name as providers write them "
                             "(lower case letters, digits, '.', '_' and '-')")
        return value

    @field_validator("server_id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
            raise ValueError(f"{value!r} is not a server id as providers give them")
        return value

    @field_validator("host_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"ssh-ed25519 [A-Za-z0-9+/]{68}", value):
            raise ValueError("host_key is not the Ed25519 public key `provision` writes")
        return value

    @field_validator("token_file")
    @classmethod
    def _check_file(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError(f"{value!r} is not a usable file name")
        return value

    @model_validator(mode="after")
    def _lab_plans(self) -> ProviderSettings:
        if self.provider == "lab" and self.plan not in ("bare", "preinstalled"):
            raise ValueError(f'plan {self.plan!r}: the lab provider has the plans "bare" (a '
                             'fresh Debian, as a provider hands it over) and "preinstalled" '
                             "(the mail system's packages already in the image)")
        if self.provider != "lab" and self.region == "lab":
            raise ValueError(f"provider {self.provider!r} needs a region (`mailfleet provision "
                             f"--list {self.provider}` shows them)")
        return self
