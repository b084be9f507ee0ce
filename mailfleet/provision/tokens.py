"""The provider's API token: from its environment variable, else from the file named by
[hosts.provider] token_file, which only its owner may read. Never from mailfleet.toml."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mailfleet.config import TOKEN_VARIABLES, ProviderSettings
from mailfleet.errors import ConfigError


def api_token(settings: ProviderSettings, host: str) -> str:
    variable = TOKEN_VARIABLES[settings.provider]
    value = os.environ.get(variable, "").strip()
    if value:
        return value
    if settings.token_file is None:
        raise ConfigError(f"No API token for {settings.provider} (host {host}): {variable} is "
                          "not set and [hosts.provider] names no token_file.",
                          hint=f"export {variable}=..., or put the token in a file with mode "
                               "0600 and name it in token_file.")
    path = Path(settings.token_file).expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"Cannot read the token_file {path} of host {host}: {reason}.") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"The token_file {path} of host {host} can be read by others (mode "
                          f"{stat.S_IMODE(mode):04o}): an API token can create and delete "
                          "servers on your bill.", hint=f"chmod 600 {path}")
    if not text or any(c.isspace() for c in text):
        raise ConfigError(f"The token_file {path} of host {host} does not hold one token "
                          "(one line, no spaces).")
    return text
