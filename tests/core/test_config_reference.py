"""docs/configuration.md is generated from sansio_gateway/config.py and must match it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sansio_gateway.config import (
    AuthKey,
    BackendConfig,
    LimitsConfig,
    LimitValues,
    ModelConfig,
    ServerConfig,
    StoreConfig,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "docs" / "gen_config_reference.py"
PAGE = ROOT / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def test_configuration_md_is_up_to_date(gen: ModuleType) -> None:
    assert PAGE.read_text(encoding="utf-8") == gen.render(), (
        "docs/configuration.md is out of date: run python docs/gen_config_reference.py"
    )


def test_check_mode_agrees(gen: ModuleType) -> None:
    assert gen.main(["--check"]) == 0


@pytest.mark.parametrize(
    "model", [ServerConfig, BackendConfig, ModelConfig, AuthKey, LimitValues, StoreConfig]
)
def test_every_key_is_on_the_page(model: type, gen: ModuleType) -> None:
    page = PAGE.read_text(encoding="utf-8")
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        if not info.exclude:  # filled in by the loader, never written by hand
            assert f"| `{name}` |" in page, name


def test_the_limit_tables_have_sections() -> None:
    page = PAGE.read_text(encoding="utf-8")
    for name in LimitsConfig.model_fields.keys() - LimitValues.model_fields.keys():
        assert f"## `[limits.{name}." in page, name


def test_the_complete_example_is_a_valid_config(gen: ModuleType) -> None:
    config = parse_config(gen.full_example(), source="example.toml", env={"UPSTREAM_KEY": "k"})
    assert config.backends[0].api_key == "k"
    assert config.models[0].upstream_name == "llama3.2:1b"
    assert config.auth.keys[0].models == ("gpt-4o-mini", "llama3*")
    assert config.limits.users["alice"].tokens_per_minute == 200_000
    assert config.limits.models["gpt-4o-mini"].requests_per_minute == 30


def test_descriptions_come_from_the_comments_in_the_source(gen: ModuleType) -> None:
    source = (
        "class A:\n"
        "    # Two lines\n"
        "    # above.\n"
        "    x: int = 1  # and beside\n"
        "    y: int = 2  # fmt: skip\n"
        "    z: int = 3\n"
    )
    comments = gen.field_comments(source)
    assert comments[("A", "x")] == "Two lines above. and beside"
    assert comments[("A", "y")] == ""
    assert comments[("A", "z")] == ""


def test_an_undocumented_section_fails_loudly(gen: ModuleType) -> None:
    sections = gen.SECTIONS
    gen.SECTIONS = tuple(s for s in sections if s.key != "store")
    try:
        with pytest.raises(ValueError, match="'store' is not documented"):
            gen.render()
    finally:
        gen.SECTIONS = sections
