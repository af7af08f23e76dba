"""The adapters are imported by their installed name, ``sansio_gateway.adapters``.

The folder is ``adapters/`` in the repo, but a top-level ``adapters``
package belongs to another distribution (AdapterHub's), so the repo root on
``sys.path`` must never be what makes an import work: an AST walk over the
tests, benchmarks and examples finds any import of the top-level name, and
a text search finds any command that runs it with ``python -m``.  The
adapters' own layering is checked here too: the CLI is a leaf, and no
adapter reaches into another's private names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = "adapters"  # the name that must not be imported
PYTHON_TREES = ("tests", "benchmarks", "docs", "adapters")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yml", ".yaml", ".txt", ".cfg", ".ini", ".sh", ""}
TEXT_TREES = ("tests", "benchmarks", "docs", "adapters", "sansio_gateway", ".ci")
RUN_TOP = re.compile(r"-m\s+" + TOP + r"\b")


def _python_files() -> list[Path]:
    return sorted(p for tree in PYTHON_TREES for p in (ROOT / tree).rglob("*.py"))


def _top_level_imports(tree: ast.AST) -> list[str]:
    """Absolute imports (and import_module calls) of the top-level name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == TOP]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == TOP:
                found.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.split(".")[0] == TOP
        ):
            found.append(node.args[0].value)
    return found


def test_the_checker_sees_every_way_to_import_the_top_level_name() -> None:
    source = (
        f"import {TOP}.cli\nfrom {TOP} import app\nfrom {TOP}.server import X\n"
        f"import importlib\nimportlib.import_module('{TOP}.asgi')\n"
        "from sansio_gateway.adapters import cli\nfrom . import executor\n"
    )
    assert _top_level_imports(ast.parse(source)) == [
        f"{TOP}.cli",
        TOP,
        f"{TOP}.server",
        f"{TOP}.asgi",
    ]
    assert RUN_TOP.search(f"python -m {TOP}.cli serve")
    assert not RUN_TOP.search("python -m sansio_gateway.adapters.cli serve")


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_imports_the_top_level_name(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    assert _top_level_imports(tree) == [], f"import sansio_gateway.{TOP}... instead"


def test_no_command_runs_the_top_level_name() -> None:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "pyproject.toml"]
    for tree in TEXT_TREES:
        files += [p for p in (ROOT / tree).rglob("*") if p.is_file()]
    offenders = []
    for path in files:
        if path.suffix not in TEXT_SUFFIXES or "__pycache__" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [
            f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
            for m in RUN_TOP.finditer(text)
        ]
    assert offenders == [], "use -m sansio_gateway.adapters..."


def _adapter_imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names) of each import from a sibling adapter module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        if node.level == 1:
            module = node.module
        elif node.module.startswith("sansio_gateway.adapters."):
            module = node.module.removeprefix("sansio_gateway.adapters.")
        else:
            continue
        found.append((module.split(".")[0], tuple(a.name for a in node.names)))
    return found


ADAPTERS = sorted((ROOT / "adapters").glob("*.py"))


def test_the_cli_is_a_leaf() -> None:
    importers = [p.name for p in ADAPTERS if any(m == "cli" for m, _ in _adapter_imports(p))]
    assert importers == []


@pytest.mark.parametrize("path", ADAPTERS, ids=lambda p: p.name)
def test_no_adapter_imports_another_ones_private_names(path: Path) -> None:
    private = [(m, n) for m, names in _adapter_imports(path) for n in names if n.startswith("_")]
    assert private == []


def test_every_package_on_disk_is_listed_for_the_wheel() -> None:
    """pyproject.toml lists the packages by hand (adapters/ is mapped under
    sansio_gateway); a package missing there is missing from the wheel, which
    the slow wheel test would only find at the end."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    adapters = root / "adapters"
    on_disk = {
        ".".join(("sansio_gateway", "adapters", *p.parent.relative_to(adapters).parts))
        for p in adapters.rglob("__init__.py")
    } | {
        ".".join(p.parent.relative_to(root).parts)
        for p in (root / "sansio_gateway").rglob("__init__.py")
    }
    assert on_disk == listed, (on_disk - listed, listed - on_disk)
