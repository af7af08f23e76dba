"""Token estimates made before a request is sent: upper bounds, monotone, exact rules.

The rules (accounting/tokens.py): ceil(UTF-8 bytes / 2) per text; 8 per message; 16 per
prompt; 1,024 per image; JSON (tool schemas, tool calls) by its rendered
length.  The properties: the estimate never falls below ceil(bytes / 4) of
any text the prompt contains (about what real BPE tokenizers spend on
English and code: real counts sit at 3.5-4.5 bytes per token), and more
text never costs less.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.accounting.tokens import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    PROMPT_OVERHEAD,
    estimate_messages,
    estimate_text,
    estimate_texts,
)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
roles = st.sampled_from(["system", "user", "assistant", "tool"])


# ---- one text -------------------------------------------------------------------


@given(texts)
def test_a_text_costs_half_its_utf8_bytes_rounded_up(text: str) -> None:
    assert estimate_text(text) == ceil_div(nbytes(text), 2)


@given(texts)
def test_a_text_never_costs_less_than_a_token_per_four_bytes(text: str) -> None:
    assert estimate_text(text) >= ceil_div(nbytes(text), 4)


@given(texts, texts)
def test_more_text_never_costs_less(text: str, more: str) -> None:
    assert estimate_text(text + more) >= estimate_text(text)
    assert estimate_text(more + text) >= estimate_text(text)


@given(texts, texts)
def test_longer_in_bytes_never_costs_less(a: str, b: str) -> None:
    if nbytes(a) <= nbytes(b):
        assert estimate_text(a) <= estimate_text(b)


def test_known_values() -> None:
    assert estimate_text("") == 0
    assert estimate_text("a") == 1
    assert estimate_text("abcd") == 2
    assert estimate_text("é") == 1  # 2 bytes
    assert estimate_text("中") == 2  # 3 bytes
    assert estimate_text("🙂") == 2  # 4 bytes


@given(st.lists(texts, max_size=6))
def test_several_texts_add_up_plus_the_prompt_overhead(parts: list[str]) -> None:
    assert estimate_texts(parts) == PROMPT_OVERHEAD + sum(estimate_text(t) for t in parts)
    assert estimate_texts(parts) >= ceil_div(sum(nbytes(t) for t in parts), 4)


# ---- chat messages, either wire format -------------------------------------------------


messages = st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), max_size=6)


@given(messages)
def test_messages_cost_their_text_plus_fixed_overheads(msgs: list[dict[str, Any]]) -> None:
    expected = PROMPT_OVERHEAD + sum(MESSAGE_OVERHEAD + estimate_text(m["content"]) for m in msgs)
    assert estimate_messages(msgs) == expected
    assert estimate_messages(msgs) >= ceil_div(sum(nbytes(m["content"]) for m in msgs), 4)


@given(messages, st.fixed_dictionaries({"role": roles, "content": texts}))
def test_one_more_message_never_costs_less(
    msgs: list[dict[str, Any]], extra: dict[str, Any]
) -> None:
    assert estimate_messages([*msgs, extra]) >= estimate_messages(msgs) + MESSAGE_OVERHEAD


@given(messages, st.integers(0, 5), texts)
def test_longer_content_never_costs_less(msgs: list[dict[str, Any]], at: int, more: str) -> None:
    if not msgs:
        return
    i = at % len(msgs)
    longer = [dict(m) for m in msgs]
    longer[i]["content"] = msgs[i]["content"] + more
    assert estimate_messages(longer) >= estimate_messages(msgs)


@given(texts, st.integers(0, 4), st.integers(0, 4), st.integers(0, 3))
def test_images_are_counted_in_every_form(
    text: str, openai_parts: int, native: int, extra: int
) -> None:
    """OpenAI content parts (``image_url``, ``input_image``), Ollama's
    ``images`` list on a message, and the caller's ``images=`` count."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [
        {"type": "image_url" if i % 2 else "input_image", "image_url": {"url": "data:,x"}}
        for i in range(openai_parts)
    ]
    openai_msg = {"role": "user", "content": parts}
    native_msg = {"role": "user", "content": text, "images": ["aGk="] * native}
    base = PROMPT_OVERHEAD + MESSAGE_OVERHEAD + estimate_text(text)
    assert estimate_messages([openai_msg]) == base + IMAGE_TOKENS * openai_parts
    assert estimate_messages([native_msg]) == base + IMAGE_TOKENS * native
    assert estimate_messages([native_msg], images=extra) == base + IMAGE_TOKENS * (native + extra)


def test_content_parts_that_are_not_text_or_images_are_charged_by_their_text() -> None:
    # Every forwarded part counts (issue 17 item 3): "abcd" 2, "junk" 2, {"type": "x"} 2 + 1.
    msg = {"role": "user", "content": [{"type": "text", "text": "abcd"}, "junk", {"type": "x"}]}
    assert estimate_messages([msg]) == PROMPT_OVERHEAD + MESSAGE_OVERHEAD + 2 + 2 + 3
    assert estimate_messages([{"role": "assistant", "content": None}]) == (
        PROMPT_OVERHEAD + MESSAGE_OVERHEAD
    )
    long_role = {"role": "r" * 100, "content": ""}  # 50 tokens, 8 of them in the overhead
    assert estimate_messages([long_role]) == PROMPT_OVERHEAD + MESSAGE_OVERHEAD + 42


ascii_text = st.text(alphabet=st.characters(codec="ascii"), max_size=300)


@given(ascii_text)
def test_tool_calls_and_tool_schemas_are_charged(arg: str) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arg}}
    tool = {"type": "function", "function": {"name": "f", "description": arg, "parameters": {}}}
    plain = estimate_messages([{"role": "assistant", "content": ""}])
    with_call = estimate_messages([{"role": "assistant", "content": "", "tool_calls": [call]}])
    with_tool = estimate_messages([{"role": "assistant", "content": ""}], tools=[tool])
    assert with_call - plain >= ceil_div(nbytes(orjson.dumps(call).decode()), 4)
    assert with_tool - plain >= ceil_div(nbytes(orjson.dumps(tool).decode()), 4)


def test_non_ascii_tool_calls_are_charged_by_their_bytes() -> None:
    arguments = orjson.dumps({"query": "東京の天気" * 200}).decode()
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    tool = {"type": "function", "function": {"name": "f", "description": "説明" * 500}}
    msg = {"role": "assistant", "content": "", "tool_calls": [call]}
    assert estimate_messages([msg]) >= ceil_div(nbytes(arguments), 4)
    tools_bytes = nbytes(orjson.dumps(tool).decode())
    assert estimate_messages([{"role": "user", "content": ""}], tools=[tool]) >= ceil_div(
        tools_bytes, 4
    )
