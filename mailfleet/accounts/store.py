"""Domain and mailbox changes in the mail database: parameterised SQL, one transaction
per call (psycopg's `with conn.transaction()`), addresses lower-cased."""

from __future__ import annotations

import psycopg

from mailfleet.accounts.passwords import hash_password
from mailfleet.errors import UsageError


def split_address(address: str) -> tuple[str, str]:
    address = address.strip().lower()
    local, _, domain = address.rpartition("@")
    if not local or "." not in domain:
        raise UsageError(f"{address!r} is not an email address (like someone@example.org).")
    return local, domain


def add_domain(conn: psycopg.Connection, domain: str) -> bool:
    """True when added, False when it was there already."""
    with conn.transaction():
        cur = conn.execute("INSERT INTO domains (name) VALUES (%s) ON CONFLICT DO NOTHING",
                           (domain.lower(),))
        return cur.rowcount == 1


def set_mailbox(conn: psycopg.Connection, address: str, password: str, name: str = "",
                quota_bytes: int | None = None) -> None:
    """Create the mailbox, or reset its password, name and quota if it exists."""
    _, domain = split_address(address)
    with conn.transaction():
        if not conn.execute("SELECT 1 FROM domains WHERE name = %s", (domain,)).fetchone():
            raise UsageError(f"Domain {domain} is not served here; add it first.")
        conn.execute(
            "INSERT INTO mailboxes (email, domain, name, password, quota_bytes) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (email) DO UPDATE SET "
            "password = EXCLUDED.password, name = EXCLUDED.name, "
            "quota_bytes = EXCLUDED.quota_bytes, active = true, updated_at = now()",
            (address.lower(), domain, name, hash_password(password), quota_bytes),
        )


def set_quota(conn: psycopg.Connection, address: str, quota_bytes: int | None) -> None:
    with conn.transaction():
        cur = conn.execute("UPDATE mailboxes SET quota_bytes = %s, updated_at = now() "
                           "WHERE email = %s", (quota_bytes, address.lower()))
        if cur.rowcount != 1:
            raise UsageError(f"No mailbox {address}.")


def add_alias(conn: psycopg.Connection, source: str, destination: str) -> None:
    """source: user@domain, or @domain for a catch-all."""
    domain = source.lower().rpartition("@")[2]
    with conn.transaction():
        conn.execute("INSERT INTO aliases (source, domain, destination) VALUES (%s, %s, %s) "
                     "ON CONFLICT DO NOTHING", (source.lower(), domain, destination.lower()))
