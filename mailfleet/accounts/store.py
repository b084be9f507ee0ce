"""Domain, mailbox and alias changes in the mail database.

Parameterised SQL only; every change runs in one transaction (`conn.transaction()`) that
first checks what it needs, so a refused change leaves nothing behind. Addresses arrive
already normalised by `rules`. mailfleet's own health-check mailbox (`system`) is hidden
from lists and cannot be changed here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from mailfleet.accounts import rules
from mailfleet.accounts.schema import take_over_sql
from mailfleet.accounts.passwords import hash_password
from mailfleet.errors import UsageError


@dataclass(frozen=True)
class Mailbox:
    email: str
    name: str
    quota_bytes: int | None
    active: bool
    created_at: datetime
    home: str | None  # the mail host it lives on, in a cluster with several (else None)
    replica: str | None  # ... and the one holding its copy

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat(timespec="seconds")}


# -- domains ---------------------------------------------------------------------------

def domains(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every domain with its number of mailboxes and aliases."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT d.name, d.active, "
            "(SELECT count(*) FROM mailboxes m WHERE m.domain = d.name AND NOT m.system) AS mailboxes, "
            "(SELECT count(*) FROM aliases a WHERE a.domain = d.name) AS aliases "
            "FROM domains d ORDER BY d.name").fetchall()


def domain_names(conn: psycopg.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM domains")}


def remove_domain(conn: psycopg.Connection, domain: str) -> list[str]:
    """Delete the domain with its mailboxes and aliases; returns the deleted mailboxes."""
    with conn.transaction():
        gone = [row[0] for row in conn.execute(
            "SELECT email FROM mailboxes WHERE domain = %s ORDER BY email", (domain,))]
        # aliases elsewhere that deliver only into this domain would bounce: drop them too
        conn.execute("DELETE FROM aliases WHERE destination LIKE %s", (f"%@{domain}",))
        cur = conn.execute("DELETE FROM domains WHERE name = %s", (domain,))
        if cur.rowcount != 1:
            raise UsageError(f"Domain {domain} is not in the mail database.")
        return gone


def require_domain(conn: psycopg.Connection, domain: str) -> None:
    if not conn.execute("SELECT 1 FROM domains WHERE name = %s", (domain,)).fetchone():
        raise UsageError(f"Domain {domain} is not served here.",
                         hint=f"Add it first: mailfleet domain add {domain}")


# -- mailboxes -------------------------------------------------------------------------

def mailboxes(conn: psycopg.Connection, domain: str | None = None) -> list[Mailbox]:
    query = ("SELECT email, name, quota_bytes, active, created_at, home, replica FROM mailboxes "
             "WHERE NOT system" + (" AND domain = %s" if domain else "") + " ORDER BY domain, email")
    return [Mailbox(*row) for row in conn.execute(query, (domain,) if domain else ())]


def existing(conn: psycopg.Connection) -> dict[str, bool]:
    """Every mailbox address → is it mailfleet's own (system) mailbox."""
    return dict(conn.execute("SELECT email, system FROM mailboxes").fetchall())


def require_user_mailbox(conn: psycopg.Connection, email: str) -> None:
    """A user's mailbox that exists (the commands check before asking for a password or a
    confirmation; the changes check again in their transaction)."""
    row = conn.execute("SELECT system FROM mailboxes WHERE email = %s FOR UPDATE",
                       (email,)).fetchone()
    if row is None:
        raise UsageError(f"There is no mailbox {email}.", hint="See `mailfleet user list`.")
    if row[0]:
        raise UsageError(f"{email} is mailfleet's own health-check mailbox; deploy manages it.")


def require_new_mailbox(conn: psycopg.Connection, email: str) -> None:
    """An address that may become a mailbox: its domain is served, it is neither a mailbox
    nor an alias yet."""
    require_domain(conn, rules.domain_of(email))
    if conn.execute("SELECT 1 FROM mailboxes WHERE email = %s", (email,)).fetchone():
        raise UsageError(f"The mailbox {email} exists already.",
                         hint=f"Change its password with `mailfleet user passwd {email}`.")
    if conn.execute("SELECT 1 FROM aliases WHERE source = %s", (email,)).fetchone():
        raise UsageError(f"{email} is an alias already; remove the alias first.")


def mail_hosts(conn: psycopg.Connection) -> list[str]:
    """The mail hosts a mailbox can live on (a cluster's; none for a single host)."""
    return [name for (name,) in conn.execute("SELECT name FROM mail_hosts ORDER BY name")]


def require_home(conn: psycopg.Connection, home: str, what: str = "--home") -> None:
    hosts = mail_hosts(conn)
    if home not in hosts:
        raise UsageError(
            f"{what}: {home!r} is not a mail host of the cluster" +
            (f" ({', '.join(hosts)})." if hosts else "; a single host has no homes to choose."))


