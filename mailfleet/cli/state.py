"""Options shared by every command (-c, -v), kept on the Typer context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from mailfleet import config as config_mod
from mailfleet.errors import ConfigError


@dataclass
class Globals:
    config_path: Path
    verbose: bool

    def load(self) -> config_mod.Config:
        """The config; whatever the OS or the decoder says about the file is one sentence."""
        try:
            return config_mod.load(self.config_path)
        except (OSError, UnicodeDecodeError) as err:  # config.load names the usual ones itself
            raise ConfigError(f"Cannot read config file {self.config_path}: "
                              f"{getattr(err, 'strerror', None) or err}.") from None


def globals_of(ctx: typer.Context) -> Globals:
    root = ctx.find_root()
    if not isinstance(root.obj, Globals):
        root.obj = Globals(config_mod.config_path(None), False)
    return root.obj
