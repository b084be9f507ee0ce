"""Reading mailfleet.toml: where it is, its text, and validation errors as one sentence
that names the file, the line (found in the TOML text) and the dotted key."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mailfleet.config.model import Config
from mailfleet.errors import ConfigError

DEFAULT_PATH = Path("mailfleet.toml")
ENV_VAR = "MAILFLEET_CONFIG"


def config_path(path: Path | str | None) -> Path:
    """The config path from --config, else $MAILFLEET_CONFIG, else ./mailfleet.toml."""
    if path:
        return Path(path)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load(path: Path) -> Config:
    if not _present(path):
        raise ConfigError(
            f"Config file {path} does not exist.",
            hint="Create one with `mailfleet init`, or name another with -c PATH.",
        )
    return parse(read_text(path), path)


def _present(path: Path) -> bool:
    """Whether the path names something; an unsearchable directory on the way counts as
    present so that reading it reports the real reason (permission denied)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def read_text(path: Path) -> str:
    """The config's text; a file that cannot be read or is not UTF-8 is one sentence."""
    try:
        return path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(f"Config file {path} is a directory, not a file.",
                          hint="Name the file itself with -c PATH.") from None
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: the config is not UTF-8 text "
                          f"(byte 0x{err.object[err.start]:02x}).",
                          hint="Save the file as UTF-8.") from None
    except OSError as err:
        raise ConfigError(f"Cannot read config file {path}: {err.strerror or err}.") from None


def parse(text: str, path: Path | str = "mailfleet.toml") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}.") from err
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, text, path)) from err


def _describe(err: ValidationError, text: str, path: Path | str) -> str:
    """First error as one sentence: file, line, dotted key, reason."""
    errors = err.errors()
    # a misspelt key also makes the real key "missing": name the misspelling first
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    key = _dotted(loc)
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        reason = "unknown key (check the spelling; `mailfleet init` writes every known key)"
    elif first["type"] == "missing":
        reason = "required key is missing"
    line = find_line(text, loc)
    where = f"{path}, line {line}" if line else str(path)
    subject = f"{key}: " if key else ""
    return f"{where}: {subject}{reason}."


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def find_line(text: str, loc: list[Any]) -> int | None:
    """Best-effort line number of a key path like ('hosts', 1, 'ssh_port') in TOML text.

    Handles the shapes mailfleet.toml uses: [table], [[array-of-tables]] and key = value.
    Falls back to the table header when the key itself is absent (a missing key).
    """
    table: list[Any] = []
    counts: dict[str, int] = {}
    header_line: dict[tuple[Any, ...], int] = {}
    key_line: dict[tuple[Any, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith('"') else raw.strip()
        if not line:
            continue
        if line.startswith("[["):
            name = line.strip("[] ")
            index = counts.get(name, 0)
            counts[name] = index + 1
            table = [*name.split("."), index]
            header_line[tuple(table)] = number
        elif line.startswith("["):
            table = line.strip("[] ").split(".")
            # [hosts.provider] belongs to the last [[hosts]] above it
            for cut in range(len(table) - 1, 0, -1):
                name = ".".join(table[:cut])
                if name in counts:
                    table = [*table[:cut], counts[name] - 1, *table[cut:]]
                    break
            header_line[tuple(table)] = number
        elif "=" in line:
            key = line.split("=", 1)[0].strip().strip('"')
            key_line.setdefault(tuple([*table, *key.split(".")]), number)
    for end in range(len(loc), 0, -1):
        prefix = tuple(loc[:end])
        if prefix in key_line:
            return key_line[prefix]
        if prefix in header_line:
            return header_line[prefix]
    return None
