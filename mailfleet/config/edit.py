"""Writing mailfleet.toml (init, lab up/down, domain add/remove, deploy's answers): only a
config that mailfleet itself accepts is saved, and the operator's comments and layout stay."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tomlkit

from mailfleet.config.load import parse, read_text
from mailfleet.config.model import Config
from mailfleet.errors import ConfigError


def save(path: Path, text: str) -> Config:
    """Write a config that mailfleet itself accepts, atomically, keeping the file's mode."""
    config = parse(text, path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        if path.exists():
            tmp.chmod(path.stat().st_mode & 0o7777)
        tmp.replace(path)
    except OSError as err:
        raise ConfigError(f"Cannot write config file {path}: {err.strerror or err}.",
                          hint="Check that its directory exists and is writable.") from None
    return config


def edit(path: Path, change: Callable[[tomlkit.TOMLDocument], None]) -> Config:
    """Change the file in place with tomlkit: the operator's comments and layout stay."""
    doc = tomlkit.parse(read_text(path))
    change(doc)
    return save(path, tomlkit.dumps(doc))
