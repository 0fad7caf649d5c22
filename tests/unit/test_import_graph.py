"""No import cycle among vterm's own modules (issue 16).

The graph is built from the source, not from what Python happened to import: every ``import`` and
``from ... import`` anywhere in a module counts, inside functions and under ``TYPE_CHECKING`` too, since
a lazy or type-only import that closes a circle still ties the modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sessions", "workers", "vterm_project")


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the packages (a package is its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that module ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets.add(source)
            # ``from pkg import mod`` imports the submodule ``pkg.mod``.
            targets.update(f"{source}.{alias.name}" for alias in node.names)
    edges = set()
    for target in targets:
        # ``import a.b.c`` runs a, a.b and a.b.c: the deepest one of ours is what the module depends on.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One circle through the component's first module, as a path that ends where it began."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    todo = [start]
    while todo:  # breadth first: the shortest way back
        v = todo.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    return component


def test_the_graph_sees_the_imports_it_should():
    """The walk finds imports of every kind (else an empty graph would pass)."""
    graph = import_graph()
    assert "workers.backend" in graph["workers.tasks"]  # from .backend import runtime
    assert "workers.backend" in graph["workers.celery_hooks"]  # inside a function
    assert "sessions.services" in graph["workers.backend"]  # from sessions import services
    assert "vterm_project.redis_config" in graph["vterm_project.devstack"]  # inside a function
    assert "workers.runtime_parts" in graph["workers.env_tracker"]  # under TYPE_CHECKING only


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"a", "b"}}, []),
])
def test_cycles_finds_circles(graph, expected):
    assert cycles(graph) == expected


def test_no_import_cycle():
    graph = import_graph()
    found = [_a_cycle(graph, component) for component in cycles(graph)]
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)
