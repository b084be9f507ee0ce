"""The versioned schema of the `mailfleet` database.

Migrations are numbered SQL files in `migrations/`; `schema_migrations` records which ran.
Each runs in one transaction with its version row, so a failed one leaves nothing behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
DATABASE = "mailfleet"
# Least privilege: Postfix and Dovecot read, the admin role changes accounts, webmail
# changes passwords only through webmail_set_password (mailfleet_password; migration 0004),
# SOGo reads its users' view and changes passwords through the same function
# (mailfleet_sogo), postgres owns.
ROLES = ("mailfleet_postfix", "mailfleet_dovecot", "mailfleet_admin", "mailfleet_password",
         "mailfleet_sogo")

BOOTSTRAP = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def script(self) -> str:
        """The migration plus its version row, for `psql --single-transaction`."""
        return (f"{BOOTSTRAP}{self.sql.rstrip()}\n"
                f"INSERT INTO schema_migrations (version, name) "
                f"VALUES ({self.version}, '{self.name}');\n")


def sql_literal(value: str) -> str:
    """A value as an SQL string literal (for the psql scripts and queries mailfleet writes)."""
    return "'" + value.replace("'", "''") + "'"


# A dead mail host's mailboxes to their replicas, which become their homes (migration
# 0007's trigger makes the dead host their replica); the hosts' own check mailboxes stay.
# Run by `cluster takeover` (psycopg: HOST is %(host)s) and by the watcher on the primary's
# host (psql: :'host'; templates/replication/mailfleet-takeover.sh.j2).
def take_over_sql(placeholder: str) -> str:
    """The statement with `placeholder` (a driver's parameter, never a value) for HOST."""
    if placeholder not in ("%(host)s", ":'host'"):
        raise ValueError(f"{placeholder!r} is not a parameter placeholder")
    return ("UPDATE mailboxes SET home = replica, updated_at = now() "
            f"WHERE home = {placeholder} AND replica IS NOT NULL AND NOT system")


def migrations() -> list[Migration]:
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", path.name)
        if not match:
            raise RuntimeError(f"badly named migration {path.name} (want NNNN_name.sql)")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    assert versions == list(range(1, len(found) + 1)), f"migration numbers have gaps: {versions}"
    return found


def latest_version() -> int:
    return len(migrations())
