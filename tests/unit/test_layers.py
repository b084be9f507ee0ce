"""The import structure of mailfleet/: no cycle among its modules, no import against the layers.

The layers, top to bottom (a module may import its own layer and the ones below, never above):

    cli -> (services, accounts, dns, provision) -> (engine, lab) -> config -> (errors, templating, netutil, localfile)

The graph is read with `ast` from the source, imports at module level and inside functions
alike (an import inside a function still closes a cycle; it only hides it until run time).
`from mailfleet.services import wireguard` counts as an import of the submodule
`mailfleet.services.wireguard`; importing a submodule is not counted as importing its
package's __init__ (Python runs it, but that edge is the package's own listing, not coupling).

Run as a script (`python tests/unit/test_layers.py`) it prints the violations and cycles found.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "mailfleet"

LAYERS = {
    "cli": 4, "__main__": 4,
    "services": 3, "accounts": 3, "dns": 3, "provision": 3,
    "engine": 2, "lab": 2,
    "config": 1,
    "errors": 0, "templating": 0, "netutil": 0, "localfile": 0, "__init__": 0,
}

# Known exceptions: none today. Keep both lists empty, or short and exact: a new violation
# fails the test, and so does an entry that no longer exists.
#
# Imports from a lower layer into a higher one.
ALLOWED_UPWARD: set[tuple[str, str]] = set()
# Imports that close a cycle between packages of one layer.
ALLOWED_PACKAGE_CYCLE_EDGES: set[tuple[str, str]] = set()


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = ["mailfleet", *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: Path, known: set[str], root: Path = ROOT) -> dict[str, int]:
    """{mailfleet module this file imports: first line}, at any depth of the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for target in targets:
            # `import a.b.c` of a name that is not a module: its longest module prefix
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.setdefault(target, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def top(module: str) -> str:
    """The layer-table key of a module: mailfleet.services.x -> services."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward(edges: dict[str, dict[str, int]]) -> list[tuple[str, str, int]]:
    """(importer, imported, line) where a lower layer imports a higher one."""
    return sorted((a, b, line) for a, targets in edges.items() for b, line in targets.items()
                  if LAYERS[top(a)] < LAYERS[top(b)])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def package_edges(edges: dict[str, dict[str, int]]) -> dict[str, set[str]]:
    """Imports between the layer-table packages (services -> dns, ...)."""
    result: dict[str, set[str]] = {}
    for a, targets in edges.items():
        for b in targets:
            if top(a) != top(b):
                result.setdefault(top(a), set()).add(top(b))
    return result


def test_every_module_has_a_layer():
    assert {top(m) for m in modules()} <= set(LAYERS)


def test_no_import_cycle_among_mailfleet_modules():
    edges = {a: set(targets) for a, targets in graph().items()}
    assert cycles(edges) == []


def test_no_import_against_the_layers_beyond_the_known_ones():
    found = {(a, b) for a, b, _ in upward(graph())}
    assert found - ALLOWED_UPWARD == set(), "new import(s) against the layers"
    assert ALLOWED_UPWARD - found == set(), "fixed: remove from ALLOWED_UPWARD"


def without_allowed(edges: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {a: {b: line for b, line in targets.items() if (a, b) not in ALLOWED_PACKAGE_CYCLE_EDGES}
            for a, targets in edges.items()}


def test_no_cycle_between_packages_beyond_the_known_ones():
    edges = graph()
    assert cycles(package_edges(without_allowed(edges))) == [], "new cycle between packages"
    present = {(a, b) for a, targets in edges.items() for b in targets}
    assert ALLOWED_PACKAGE_CYCLE_EDGES - present == set(), "gone: remove from the allow-list"


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    """The reader itself: an import inside a function is an edge like any other."""
    (tmp_path / "services").mkdir()
    module = tmp_path / "services" / "a.py"
    module.write_text("from mailfleet.services import b\nfrom .c import X\n\n\n"
                      "def late():\n    from mailfleet.engine.runner import Engine\n")
    known = {"mailfleet.services.a", "mailfleet.services.b", "mailfleet.services.c",
             "mailfleet.engine", "mailfleet.engine.runner"}
    assert imports(module, known, tmp_path) == {
        "mailfleet.services.b": 1, "mailfleet.services.c": 2, "mailfleet.engine.runner": 6}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert upward({"mailfleet.config": {"mailfleet.cli.app": 3}}) == [
        ("mailfleet.config", "mailfleet.cli.app", 3)]


def main() -> int:
    edges = graph()
    print(f"{len(edges)} modules, {sum(len(t) for t in edges.values())} imports")
    loops = cycles({a: set(t) for a, t in edges.items()})
    print(f"module cycles: {len(loops)}")
    for loop in loops:
        print("  " + " <-> ".join(loop))
    against = upward(edges)
    print(f"imports against the layers: {len(against)}")
    for a, b, line in against:
        print(f"  {a}:{line} -> {b}" + ("   (allowed, known)" if (a, b) in ALLOWED_UPWARD else ""))
    package_loops = cycles(package_edges(edges))
    print(f"package cycles: {len(package_loops)}")
    for loop in package_loops:
        print("  " + " <-> ".join(loop))
        print("    by: " + ", ".join(f"{a} -> {b}" for a, targets in sorted(edges.items())
                                   for b in sorted(targets)
                                   if top(a) != top(b) and {top(a), top(b)} <= set(loop)))
    left = cycles(package_edges(without_allowed(edges)))
    print(f"package cycles without the allow-listed edges: {len(left)}")
    return 1 if loops or left or {(a, b) for a, b, _ in against} - ALLOWED_UPWARD else 0


if __name__ == "__main__":
    raise SystemExit(main())
