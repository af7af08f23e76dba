"""The core stays pure: nothing under sansio_gateway/ imports I/O, clocks or randomness.

An AST walk (not a grep), so ``from x import y``, ``import a.b`` and
imports nested in functions are all seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "sansio_gateway"
BANNED = {
    "anyio",
    "trio",
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "httpcore",
    "httpx",
    "h11",
    "redis",
    "sqlite3",
    "time",
    "random",
    "uuid",
    "secrets",
    "threading",
    "subprocess",
    "logging",
    "prometheus_client",
    "opentelemetry",
    "os",
}


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            roots.add("__import__")
    return roots


CORE_FILES = sorted(CORE.rglob("*.py"))


def test_core_has_modules() -> None:
    assert len(CORE_FILES) > 5


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_imports_no_io(path: Path) -> None:
    roots = _imported_roots(ast.parse(path.read_text(encoding="utf-8")))
    assert not roots & (BANNED | {"__import__"}), f"{path} imports {sorted(roots & BANNED)}"


def test_the_checker_catches_banned_imports() -> None:
    tree = ast.parse("import time\nfrom socket import socket\ndef f():\n    import anyio.abc\n")
    assert {"time", "socket", "anyio"} <= _imported_roots(tree)
