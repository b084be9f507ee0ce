"""Password hashes in the form Dovecot verifies: {ARGON2ID}$argon2id$v=19$...

Parallelism 1: Dovecot verifies Argon2 through libsodium, which only accepts p=1.
Cost: OWASP's argon2id baseline (19 MiB, 2 passes), about 20 ms on one core. Dovecot pays
it again at every login (and Roundcube logs in on every page), so the 64 MiB / 3 passes of
argon2-cffi's default (150 ms here) would cost a small VPS more than it protects. Hashes
keep their parameters, so changing them later only affects new passwords.
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Callable

from argon2 import PasswordHasher

SCHEME = "ARGON2ID"


class PARAMETERS:
    """Also what Roundcube's password plugin hashes with (templates/roundcube/)."""

    memory_kib = 19456
    time_cost = 2
    parallelism = 1


_hasher = PasswordHasher(time_cost=PARAMETERS.time_cost, memory_cost=PARAMETERS.memory_kib,
                         parallelism=PARAMETERS.parallelism)


def hash_many(passwords: list[str], progress: Callable[[int], None] | None = None) -> list[str]:
    """Hash on every core: argon2's C code releases the GIL, and gevent's pool runs real
    OS threads (the CLI's threads are greenlets after gevent's monkey patching)."""
    from gevent.threadpool import ThreadPool

    pool = ThreadPool(max(1, os.cpu_count() or 1))
    try:
        hashes = []
        for hashed in pool.imap(hash_password, passwords):
            hashes.append(hashed)
            if progress:
                progress(1)
        return hashes
    finally:
        pool.kill()


def hash_password(password: str) -> str:
    return f"{{{SCHEME}}}{_hasher.hash(password)}"


def verify_password(hashed: str, password: str) -> bool:
    prefix = f"{{{SCHEME}}}"
    if not hashed.startswith(prefix):
        return False
    try:
        return _hasher.verify(hashed[len(prefix):], password)
    except Exception:  # argon2 raises VerifyMismatchError and friends
        return False


def generate_password(length: int = 20) -> str:
    """Readable random password: letters and digits, no look-alikes' confusion with symbols."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))
