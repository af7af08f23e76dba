"""What a request is charged at admission: prompt estimate + output cap.

Both wire formats go through one function: OpenAI's chat, completions and
embeddings bodies and Ollama's chat, generate, embed and embeddings bodies.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.accounting.admission import (
    DEFAULT_OUTPUT_CAP,
    admission_tokens,
    prompt_tokens,
)
from sansio_gateway.accounting.tokens import (
    IMAGE_TOKENS,
    PROMPT_OVERHEAD,
    estimate_messages,
    estimate_text,
    estimate_texts,
)
from sansio_gateway.routes import LIMITED_ROUTES

DEFAULT = 777


def charge(
    body: Any, *, generates: bool = True, default: int = DEFAULT, route: str | None = None
) -> int:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return admission_tokens(raw, default_output_cap=default, generates=generates, route=route)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
caps = st.integers(1, 10**6)


# ---- every text field of both wire formats ------------------------------------------------


def bodies_with(text: str) -> list[tuple[str, dict[str, Any]]]:
    """One request per (route, field) that carries ``text`` in its prompt."""
    return [
        ("chat.completions", {"model": "m", "messages": [{"role": "user", "content": text}]}),
        (
            "chat.completions",
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
            },
        ),
        ("completions", {"model": "m", "prompt": text}),
        ("completions", {"model": "m", "prompt": ["x", text]}),
        ("completions", {"model": "m", "prompt": "x", "suffix": text}),
        ("embeddings", {"model": "m", "input": text}),
        ("embeddings", {"model": "m", "input": [text, "y"]}),
        ("ollama.chat", {"model": "m", "messages": [{"role": "system", "content": text}]}),
        ("ollama.generate", {"model": "m", "prompt": text}),
        ("ollama.generate", {"model": "m", "prompt": "x", "system": text}),
        ("ollama.generate", {"model": "m", "prompt": "x", "suffix": text}),
        ("ollama.embed", {"model": "m", "input": text}),
        ("ollama.embed", {"model": "m", "input": [text]}),
        ("ollama.embeddings", {"model": "m", "prompt": text}),
    ]


@given(texts)
def test_never_below_a_token_per_four_bytes_of_any_prompt_text(text: str) -> None:
    for route, body in bodies_with(text):
        assert charge(body, generates=LIMITED_ROUTES[route]) >= ceil_div(nbytes(text), 4), (
            route,
            body,
        )


@given(texts, texts)
def test_monotone_in_the_length_of_every_text(text: str, more: str) -> None:
    for (route, short), (_, long) in zip(bodies_with(text), bodies_with(text + more), strict=True):
        generates = LIMITED_ROUTES[route]
        assert charge(long, generates=generates) >= charge(short, generates=generates), route


@given(texts, st.integers(0, 5))
def test_images_are_counted_on_both_surfaces(text: str, n: int) -> None:
    generate = {"model": "m", "prompt": text, "images": ["aGk="] * n, "options": {"num_predict": 1}}
    assert charge(generate) == estimate_texts([text]) + IMAGE_TOKENS * n + 1
    native = {"role": "user", "content": text, "images": ["aGk="] * n}
    assert charge({"model": "m", "messages": [native], "max_tokens": 1}) == (
        estimate_messages([native]) + 1
    )
    parts = [{"type": "text", "text": text}] + [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    ] * n
    openai = {"model": "m", "messages": [{"role": "user", "content": parts}], "max_tokens": 1}
    assert charge(openai) == estimate_messages([{"role": "user", "content": text}]) + (
        IMAGE_TOKENS * n + 1
    )


# ---- the output cap ---------------------------------------------------------------------


@given(texts, caps)
def test_the_output_cap_is_read_from_every_field_name(text: str, cap: int) -> None:
    messages = [{"role": "user", "content": text}]
    for fields in (
        {"max_completion_tokens": cap},
        {"max_tokens": cap},
        {"options": {"num_predict": cap}},
        # the OpenAI surface: the first one given wins, in this order
        {"max_completion_tokens": cap, "max_tokens": cap + 5},
        {"max_tokens": cap, "options": {"num_predict": cap + 5}},
    ):
        body = {"model": "m", "messages": messages, **fields}
        assert charge(body, route="chat.completions") - prompt_tokens(body) == cap, fields
    generate = {"model": "m", "prompt": text, "options": {"num_predict": cap}}
    assert charge(generate, route="ollama.generate") - prompt_tokens(generate) == cap


@given(texts, caps)
def test_ollama_routes_charge_num_predict_and_ignore_top_level_caps(text: str, cap: int) -> None:
    """Issue 17 item 1: Ollama's /api/chat and /api/generate read only
    options.num_predict; a top-level max_tokens must not lower the charge."""
    for route, body in (
        ("ollama.chat", {"model": "m", "messages": [{"role": "user", "content": text}]}),
        ("ollama.generate", {"model": "m", "prompt": text}),
    ):
        dodge = {**body, "max_tokens": 1, "max_completion_tokens": 1}
        dodge["options"] = {"num_predict": cap}
        assert charge(dodge, route=route) - prompt_tokens(dodge) == cap
        unbounded = {**body, "max_tokens": 1, "options": {"num_predict": -1}}
        assert charge(unbounded, route=route) - prompt_tokens(unbounded) == DEFAULT
    completions = {"model": "m", "prompt": text, "max_tokens": cap}
    assert charge(completions) == estimate_texts([text]) + cap


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"max_tokens": None},
        {"max_tokens": 0},
        {"max_tokens": -1},
        {"max_tokens": True},
        {"max_tokens": 12.5},
        {"max_tokens": "100"},
        {"max_completion_tokens": 0},
        {"options": {"num_predict": -1}},  # Ollama's "unbounded": the default cap is charged
        {"options": {"num_predict": -2}},
        {"options": {"num_predict": False}},
        {"options": "nope"},
        {"options": {"temperature": 0.1}},
    ],
)
def test_the_default_cap_is_charged_when_no_usable_cap_is_given(fields: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    body = {"model": "m", "messages": messages, **fields}
    for route in ("chat.completions", "ollama.chat"):
        assert charge(body, route=route) == prompt_tokens(body) + DEFAULT
        assert charge(body, route=route, default=DEFAULT_OUTPUT_CAP) == prompt_tokens(body) + 4096


@given(texts, caps)
def test_embeddings_charge_no_output(text: str, cap: int) -> None:
    for route, body in bodies_with(text):
        if LIMITED_ROUTES[route]:
            continue
        with_cap = {**body, "max_tokens": cap, "options": {"num_predict": cap}}
        assert charge(with_cap, generates=False) == charge(body, generates=False)
        assert charge(body, generates=False) == PROMPT_OVERHEAD + sum(
            estimate_text(t) for t in _inputs(body)
        )


def _inputs(body: dict[str, Any]) -> list[str]:
    value = body.get("input", body.get("prompt"))
    return [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)]


def test_which_routes_are_charged_and_which_generate() -> None:
    assert {r for r, g in LIMITED_ROUTES.items() if not g} == {
        "embeddings",
        "ollama.embed",
        "ollama.embeddings",
    }
    assert {r for r, g in LIMITED_ROUTES.items() if g} == {
        "anthropic.messages",
        "chat.completions",
        "completions",
        "responses",
        "ollama.chat",
        "ollama.generate",
    }


@given(st.binary(max_size=300))
def test_a_body_that_is_not_a_json_object_is_charged_by_its_size(raw: bytes) -> None:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return
    assert charge(raw) == estimate_text(raw.decode("utf-8", "replace"))
    assert charge(raw) >= ceil_div(len(raw), 4)


def test_tools_are_part_of_the_prompt() -> None:
    messages = [{"role": "user", "content": "weather?"}]
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    with_tools = charge({"model": "m", "messages": messages, "tools": [tool], "max_tokens": 1})
    without = charge({"model": "m", "messages": messages, "max_tokens": 1})
    assert with_tools > without


# ---- gaps against docs/rate-limiting.md, "Committing: estimates reconciled" ---------------


def test_a_generate_context_is_charged() -> None:
    context = list(range(5000))  # 5,000 real prompt tokens
    body = {"model": "m", "prompt": "and then?", "context": context, "options": {"num_predict": 1}}
    assert charge(body) >= len(context)


def test_n_choices_multiply_the_output_cap() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 4, "max_tokens": 100}
    assert charge(body) >= 4 * 100