def add_mailbox(conn: psycopg.Connection, email: str, hashed: str, name: str = "",
                quota_bytes: int | None = None,
                home: str | None = None) -> tuple[str | None, str | None]:
    """Add the mailbox; its home: `home`, else the mail host with the fewest, and a replica
    on another (migrations 0006 and 0007's trigger), else none (a single host). Returns
    (home, replica)."""
    with conn.transaction():
        require_new_mailbox(conn, email)
        if home is not None:
            require_home(conn, home)
        row = conn.execute("INSERT INTO mailboxes (email, domain, name, password, quota_bytes, "
                           "home) VALUES (%s, %s, %s, %s, %s, %s) RETURNING home, replica",
                           (email, rules.domain_of(email), name, hashed, quota_bytes,
                            home)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def home_of(conn: psycopg.Connection, email: str) -> str | None:
    """The mail host an existing mailbox lives on (None: a single host)."""
    return conn.execute("SELECT home FROM mailboxes WHERE email = %s", (email,)).fetchone()[0]


def move_mailbox(conn: psycopg.Connection, email: str, host: str) -> None:
    """Make `host` the mailbox's home; the old home becomes its replica, so the new home's
    next copy (two-way) brings over whatever reached the old one meanwhile."""
    with conn.transaction():
        require_user_mailbox(conn, email)
        require_home(conn, host, "HOST")
        if home_of(conn, email) == host:
            raise UsageError(f"{email} lives on {host} already.")
        conn.execute("UPDATE mailboxes SET home = %s, replica = home, updated_at = now() "
                     "WHERE email = %s", (host, email))


def take_over(conn: psycopg.Connection, host: str) -> int:
    """Give the mailboxes homed on `host` (which is down) to their replicas, which become
    their homes; `host` becomes their replica (migration 0007's trigger) and catches up
    when it is back. The hosts' own check mailboxes stay. Returns how many moved."""
    with conn.transaction():
        require_home(conn, host, "HOST")
        return conn.execute(take_over_sql("%(host)s"), {"host": host}).rowcount


def set_password(conn: psycopg.Connection, email: str, hashed: str) -> None:
    with conn.transaction():
        require_user_mailbox(conn, email)
        conn.execute("UPDATE mailboxes SET password = %s, updated_at = now() WHERE email = %s",
                     (hashed, email))


def set_quota(conn: psycopg.Connection, email: str, quota_bytes: int | None) -> None:
    with conn.transaction():
        require_user_mailbox(conn, email)
        conn.execute("UPDATE mailboxes SET quota_bytes = %s, updated_at = now() WHERE email = %s",
                     (quota_bytes, email))


def set_active(conn: psycopg.Connection, email: str, active: bool) -> bool:
    """True when this changed the mailbox."""
    with conn.transaction():
        require_user_mailbox(conn, email)
        cur = conn.execute("UPDATE mailboxes SET active = %s, updated_at = now() "
                           "WHERE email = %s AND active <> %s", (active, email, active))
        return cur.rowcount == 1


def remove_mailbox(conn: psycopg.Connection, email: str) -> list[str]:
    """Delete the mailbox, and the aliases that delivered only to it (they would bounce);
    returns those aliases' sources."""
    with conn.transaction():
        require_user_mailbox(conn, email)
        gone = [row[0] for row in conn.execute(
            "DELETE FROM aliases WHERE destination = %s RETURNING source", (email,))]
        conn.execute("DELETE FROM mailboxes WHERE email = %s", (email,))
        return sorted(gone)


def set_mailbox(conn: psycopg.Connection, address: str, password: str, name: str = "",
                quota_bytes: int | None = None) -> None:
    """Create the mailbox, or reset its password, name and quota if it exists (the demo
    and the tests' fixtures: idempotent, no questions)."""
    email = rules.address(address)
    with conn.transaction():
        require_domain(conn, rules.domain_of(email))
        conn.execute(
            "INSERT INTO mailboxes (email, domain, name, password, quota_bytes) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (email) DO UPDATE SET "
            "password = EXCLUDED.password, name = EXCLUDED.name, "
            "quota_bytes = EXCLUDED.quota_bytes, active = true, updated_at = now()",
            (email, rules.domain_of(email), name, hash_password(password), quota_bytes),
        )


# -- aliases ---------------------------------------------------------------------------

def aliases(conn: psycopg.Connection, domain: str | None = None) -> list[dict[str, Any]]:
    query = ("SELECT source, destination, active FROM aliases"
             + (" WHERE domain = %s" if domain else "") + " ORDER BY domain, source, destination")
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, (domain,) if domain else ()).fetchall()


def add_alias(conn: psycopg.Connection, source: str, destinations: list[str] | str) -> int:
    """source: user@domain, or @domain for a catch-all; destinations: mailboxes here or
    any outside address. Returns how many were new."""
    if isinstance(destinations, str):
        destinations = [destinations]
    domain = rules.domain_of(source)
    added = 0
    with conn.transaction():
        require_domain(conn, domain)
        served = domain_names(conn)
        for target in destinations:
            if target == source:
                raise UsageError(f"An alias cannot deliver to itself ({source}).")
            if rules.domain_of(target) in served and not conn.execute(
                    "SELECT 1 FROM mailboxes WHERE email = %s AND NOT system "
                    "UNION SELECT 1 FROM aliases WHERE source = %s", (target, target)).fetchone():
                raise UsageError(f"{target} is neither a mailbox nor an alias here, so mail "
                                 f"for {source} would bounce.",
                                 hint=f"Create it first: mailfleet user add {target}")
            cur = conn.execute("INSERT INTO aliases (source, domain, destination) "
                               "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                               (source, domain, target))
            added += cur.rowcount
    return added


def remove_alias(conn: psycopg.Connection, source: str, destination: str | None = None) -> int:
    with conn.transaction():
        if destination:
            cur = conn.execute("DELETE FROM aliases WHERE source = %s AND destination = %s",
                               (source, destination))
        else:
            cur = conn.execute("DELETE FROM aliases WHERE source = %s", (source,))
        if cur.rowcount == 0:
            raise UsageError(f"There is no alias {source}"
                             + (f" to {destination}." if destination else "."),
                             hint="See `mailfleet alias list`.")
        return cur.rowcount
