"""The core's import graph has no circle.

Every import the AST shows counts: ``TYPE_CHECKING`` imports and imports
inside functions included, since a circle hidden from the interpreter is
still a circle for whoever reads the code.  A package's ``__init__``
importing its own submodules is not counted (that is how packages re-export).
"""

from __future__ import annotations

import ast
from pathlib import Path

import sansio_gateway

ROOT = Path(sansio_gateway.__file__).resolve().parent
PACKAGE = ROOT.name


def _modules(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of the package (at ``root``) it imports."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, is_package, node)
                # "from . import x" may name a submodule x, or a name in base.
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if not target or target == name:
                    continue
                if is_package and target.startswith(name + "."):
                    continue  # a package re-exporting its own submodules
                if name.startswith(target + "."):
                    continue  # "from . import x" names its package; x is the edge
                graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_the_walk_sees_the_whole_core() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.exchange" in graph and f"{PACKAGE}.flows.base" in graph
    assert f"{PACKAGE}.flows.context" in graph[f"{PACKAGE}.gateway_view"]


def test_type_checking_and_function_level_imports_are_edges(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import A\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.b import B\n"
    )
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.a"}
    assert graph["pkg"] == set()  # re-exporting its own submodules is no edge
    assert circles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_core_import_graph_has_no_circle() -> None:
    found = circles(import_graph())
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_flows_and_the_registry_never_import_the_gateway() -> None:
    graph = import_graph()
    gateway = f"{PACKAGE}.gateway"
    for module, targets in graph.items():
        if module.startswith(f"{PACKAGE}.flows.") or module in (
            f"{PACKAGE}.backends.registry",
            f"{PACKAGE}.routes",
            f"{PACKAGE}.exchange",
        ):
            assert gateway not in targets, f"{module} imports {gateway}"
