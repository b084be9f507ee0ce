"""Password hashes in the form Dovecot verifies: {ARGON2ID}$argon2id$v=19$...

Parallelism 1: Dovecot verifies Argon2 through libsodium, which only accepts p=1.
"""

from __future__ import annotations

import secrets
import string

from argon2 import PasswordHasher

SCHEME = "ARGON2ID"
_hasher = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1)


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
