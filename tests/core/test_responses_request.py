"""The Responses parser and the request translation to chat."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.errors import InvalidRequest
from sansio_gateway.responses_over_chat.request import responses_to_chat, responses_to_chat_body
from sansio_gateway.wire.openai_responses import (
    FunctionCall,
    FunctionCallOutput,
    InputMessage,
    Reasoning,
    ResponsesRequest,
    parse_responses_request,
)
from tests.chat_answers import PROPERTY

BASE: dict[str, Any] = {"model": "gpt-x", "input": "hi"}
TOOL = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}
CHAT_TOOL = {"type": "function",
             "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}  # fmt: skip


def parse(**fields: Any) -> ResponsesRequest:
    return parse_responses_request(orjson.dumps({**BASE, **fields}))


def body_of(**fields: Any) -> dict[str, Any]:
    return responses_to_chat_body(parse(**fields))


def test_a_string_input_is_one_user_message() -> None:
    req = parse()
    assert req == ResponsesRequest(model="gpt-x", items=(InputMessage(role="user", content="hi"),))
    assert responses_to_chat_body(req) == {
        "model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]
    }  # fmt: skip


def test_every_mapped_field() -> None:
    body = body_of(
        instructions="be brief", max_output_tokens=99, temperature=1.5, top_p=0.5, user="u",
        reasoning={"effort": "high", "summary": "auto"}, stream=True, tools=[TOOL],
        tool_choice="required", parallel_tool_calls=False, metadata={"k": "v"},
        text={"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"},
                         "strict": True}, "verbosity": "low"},
        store=False, include=["reasoning.encrypted_content"], prompt_cache_key="p",
        truncation="disabled", service_tier="auto", stream_options={"include_obfuscation": False},
    )  # fmt: skip
    assert body == {
        "model": "gpt-x",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 99,
        "temperature": 1.5, "top_p": 0.5, "user": "u", "reasoning_effort": "high",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "o", "schema": {"type": "object"}, "strict": True}},
        "tool_choice": "required", "parallel_tool_calls": False, "tools": [CHAT_TOOL],
    }  # fmt: skip
    chat = responses_to_chat(parse_responses_request(orjson.dumps({**BASE, "tools": [TOOL],
                                                                   "tool_choice": "required"})))  # fmt: skip
    assert chat.forced_tool is not None and chat.forced_tool.name == "f"


def test_safety_identifier_stands_in_for_user() -> None:
    assert body_of(safety_identifier="s")["user"] == "s"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [({"type": "text"}, None), ({"type": "json_object"}, {"type": "json_object"})],
)
def test_text_formats(fmt: dict[str, Any], expected: Any) -> None:
    assert body_of(text={"format": fmt}).get("response_format") == expected


@pytest.mark.parametrize(
    ("choice", "chat_choice"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ({"type": "function", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f"}]},
         {"type": "allowed_tools", "allowed_tools": {
             "mode": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]}}),
    ],
)  # fmt: skip
def test_tool_choice(choice: Any, chat_choice: Any) -> None:
    body = body_of(tools=[TOOL], tool_choice=choice)
    assert body["tool_choice"] == chat_choice
    responses_to_chat(parse(tools=[TOOL], tool_choice=choice))


def test_a_function_call_round_trip_conversation() -> None:
    items = [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look "},
            {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"},
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "zzz",
         "content": [{"type": "reasoning_text", "text": "hmm"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "calling", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "function_call_output", "call_id": "c2",
         "output": [{"type": "input_text", "text": "4"}, {"type": "input_text", "text": "3"}]},
        {"type": "function_call", "call_id": "c3", "name": "f", "arguments": "{}"},
    ]  # fmt: skip
    req = parse(input=items, tools=[TOOL])
    assert req.items[2] == Reasoning(text="hmm")
    assert req.items[4] == FunctionCall(call_id="c1", name="f", arguments="{}")
    assert req.items[7] == FunctionCallOutput(call_id="c2", output="43")
    call = {"type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert responses_to_chat_body(req)["messages"] == [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [
            {"type": "text", "text": "look "},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA",
                                                "detail": "low"}},
        ]},
        {"role": "assistant", "content": "calling", "reasoning_content": "hmm", "tool_calls": [
            {"id": "c1", **call},
            {"id": "c2", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "tool", "tool_call_id": "c2", "content": "43"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c3", **call}]},
    ]  # fmt: skip
    responses_to_chat(req)


def test_text_parts_join_into_one_string() -> None:
    req = parse(input=[{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                                   {"type": "input_text", "text": "b"}]}])  # fmt: skip
    assert req.items == (InputMessage(role="user", content="ab"),)


# -- refused -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "match"),
    [
        ({"store": True}, "store", "keeps no conversation state"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "keeps no conversation"),
        ({"conversation": "conv_1"}, "conversation", "keeps no conversation state"),
        ({"background": True}, "background", "keeps no conversation state"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type",
         "keeps no conversation state"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "built-in tool 'web_search'"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type",
         "built-in tool"),
        ({"tools": [{"type": "computer_use_preview"}]}, "tools[0].type", "built-in tool"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type", "built-in tool"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "g"}}, "tool_choice",
         "no function named 'g'"),
        ({"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                           "tools": [{"type": "function", "name": "g"}]}},
         "tool_choice", "no function named 'g'"),
        ({"tool_choice": "sometimes"}, "tool_choice", "Supported values"),
        ({"max_tool_calls": 3}, "max_tool_calls", "cannot honour"),
        ({"top_logprobs": 3}, "top_logprobs", "cannot honour"),
        ({"prompt": {"id": "p"}}, "prompt", "cannot honour"),
        ({"include": ["file_search_call.results"]}, "include[0]", "cannot be produced"),
        ({"truncation": "auto"}, "truncation", "Supported values"),
        ({"frequency_penalty": 1}, "frequency_penalty", "Unrecognized request argument"),
        ({"model": None}, "model", "Missing required parameter"),
        ({"input": None}, "input", "Missing required parameter"),
        ({"input": 5}, "input", "expected an array"),
        ({"max_output_tokens": 0}, "max_output_tokens", "below minimum"),
        ({"temperature": 3}, "temperature", "between 0 and 2"),
        ({"top_p": "x"}, "top_p", "expected a decimal"),
        ({"metadata": {"k": 1}}, "metadata.k", "expected a string"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort", "Supported values"),
        ({"reasoning": {"budget": 1}}, "reasoning.budget", "Unknown parameter"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name",
         "Missing required"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "Supported values"),
        ({"text": {"verbosity": "loud"}}, "text.verbosity", "Supported values"),
        ({"stream": "yes"}, "stream", "expected a boolean"),
    ],
)  # fmt: skip
def test_refused_fields(fields: dict[str, Any], param: str, match: str) -> None:
    body = {k: v for k, v in {**BASE, **fields}.items() if v is not None}
    with pytest.raises(InvalidRequest, match=match) as caught:
        parse_responses_request(orjson.dumps(body))
    assert caught.value.param == param and caught.value.status_code == 400


@pytest.mark.parametrize(
    ("item", "param", "match"),
    [
        ({"role": "tool", "content": "x"}, "input[0].role", "Supported values"),
        ({"role": "user"}, "input[0].content", "Missing required"),
        ({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]},
         "input[0].content[0].type", "file inputs cannot be forwarded"),
        ({"role": "user", "content": [{"type": "input_image", "file_id": "f"}]},
         "input[0].content[0].file_id", "no file storage"),
        ({"role": "system", "content": [{"type": "input_image", "image_url": "x"}]},
         "input[0].content[0].type", "not allowed here"),
        ({"type": "function_call", "call_id": "c", "name": "f"}, "input[0].arguments",
         "Missing required"),
        ({"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]},
         "input[0].output[0].type", "input_text parts only"),
        ({"type": "web_search_call", "id": "ws"}, "input[0].type", "not supported"),
    ],
)  # fmt: skip
def test_refused_items(item: dict[str, Any], param: str, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match) as caught:
        parse(input=[item])
    assert caught.value.param == param


@pytest.mark.parametrize("body", [b"{", b"[]"])
def test_a_body_that_is_not_an_object(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="JSON"):
        parse_responses_request(body)


# -- round trip: Responses -> chat -> Responses -----------------------------------------------

_texts = st.text(min_size=1, max_size=10)
_ids = st.text("abc123", min_size=1, max_size=5)
_items = st.one_of(
    st.builds(InputMessage, role=st.sampled_from(("user", "system", "developer")), content=_texts),
    st.builds(FunctionCallOutput, call_id=_ids, output=_texts),
)


@st.composite
def _turn(draw: st.DrawFn) -> list[Any]:
    """One assistant turn: text and/or calls, or one of the other items."""
    if draw(st.booleans()):
        return [draw(_items)]
    out: list[Any] = []
    if draw(st.booleans()):
        out.append(InputMessage(role="assistant", content=draw(_texts)))
    calls = draw(st.lists(st.builds(FunctionCall, call_id=_ids, name=_ids, arguments=_texts),
                          min_size=0 if out else 1, max_size=2))  # fmt: skip
    return out + calls


def back_to_items(messages: list[dict[str, Any]]) -> tuple[Any, ...]:
    out: list[Any] = []
    for m in messages:
        if m["role"] == "tool":
            out.append(FunctionCallOutput(call_id=m["tool_call_id"], output=m["content"]))
            continue
        if m["content"] is not None:
            out.append(InputMessage(role=m["role"], content=m["content"]))
        for c in m.get("tool_calls", ()):
            f = c["function"]
            out.append(FunctionCall(call_id=c["id"], name=f["name"], arguments=f["arguments"]))
    return tuple(out)


@PROPERTY
@given(st.lists(_turn(), min_size=1, max_size=4))
def test_input_items_round_trip_through_the_chat_dialect(turns: list[list[Any]]) -> None:
    items = tuple(item for turn in turns for item in turn)
    req = ResponsesRequest(model="m", items=items)
    assert back_to_items(responses_to_chat_body(req)["messages"]) == items
    responses_to_chat(req)


def test_a_json_schema_format_keeps_its_description() -> None:
    fmt = {"type": "json_schema", "name": "o", "schema": {}, "description": "the output"}
    assert body_of(text={"format": fmt})["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "o", "schema": {}, "description": "the output"}
    }  # fmt: skip


def test_an_image_without_detail() -> None:
    part = {"type": "input_image", "image_url": "data:image/png;base64,AA"}
    req = parse(input=[{"role": "user", "content": [part]}])
    assert req.items[0] == InputMessage(
        role="user", content=({"type": "image_url", "image_url": {"url": part["image_url"]}},)
    )
