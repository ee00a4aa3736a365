"""The rules tests/test_layout.py holds the code to, as functions of a source tree (so that they can be tried on
small trees that break each rule, tests/test_layout.py does that too): which modules import which, import
cycles, a ground floor that imports nothing above it, a runtime that never imports the export stage, and imports
of names that do not exist.

An import counts wherever it is (functions too), except under ``if TYPE_CHECKING:``. ``import pkg`` and ``from pkg
import name`` (a name, not a submodule) import the top-level package itself (its ``__init__``, the public facade):
that counts for the floor and the runtime rules; it is no edge of the cycle graph, since every module may be
reached through the facade that re-exports it."""

from __future__ import annotations

import ast
from pathlib import Path


def modules(packages: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under each package folder (``__init__.py`` is the package)."""
    found = {}
    for package, folder in packages.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_source(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` in ``package`` reads from."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    return {id(n) for node in ast.walk(tree)
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            for n in ast.walk(node)}


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of ours (``known``) that module ``name`` imports, top-level packages included, itself excluded."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = _package_of(name, path)
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = import_source(node, package)
            for alias in node.names:
                child = f"{source}.{alias.name}"
                targets.add(child if child in known else source)
    return {t for t in targets if t in known and t != name}


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    known = modules(packages)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]], facades: set[str]) -> list[str]:
    """Each import cycle found (``a -> b -> a``), imports of a facade (a top-level package) left out."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node] - facades):
            if state.get(nxt) == 1:
                found.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def floor_violations(graph: dict[str, set[str]], floor: set[str]) -> dict[str, list[str]]:
    """Ground-floor module -> what it imports from above the floor (facades included)."""
    return {name: sorted(graph[name] - floor) for name in sorted(floor) if graph.get(name, set()) - floor}


def leaks(graph: dict[str, set[str]], lower: str, upper: str) -> dict[str, list[str]]:
    """Module of package ``lower`` -> what it imports of package ``upper`` (the package itself included)."""
    found = {}
    for name, targets in graph.items():
        if name == lower or name.startswith(lower + "."):
            bad = sorted(t for t in targets if t == upper or t.startswith(upper + "."))
            if bad:
                found[name] = bad
    return found


def broken_imports(packages: dict[str, Path]) -> list[str]:
    """``from ours import x`` where x is neither a module of ours nor a name the source module defines or
    imports. Imports inside functions run only when called: a module moved under them fails late."""
    known = modules(packages)
    broken = []
    for name, path in known.items():
        package = _package_of(name, path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = import_source(node, package)
            if source.split(".")[0] not in packages:
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    continue
                if source not in known:
                    broken.append(f"{name} line {node.lineno}: no module {source}")
                elif alias.name not in defined_names(known[source]):
                    broken.append(f"{name} line {node.lineno}: {source} has no {alias.name}")
    return broken


def defined_names(path: Path) -> set[str]:
    """Names a module binds anywhere: functions, classes, assignments, imports."""
    tree = ast.parse(path.read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names |= {a.asname or a.name.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names}
    return names


def without_docstring(packages: dict[str, Path]) -> list[str]:
    """Non-empty modules that do not open with a docstring saying what they are for."""
    return [name for name, path in modules(packages).items()
            if path.stat().st_size > 0 and not ast.get_docstring(ast.parse(path.read_text()))]
