"""`mailfleet user import`: a CSV of users, judged whole before anything is written.

Columns (header row, any order, case-insensitive): email (required), name, password
(empty: generated), quota (empty: the default), aliases (addresses separated by spaces,
commas or semicolons). Files from spreadsheets work as they come: UTF-8 with or without
BOM, CRLF line ends, quoted fields with commas or line breaks, ";" as the separator.

Every row is checked against the file and the database first; any problem names its line
and nothing is written. Then passwords are hashed on all cores and all rows go into the
database in one transaction.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from mailfleet.accounts import rules, store
from mailfleet.accounts.passwords import generate_password
from mailfleet.errors import UsageError

COLUMNS = ("email", "name", "password", "quota", "aliases")
MAX_PROBLEMS_SHOWN = 50


@dataclass
class Row:
    line: int
    email: str
    name: str
    password: str | None  # None: an existing user keeps the current one
    generated: bool
    quota_bytes: int | None
    aliases: list[str]
    action: str = "create"  # create, update or skip
    hashed: str = ""


@dataclass
class Plan:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for r in self.rows if r.action == action)

    @property
    def writes(self) -> list[Row]:
        return [r for r in self.rows if r.action != "skip"]


@dataclass(frozen=True)
class Database:
    """What the import must agree with: served domains, mailboxes, aliases."""

    domains: set[str]
    mailboxes: dict[str, bool]  # address → is mailfleet's own mailbox
    aliases: dict[str, set[str]]  # source → destinations

    @classmethod
    def read(cls, conn: psycopg.Connection, configured: Collection[str]) -> Database:
        """configured: mailfleet.toml's domains; a domain is served if it is there and in
        the database."""
        aliases: dict[str, set[str]] = {}
        for source, destination in conn.execute("SELECT source, destination FROM aliases"):
            aliases.setdefault(source, set()).add(destination)
        return cls(store.domain_names(conn) & set(configured), store.existing(conn), aliases)


def read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(first line number, {column: value}) per non-empty row; file-level problems raise."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UsageError(f"Cannot read {path}: {err.strerror}.") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UsageError(f"{path}, line {line}: not UTF-8 text (save the file as "
                         f"\"CSV UTF-8\").") from err
    header = text.lstrip().partition("\n")[0]
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        columns = [c.strip().lower() for c in next(reader)]
    except StopIteration:
        raise UsageError(f"{path} is empty; the first line must name the columns "
                         f"({', '.join(COLUMNS)}).") from None
    except csv.Error as err:
        raise UsageError(f"{path}, line 1: {err}.") from err
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise UsageError(f"{path}, line 1: unknown column {unknown[0]!r} "
                         f"(known: {', '.join(COLUMNS)}).")
    if "email" not in columns:
        raise UsageError(f"{path}, line 1: there is no email column (the first line must name "
                         f"the columns: {', '.join(COLUMNS)}).")
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise UsageError(f"{path}, line 1: column {repeated[0]!r} appears twice.")
    rows: list[tuple[int, dict[str, str]]] = []
    start = reader.line_num + 1
    try:
        for values in reader:
            if any(v.strip() for v in values):
                if len(values) > len(columns):
                    rows.append((start, {"": f"{len(values)} fields, but the header names "
                                             f"{len(columns)}"}))
                else:
                    rows.append((start, dict(zip(columns, values))))
            start = reader.line_num + 1
    except csv.Error as err:
        raise UsageError(f"{path}, line {reader.line_num}: {err}.") from err
    return rows


def plan(rows: list[tuple[int, dict[str, str]]], db: Database, update: bool,
         min_password_length: int) -> Plan:
    """Judge every row; the plan's problems list each bad line (empty: all good)."""
    result = Plan()
    seen: dict[str, int] = {}  # address (mailbox or alias) → line that claims it
    for line, values in rows:
        problems: list[str] = []

        def check(fn: Callable[..., object], *args: object) -> object:
            try:
                return fn(*args)
            except ValueError as err:
                problems.append(str(err))
                return None

        if "" in values:
            result.problems.append(f"line {line}: {values['']}")
            continue
        email = check(rules.address, values.get("email", ""), "email")
        name = check(rules.display_name, values.get("name", "")) or ""
        quota = check(rules.quota, values.get("quota", ""))
        alias_list: list[str] = []
        for text in values.get("aliases", "").replace(";", " ").replace(",", " ").split():
            alias = check(rules.address, text, "alias")
            if alias:
                alias_list.append(str(alias))
        action = "create"
        if isinstance(email, str):
            domain = rules.domain_of(email)
            if domain not in db.domains:
                problems.append(f"domain {domain} is not served here (add it with "
                                f"`mailfleet domain add {domain}`)")
            if email in seen:
                problems.append(f"{email} is also on line {seen[email]}")
            seen.setdefault(email, line)
            if db.mailboxes.get(email):
                problems.append(f"{email} is mailfleet's own health-check mailbox")
            elif email in db.mailboxes:
                action = "update" if update else "skip"
            if email in db.aliases:
                problems.append(f"{email} is an alias already")
            for alias in alias_list:
                problems.extend(_alias_problems(alias, email, db, seen, line))
                seen.setdefault(alias, line)
        password = values.get("password", "")
        generated = False
        if password:
            check(rules.password, password, email or "", min_password_length)
        elif action != "create":
            password = None  # an existing user keeps the current one
        else:
            password, generated = generate_password(), True
        if problems:
            result.problems.extend(f"line {line}: {p}" for p in problems)
        elif isinstance(email, str):
            result.rows.append(Row(line, email, name, password, generated, quota, alias_list,
                                   action))
    return result


