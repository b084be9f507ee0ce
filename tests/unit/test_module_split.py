"""The layers the split of issue 22 keeps: dns/ and engine/ know no service and no command,
and the commands run no host command themselves (they call services/ or accounts/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mailfleet"


def imports(path: Path) -> set[str]:
    """Every mailfleet module or name `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("mailfleet")}


@pytest.mark.parametrize("layer", ["dns", "engine"])
def test_dns_and_engine_import_no_service_and_no_command(layer):
    wrong = {f"{path.name}: {name}" for path in (PACKAGE / layer).glob("*.py")
             for name in imports(path)
             if name.startswith(("mailfleet.services", "mailfleet.cli"))}
    assert not wrong


def test_the_commands_run_no_host_command_themselves():
    wrong = {f"{path.name}: {name}" for path in (PACKAGE / "cli").glob("*.py")
             for name in imports(path) if name == "mailfleet.engine.tunnel.ssh_run"}
    assert not wrong


def test_the_mail_client_library_needs_nothing_of_mailfleet():
    """The demo, the checks and the lab tests share it; it only talks to a host's ports."""
    assert imports(PACKAGE / "engine" / "mailclient.py") == set()
