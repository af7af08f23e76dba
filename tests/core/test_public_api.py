"""The public API is a curated list, documented where embedders read it.

``sansio_gateway.__all__`` holds what an embedder needs to drive the core
from an adapter of its own, and nothing else; docs/embedding.md's table
names exactly those names (issue 12, "Public API").
"""

from __future__ import annotations

import re
from pathlib import Path

import sansio_gateway

DOC = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"


def _documented() -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- public-api -->", 1)[1].split("<!-- /public-api -->", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:  # after the header and its rule
        names |= set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row.split("|")[2]))
    return names - {"apply_write"}  # a Gateway method the row mentions


def test_every_public_name_is_documented_and_every_documented_name_public() -> None:
    assert _documented() == set(sansio_gateway.__all__)


def test_the_public_api_is_curated() -> None:
    names = sansio_gateway.__all__
    # 48 since the status page's two actions, their results and its snapshot;
    # 53 since the reload's action, result, outcome, plan and planner.
    assert len(names) == len(set(names)) and len(names) <= 53
    for name in names:
        assert hasattr(sansio_gateway, name), name
    # What is not listed is not re-exported: the package holds only the API
    # and its submodules.
    extra = {
        n
        for n, v in vars(sansio_gateway).items()
        if not n.startswith("_") and n not in names and not hasattr(v, "__path__")
        and type(v).__name__ != "module"
    }
    assert extra == {"annotations"}, extra
