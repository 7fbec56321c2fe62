"""The import structure of weakseg: no cycles, one-way layers, and no plotting stack in the training path.

The graphs are read from the source with ``ast`` (nothing is imported): an edge ``a -> b`` for every
``import weakseg.b`` / ``from weakseg.b import x`` in module ``a`` (``from pkg import sub`` counts as an
import of the submodule). Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "weakseg"

#: What each lower layer may import from weakseg (at module level or inside functions). Everything above
#: these (engine, builders, tools, cli*, annotate) may import them; they never import upward.
ALLOWED = {
    "weakseg.ops": set(),
    "weakseg.registry": {"weakseg.io"},
    "weakseg.losses": {"weakseg.ops"},
    "weakseg.postprocess": {"weakseg.ops"},
    "weakseg.models": {"weakseg.ops", "weakseg.registry", "weakseg.io", "weakseg.compat"},
    "weakseg.cam": {"weakseg.ops", "weakseg.postprocess", "weakseg.metrics", "weakseg.io"},
    "weakseg.methods": {
        "weakseg.ops",
        "weakseg.losses",
        "weakseg.models",
        "weakseg.cam",
        "weakseg.postprocess",
        "weakseg.metrics",
        "weakseg.registry",
        "weakseg.io",
        "weakseg.data",
    },
}


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


MODULES = _module_names()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], *, functions: bool) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported (``functions=False``) or ever (True)."""
    for node in body:
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from _statements(node.orelse, functions=functions)
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not functions:
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _statements([c for c in children if isinstance(c, ast.AST)], functions=functions)


def _imported(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module.split(".")[0] != "weakseg":
            return []
        subs = [f"{node.module}.{alias.name}" for alias in node.names]
        return [sub if sub in MODULES else node.module for sub in subs]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "weakseg"]
    return []


def import_graph(*, functions: bool) -> dict[str, set[str]]:
    """module -> the weakseg modules it imports (only at import time, or also inside functions)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = {t for node in _statements(tree.body, functions=functions) for t in _imported(node)}
        graph[name] = {t for t in targets if t != name}
    return graph


def package_of(module: str) -> str:
    """``weakseg.models.heads`` -> ``weakseg.models``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module)
        deps = packages.setdefault(source, set())
        deps.update(package_of(t) for t in targets if package_of(t) not in (source, "weakseg"))
    return packages


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_modules_import_each_other_without_cycles():
    assert cycles(import_graph(functions=False)) == []


def test_packages_import_each_other_without_cycles():
    """Between packages even the imports inside functions go one way."""
    assert cycles(package_graph(import_graph(functions=True))) == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_lower_layers_never_import_upward(package):
    graph = package_graph(import_graph(functions=True))
    assert graph.get(package, set()) <= ALLOWED[package], graph.get(package, set()) - ALLOWED[package]


def test_only_the_command_line_imports_the_command_line():
    graph = import_graph(functions=True)
    for module, targets in graph.items():
        if package_of(module).startswith("weakseg.cli") or module == "weakseg.__main__":
            continue
        assert not {t for t in targets if package_of(t).startswith("weakseg.cli")}, module


def test_importing_the_training_path_does_not_load_matplotlib():
    """Methods, losses, models and CAM operations run in every training step; plotting is for reports."""
    packages = (
        "weakseg.methods, weakseg.losses, weakseg.models, weakseg.cam, weakseg.ops, weakseg.postprocess"
    )
    code = f"import sys, {packages}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]", out.stdout