def _alias_problems(alias: str, email: str, db: Database, seen: dict[str, int],
                    line: int) -> list[str]:
    if alias == email:
        return [f"alias {alias} is the user's own address"]
    problems = []
    if rules.domain_of(alias) not in db.domains:
        problems.append(f"alias {alias}: domain {rules.domain_of(alias)} is not served here")
    if alias in seen and seen[alias] != line:
        problems.append(f"alias {alias} is also on line {seen[alias]}")
    if alias in db.mailboxes:
        problems.append(f"alias {alias} is a mailbox already")
    if db.aliases.get(alias, {email}) != {email}:
        problems.append(f"alias {alias} already delivers to "
                        f"{', '.join(sorted(db.aliases[alias]))}")
    return problems


def describe(problems: list[str], path: Path) -> str:
    """All problems in one message (the first MAX_PROBLEMS_SHOWN, then a count)."""
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = len(problems) - len(shown)
    lines = "\n".join(f"  {path}, {p}" for p in shown)
    tail = f"\n  … and {more} more" if more else ""
    return (f"{path}: {len(problems)} problem(s), nothing was imported:\n{lines}{tail}")


def apply(conn: psycopg.Connection, writes: list[Row]) -> None:
    """All rows in one transaction: mailboxes first, then their aliases."""
    creates = [(r.email, rules.domain_of(r.email), r.name, r.hashed, r.quota_bytes)
               for r in writes if r.action == "create"]
    updates = [(r.name, r.quota_bytes, r.hashed or None, r.email)
               for r in writes if r.action == "update"]
    links = [(alias, rules.domain_of(alias), r.email) for r in writes for alias in r.aliases]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany("INSERT INTO mailboxes (email, domain, name, password, quota_bytes) "
                        "VALUES (%s, %s, %s, %s, %s)", creates)
        cur.executemany("UPDATE mailboxes SET name = %s, quota_bytes = %s, "
                        "password = coalesce(%s, password), updated_at = now() "
                        "WHERE email = %s AND NOT system", updates)
        cur.executemany("INSERT INTO aliases (source, domain, destination) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING", links)


def write_passwords(path: Path, rows: list[Row]) -> None:
    """The generated passwords, for handing out: a new file, mode 0600 from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "password"])
        writer.writerows((r.email, r.password) for r in rows if r.generated)
