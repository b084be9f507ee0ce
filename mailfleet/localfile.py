"""Files mailfleet writes on this machine that hold secrets (the backup password, a VPN
client's config with its private key): readable by their owner only from the first byte."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path | str, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the start.

    The text goes into a new file made 0600 by os.open (O_EXCL, whatever the umask) in the
    same directory, which then replaces `path`: an existing file's looser mode, or a reader
    that opened it before, never sees the new content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL, 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
