"""What a valid account looks like: addresses, quotas, display names, passwords.

Each function returns the normalised value or raises ValueError with a reason that reads
well after "line 7: " or "--quota: "; the CLI and the CSV import share them, so a row is
judged the same way as a command.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from mailfleet.config import DOMAIN_RE

# What real mail systems hand out: letters, digits, "." "-" "_" (lower case; no leading,
# trailing or double dot). RFC 5321 allows more (` $ ' | & / { } ...), but those reach file
# names (the mailbox's directory) and shell-like contexts on the host and no provider issues
# them. No "+": Postfix's recipient_delimiter makes user+tag@ an address extension of user@,
# so a mailbox with "+" would never get mail.
LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
LOCAL_RE = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
QUOTA_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$")
UNITS = {"": 2**20, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}  # a bare number is MB
MAX_NAME = 200
# The most used passwords of the big leaks, and words people put in a mail password.
COMMON = frozenset("""
123456 123456789 12345678 1234567890 qwerty password 111111 123123 abc123 password1
1234567 qwerty123 1q2w3e4r 000000 iloveyou qwertyuiop 123321 654321 666666 987654321
123qwe 1qaz2wsx 7777777 dragon monkey letmein football baseball welcome admin login
passw0rd master hello sunshine princess trustno1 starwars whatever shadow superman
changeme mailpassword email password123 welcome1 administrator
""".split())


def address(value: str, what: str = "address") -> str:
    """someone@example.org, lower-cased."""
    value = value.strip().lower()
    local, at, domain = value.rpartition("@")
    if not at or not local:
        raise ValueError(f"{what} {value!r} is not an email address (like someone@example.org)")
    if "+" in local:
        raise ValueError(f"{what} {value!r} contains '+', which marks an address extension "
                         f"(someone+tag@) here; choose a name without it")
    bad = next((c for c in local if c not in LOCAL_CHARS), None)
    if bad is not None:
        raise ValueError(f"{what} {value!r} contains {bad!r} before the @; a mailbox or alias "
                         f"name may only contain letters, digits, '.', '-' and '_'")
    if len(local) > 64:
        raise ValueError(f"{what} {value!r} has a name longer than 64 characters before the @")
    if not LOCAL_RE.fullmatch(local):
        raise ValueError(f"{what} {value!r} starts or ends with a dot or has two dots in a "
                         f"row before the @")
    if not DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"{what} {value!r} has no valid domain after the @")
    return value


def existing(value: str, what: str = "address") -> str:
    """The address of a mailbox or alias that may already exist (remove, disable, passwd,
    quota): looser than address(), because a database from before today's rules may hold
    names like x`id`@ that must stay manageable. Such a value only ever travels as an SQL
    parameter or shlex-quoted; its mail directory is checked by services.mailboxes.mail_dir."""
    value = value.strip().lower()
    local, at, domain = value.rpartition("@")
    if not at or not local:
        raise ValueError(f"{what} {value!r} is not an email address (like someone@example.org)")
    if any(unicodedata.category(c).startswith("C") for c in local):
        raise ValueError(f"{what} {value!r} contains control characters")
    if not DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"{what} {value!r} has no valid domain after the @")
    return value


def alias_source(value: str, check: Callable[[str, str], str] = address) -> str:
    """An alias address, or "@example.org" for a catch-all of that domain; `check` is
    address() for a new alias, existing() to name one that is there."""
    value = value.strip().lower()
    if value.startswith("@"):
        if not DOMAIN_RE.fullmatch(value[1:]):
            raise ValueError(f"catch-all {value!r} has no valid domain after the @")
        return value
    return check(value, "alias")


def existing_alias_source(value: str) -> str:
    """An alias that may already exist (see existing())."""
    return alias_source(value, existing)


def destination(value: str) -> str:
    """Where an alias delivers: any address, also outside (forwarding); "+" is allowed."""
    value = value.strip().lower()
    local, at, domain = value.rpartition("@")
    if not at or not local or not DOMAIN_RE.fullmatch(domain) or any(c.isspace() for c in local):
        raise ValueError(f"destination {value!r} is not an email address")
    # It goes into SQL parameters only, but Postfix splits a lookup result into addresses
    # at commas (a,evil@elsewhere would forward to a second address) and reads <>"();:\@ as
    # address syntax; control characters would garble terminals and logs that show it.
    bad = next((c for c in local if c in ',<>"();:\\@[]' or
                unicodedata.category(c).startswith("C")), None)
    if bad is not None:
        raise ValueError(f"destination {value!r} contains {bad!r} before the @, which is not "
                         "part of a plain address")
    return value


def domain_of(value: str) -> str:
    return value.rpartition("@")[2]


def quota(value: str) -> int | None:
    """"2G", "500M", "1.5GiB", "750" (MB) → bytes; "" or "default" → None (the config's)."""
    text = value.strip().lower()
    if text in ("", "default"):
        return None
    match = QUOTA_RE.match(text)
    if not match:
        raise ValueError(f"quota {value!r} is not a size (like 500M, 2G or 1.5GiB; a bare "
                         f"number is MB)")
    size = int(float(match[1]) * UNITS[match[2]])
    if size < 2**20:
        raise ValueError(f"quota {value!r} is less than 1 MB")
    if size > 2**50:
        raise ValueError(f"quota {value!r} is more than 1 PB")
    return size


def format_size(size: int | None, default: str = "default") -> str:
    if size is None:
        return default
    for unit, factor in (("T", 2**40), ("G", 2**30), ("M", 2**20)):
        if size >= factor:
            number = size / factor
            return f"{number:.0f}{unit}" if number == int(number) else f"{number:.1f}{unit}"
    return f"{size}B"


def display_name(value: str) -> str:
    value = unicodedata.normalize("NFC", value.strip())
    if len(value) > MAX_NAME:
        raise ValueError(f"name is longer than {MAX_NAME} characters")
    if any(unicodedata.category(c).startswith("C") for c in value):
        raise ValueError("name contains control characters")
    return value


def password(value: str, email: str, min_length: int) -> str:
    """Reject what a password guesser tries first; length is what makes a password strong."""
    if not value:
        raise ValueError("password is empty")
    if value != value.strip():
        raise ValueError("password starts or ends with a space (often a copy-paste mistake)")
    if len(value) < min_length:
        raise ValueError(f"password is shorter than {min_length} characters")
    lowered = value.lower()
    local = email.partition("@")[0]
    if lowered in COMMON or lowered.rstrip("0123456789!") in COMMON:
        raise ValueError("password is one of the most common passwords")
    if len(set(value)) < 4:
        raise ValueError("password repeats too few different characters")
    if len(local) >= 3 and local in lowered:
        raise ValueError("password contains the user name")
    return value
