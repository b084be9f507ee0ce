"""Many shell reads in one SSH command: what `check` asks of a host goes in one round trip.

Each read's standard output comes back base64-encoded on one line of its own, with its exit
status, so no output can be mistaken for another's or for the framing. A read answers much
as pyinfra's `Command` fact would: its output, or None when it failed or printed nothing.
Two differences, on purpose: a failed read does not mark the host failed (a check reports
it), and trailing blank lines are dropped (output of blank lines only is None, not "").
"""

from __future__ import annotations

import base64

MARK = "=mailfleet-read="


def combined(commands: list[str]) -> str:
    """One shell command running `commands` in turn, each in its own subshell (its stderr
    dropped, as a fact's is not part of its value)."""
    parts = []
    for index, command in enumerate(commands):
        parts.append(f"mf_out=$( ( {command}\n) 2>/dev/null ); mf_rc=$?; "
                     f"printf '{MARK} {index} %s ' \"$mf_rc\"; "
                     "printf '%s' \"$mf_out\" | base64 -w0; echo")
    return "\n".join(parts)


def answers(commands: list[str], text: str | None) -> dict[str, str | None]:
    """{command: its output or None} from `combined(commands)`'s output; a read whose line
    is missing (the SSH command broke off) is left out, so it is asked again on its own."""
    found: dict[str, str | None] = {}
    for line in (text or "").splitlines():
        if not line.startswith(MARK + " "):
            continue
        fields = line[len(MARK) + 1:].split(" ", 2)
        if len(fields) < 2 or not fields[0].isdigit() or int(fields[0]) >= len(commands):
            continue
        status, encoded = fields[1], fields[2] if len(fields) > 2 else ""
        try:
            output = base64.b64decode(encoded, validate=True).decode(errors="replace")
        except ValueError:
            continue
        found[commands[int(fields[0])]] = output if status == "0" and output else None
    return found
