"""The Anthropic Messages parser, its errors, and the request translation to chat."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.anthropic_over_chat.request import (
    count_tokens_estimate,
    effort_for_budget,
    messages_to_chat,
    messages_to_chat_body,
)
from sansio_gateway.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)
from sansio_gateway.wire.anthropic import (
    ImageBlock,
    Message,
    MessagesRequest,
    TextBlock,
    ThinkingBlock,
    Tool,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
    anthropic_status_and_type,
    parse_count_tokens_request,
    parse_messages_request,
    render_anthropic_error,
)
from tests.chat_answers import PROPERTY

BASE: dict[str, Any] = {"model": "claude-x", "max_tokens": 64,
                        "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}
TOOL = {"name": "f", "description": "does f", "input_schema": {"type": "object"}}


def parse(**fields: Any) -> MessagesRequest:
    return parse_messages_request(orjson.dumps({**BASE, **fields}))


def refused(match: str, **fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest, match=match) as caught:
        parse(**fields)
    return caught.value


# -- accepted and mapped -----------------------------------------------------------------


def test_the_smallest_request() -> None:
    req = parse()
    assert req == MessagesRequest(model="claude-x", max_tokens=64,
                                  messages=(Message(role="user", content=(TextBlock(text="hi"),)),))  # fmt: skip
    assert messages_to_chat_body(req) == {
        "model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]
    }  # fmt: skip


def test_every_sampling_field_is_mapped() -> None:
    req = parse(temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["END"],
                metadata={"user_id": "u1"}, stream=True)  # fmt: skip
    body = messages_to_chat_body(req)
    assert body | {"messages": None} == {
        "model": "claude-x", "max_tokens": 64, "messages": None, "temperature": 0.5,
        "top_p": 0.9, "top_k": 40, "stop": ["END"], "user": "u1", "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    chat = messages_to_chat(req)
    assert (chat.temperature, chat.top_p, chat.stop, chat.user) == (0.5, 0.9, ("END",), "u1")
    assert chat.native_options == {"top_k": 40} and chat.include_usage


def test_system_as_string_or_blocks() -> None:
    blocks = [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "b"}]  # fmt: skip
    assert chat_of(system="sys")[0] == {"role": "system", "content": "sys"}
    assert chat_of(system=blocks)[0] == {"role": "system", "content": "a\nb"}
    assert chat_of(system="")[0]["role"] == "user"


def chat_of(**fields: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = messages_to_chat_body(parse(**fields))["messages"]
    return messages


def test_a_tool_round_trip_conversation() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"q": 1}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}]},
            {"type": "tool_result", "tool_use_id": "t2", "content": "bad", "is_error": True},
            {"type": "text", "text": "thanks"},
        ]},
    ]  # fmt: skip
    assert chat_of(messages=messages, tools=[TOOL]) == [
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
        ]},
        {"role": "assistant", "content": "calling", "reasoning_content": "hmm", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"q":1}'}},
        ]},
        {"role": "tool", "tool_call_id": "t1", "content": "42"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: bad"},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip


def test_an_assistant_turn_of_only_thinking_has_empty_content() -> None:
    messages = [{"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"}]}]  # fmt: skip
    assert chat_of(messages=messages)[1] == {
        "role": "assistant", "content": "", "reasoning_content": "t"
    }  # fmt: skip


def test_redacted_thinking_is_accepted_and_left_out_of_the_chat_dialect() -> None:
    turn = [{"type": "redacted_thinking", "data": "Enc..."}, {"type": "thinking", "thinking": "t"},
            {"type": "text", "text": "a"}]  # fmt: skip
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": turn}]
    assert chat_of(messages=messages)[1] == {
        "role": "assistant", "content": "a", "reasoning_content": "t"
    }  # fmt: skip


def test_a_user_turn_of_nothing_is_an_empty_user_message() -> None:
    assert chat_of(messages=[{"role": "user", "content": []}]) == [{"role": "user", "content": ""}]


@pytest.mark.parametrize(
    ("choice", "chat_choice", "forced"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any"}, "required", "f"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}, "f"),
        ({"type": "none"}, "none", None),
    ],
)
def test_tool_choice(choice: dict[str, Any], chat_choice: Any, forced: str | None) -> None:
    req = parse(tools=[TOOL], tool_choice=choice)
    body = messages_to_chat_body(req)
    assert body["tool_choice"] == chat_choice
    assert body["tools"] == [{"type": "function", "function": {
        "name": "f", "description": "does f", "parameters": {"type": "object"}}}]  # fmt: skip
    chat = messages_to_chat(req)
    assert (chat.forced_tool.name if chat.forced_tool else None) == forced
    assert chat.tools == (() if choice["type"] == "none" else tuple(body["tools"]))


def test_disable_parallel_tool_use() -> None:
    req = parse(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert messages_to_chat_body(req)["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "disabled"}, "none"),
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, "medium"),
        ({"type": "enabled", "budget_tokens": 16384}, "high"),
    ],
)
def test_thinking_becomes_reasoning_effort(thinking: dict[str, Any], effort: str) -> None:
    req = parse(thinking=thinking, max_tokens=32000)
    assert messages_to_chat(req).reasoning_effort == effort
    assert effort_for_budget(req.thinking_budget or 0) == effort


def test_cache_control_is_accepted_everywhere_and_changes_nothing() -> None:
    cc = {"cache_control": {"type": "ephemeral"}}
    with_cc = parse(
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi", **cc}]}],
        tools=[{**TOOL, **cc}],
    )
    assert with_cc == parse(messages=[{"role": "user", "content": "hi"}], tools=[TOOL])


def test_count_tokens_takes_no_max_tokens_and_answers_an_estimate() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [IMAGE]}], "tools": [TOOL]}
    req = parse_count_tokens_request(orjson.dumps(body))
    assert req.max_tokens == 0
    estimate = count_tokens_estimate(req)["input_tokens"]
    assert estimate > 1024  # an image alone is charged 1,024
    with pytest.raises(InvalidRequest, match="max_tokens: Extra inputs"):
        parse_count_tokens_request(orjson.dumps({**body, "max_tokens": 5}))


# -- refused, with which message -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "match"),
    [
        ({"max_tokens": None}, "max_tokens", "Field required"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": True}, "max_tokens", "valid integer"),
        ({"model": ""}, "model", "at least 1 character"),
        ({"messages": []}, "messages", "at least 1 item"),
        ({"frequency_penalty": 1}, "frequency_penalty", "Extra inputs are not permitted"),
        ({"mcp_servers": []}, "mcp_servers", "not supported by this gateway"),
        ({"container": "c"}, "container", "not supported by this gateway"),
        ({"temperature": 1.5}, "temperature", "between 0 and 1"),
        ({"top_p": "x"}, "top_p", "valid number"),
        ({"top_k": 0}, "top_k", "greater than or equal to 1"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"stop_sequences": ["a"] * 5}, "stop_sequences", "at most 4"),
        ({"stop_sequences": [1]}, "stop_sequences.0", "valid string"),
        ({"metadata": {"tag": "x"}}, "metadata.tag", "Extra inputs"),
        ({"metadata": {"user_id": 3}}, "metadata.user_id", "valid string"),
        ({"system": [{"type": "image"}]}, "system.0.type", "Input should be 'text'"),
        ({"system": 5}, "system", "valid list"),
        ({"thinking": {"type": "enabled", "budget_tokens": 500}}, "thinking.budget_tokens",
         "greater than or equal to 1024"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "max_tokens",
         "must be greater than `thinking.budget_tokens`"),
        ({"thinking": {"type": "adaptive"}}, "thinking.type", "Input should be"),
        ({"thinking": {"type": "disabled", "budget_tokens": 2000}}, "thinking.budget_tokens",
         "Extra inputs"),
    ],
)  # fmt: skip
def test_refused_top_level_fields(fields: dict[str, Any], param: str, match: str) -> None:
    body = {k: v for k, v in {**BASE, **fields}.items() if v is not None}
    with pytest.raises(InvalidRequest, match=match) as caught:
        parse_messages_request(orjson.dumps(body))
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")


def msg(role: str, *blocks: Any) -> dict[str, Any]:
    return {"role": role, "content": list(blocks)}


@pytest.mark.parametrize(
    ("messages", "param", "match"),
    [
        ([{"role": "system", "content": "x"}], "messages.0.role", "Input should be"),
        ([{"role": "user"}], "messages.0.content", "Field required"),
        ([{"role": "user", "content": "x", "name": "n"}], "messages.0.name", "Extra inputs"),
        ([msg("user", {"type": "image", "source": {"type": "url", "url": "http://x/i.png"}})],
         "messages.0.content.0.source.type", "send the image as base64"),
        ([msg("user", {"type": "image", "source": {"type": "file", "file_id": "f"}})],
         "messages.0.content.0.source.type", "not supported"),
        ([msg("user", {**IMAGE, "source": {**IMAGE["source"], "media_type": "image/bmp"}})],
         "messages.0.content.0.source.media_type", "Input should be"),
        ([msg("user", {"type": "tool_use", "id": "a", "name": "f", "input": {}})],
         "messages.0.content.0.type", "not allowed in user messages"),
        ([msg("assistant", IMAGE)], "messages.0.content.0.type", "not allowed in assistant"),
        ([msg("assistant", {"type": "tool_use", "id": "a", "name": "f", "input": "{}"})],
         "messages.0.content.0.input", "valid dictionary"),
        ([msg("user", {"type": "tool_result", "tool_use_id": "a", "content": [IMAGE]})],
         "messages.0.content.0.content.0.type", "text blocks only"),
        ([msg("user", {"type": "tool_result", "tool_use_id": "a", "is_error": "y"})],
         "messages.0.content.0.is_error", "valid boolean"),
        ([msg("assistant", {"type": "redacted_thinking", "data": 1})],
         "messages.0.content.0.data", "valid string"),
        ([msg("assistant", {"type": "redacted_thinking", "data": "x", "more": 1})],
         "messages.0.content.0.more", "Extra inputs"),
        ([msg("user", {"type": "document", "source": {}})], "messages.0.content.0.type",
         "Input should be"),
        ([msg("user", {"type": "text", "text": "x", "citations": [{}]})],
         "messages.0.content.0.citations", "not supported"),
        ([msg("user", {"type": "text", "text": "x", "extra": 1})],
         "messages.0.content.0.extra", "Extra inputs"),
    ],
)  # fmt: skip
def test_refused_blocks(messages: list[Any], param: str, match: str) -> None:
    assert refused(match, messages=messages).param == param


@pytest.mark.parametrize(
    ("fields", "param", "match"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type",
         "server tool 'web_search_20250305' is not supported"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type", "server tool"),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema", "Field required"),
        ({"tools": [{**TOOL, "name": ""}]}, "tools.0.name", "at least 1 character"),
        ({"tools": [{**TOOL, "strict": True}]}, "tools.0.strict", "Extra inputs"),
        ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "g"}}, "tool_choice.name",
         "Tool 'g' not found"),
        ({"tool_choice": {"type": "any"}}, "tool_choice", "requires tools"),
        ({"tools": [TOOL], "tool_choice": {"type": "required"}}, "tool_choice.type",
         "Input should be"),
        ({"tools": [TOOL], "tool_choice": {"type": "auto", "name": "f"}}, "tool_choice.name",
         "Extra inputs"),
        ({"tools": [TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": 1}},
         "tool_choice.disable_parallel_tool_use", "valid boolean"),
    ],
)  # fmt: skip
def test_refused_tools(fields: dict[str, Any], param: str, match: str) -> None:
    assert refused(match, **fields).param == param


@pytest.mark.parametrize("body", [b"{", b"[]", b'"x"'])
def test_a_body_that_is_not_an_object(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="JSON"):
        parse_messages_request(body)


# -- errors in Anthropic's envelope ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "type_"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (Unauthorized("no key"), 401, "authentication_error"),
        (GatewayError("forbidden", status_code=403), 403, "permission_error"),
        (NotFound("no model"), 404, "not_found_error"),
        (GatewayError("too big", status_code=413), 413, "request_too_large"),
        (GatewayError("slow down", status_code=429), 429, "rate_limit_error"),
        (ServiceUnavailable("busy"), 529, "overloaded_error"),
        (UpstreamError("broke"), 502, "api_error"),
        (UpstreamTimeout("slow"), 504, "api_error"),
        (GatewayError("bug"), 500, "api_error"),
        (GatewayError("teapot", status_code=418), 418, "invalid_request_error"),
    ],
)
def test_error_types_and_statuses(error: GatewayError, status: int, type_: str) -> None:
    assert anthropic_status_and_type(error) == (status, type_)
    assert orjson.loads(render_anthropic_error(error)) == {
        "type": "error", "error": {"type": type_, "message": error.message}
    }  # fmt: skip


# -- round trip: Anthropic -> chat -> Anthropic ------------------------------------------------

_texts = st.text(min_size=1, max_size=12)
_ids = st.text("abc123", min_size=1, max_size=6)
# orjson reads integers outside 64 bits as floats, so parsed inputs never hold them.
_ints = st.integers(-(2**63), 2**64 - 1)
_inputs = st.dictionaries(st.text("xyz", min_size=1, max_size=3), _ints | _texts, max_size=2)


@st.composite
def _user(draw: st.DrawFn) -> Message:
    results = draw(st.lists(st.builds(ToolResultBlock, tool_use_id=_ids, text=_texts), max_size=2))
    rest = draw(st.lists(st.builds(TextBlock, text=_texts) | st.builds(
        ImageBlock, media_type=st.sampled_from(("image/png", "image/gif")), data=_ids),
        min_size=0 if results else 1, max_size=3))  # fmt: skip
    return Message(role="user", content=(*results, *rest))


@st.composite
def _assistant(draw: st.DrawFn) -> Message:
    blocks: list[Any] = []
    if draw(st.booleans()):
        blocks.append(ThinkingBlock(thinking=draw(_texts)))
    if draw(st.booleans()):
        blocks.append(TextBlock(text=draw(_texts)))
    calls = draw(st.lists(st.builds(ToolUseBlock, id=_ids, name=_ids, input=_inputs), max_size=2))
    return Message(role="assistant", content=(*blocks, *calls) or (TextBlock(text="ok"),))


@st.composite
def requests(draw: st.DrawFn) -> MessagesRequest:
    turns = draw(st.integers(1, 4))
    messages = [draw(_user()) if k % 2 == 0 else draw(_assistant()) for k in range(turns)]
    tools = tuple(draw(st.lists(st.builds(Tool, name=_ids, description=st.none() | _texts,
                                          input_schema=st.just({"type": "object"})),
                                max_size=2, unique_by=lambda t: t.name)))  # fmt: skip
    return MessagesRequest(
        model=draw(_ids),
        messages=tuple(messages),
        max_tokens=draw(st.integers(1, 10**5)),
        system=tuple(draw(st.lists(st.builds(TextBlock, text=_texts), max_size=1))),
        stop_sequences=tuple(draw(st.lists(_texts, max_size=4))),
        temperature=draw(st.none() | st.floats(0, 1)),
        top_p=draw(st.none() | st.floats(0, 1)),
        top_k=draw(st.none() | st.integers(1, 100)),
        user_id=draw(st.none() | _ids),
        tools=tools,
        tool_choice=draw(
            st.none()
            | st.sampled_from(
                [ToolChoice(type="auto"), ToolChoice(type="none")]
                + [ToolChoice(type="tool", name=t.name) for t in tools]
            )
        ),
    )


def back_to_anthropic(body: dict[str, Any]) -> MessagesRequest:
    """The inverse of the translation, for the fields that map both ways."""
    chat = list(body["messages"])
    system = ()
    if chat and chat[0]["role"] == "system":
        system = (TextBlock(text=chat.pop(0)["content"]),)
    messages: list[Message] = []
    for m in chat:
        role = "assistant" if m["role"] == "assistant" else "user"
        blocks = _assistant_blocks(m) if role == "assistant" else _user_blocks(m)
        if messages and role == "user" and messages[-1].role == "user":
            messages[-1] = Message(role="user", content=(*messages[-1].content, *blocks))
        else:
            messages.append(Message(role=role, content=blocks))
    choice = body.get("tool_choice")
    return MessagesRequest(
        model=body["model"], messages=tuple(messages), max_tokens=body["max_tokens"],
        system=system, stop_sequences=tuple(body.get("stop", ())),
        temperature=body.get("temperature"), top_p=body.get("top_p"), top_k=body.get("top_k"),
        user_id=body.get("user"),
        tools=tuple(Tool(name=t["function"]["name"],
                         description=t["function"].get("description"),
                         input_schema=t["function"]["parameters"])
                    for t in body.get("tools", ())),
        tool_choice=None if choice is None else (
            ToolChoice(type="tool", name=choice["function"]["name"]) if type(choice) is dict
            else ToolChoice(type=choice)),
    )  # fmt: skip


def _user_blocks(m: dict[str, Any]) -> tuple[Any, ...]:
    if m["role"] == "tool":
        return (ToolResultBlock(tool_use_id=m["tool_call_id"], text=m["content"]),)
    if type(m["content"]) is str:
        return (TextBlock(text=m["content"]),)
    out: list[Any] = []
    for p in m["content"]:
        if p["type"] == "text":
            out.append(TextBlock(text=p["text"]))
        else:
            media, data = p["image_url"]["url"].removeprefix("data:").split(";base64,")
            out.append(ImageBlock(media_type=media, data=data))
    return tuple(out)


def _assistant_blocks(m: dict[str, Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    if "reasoning_content" in m:
        out.append(ThinkingBlock(thinking=m["reasoning_content"]))
    if m["content"]:
        out.append(TextBlock(text=m["content"]))
    for call in m.get("tool_calls", ()):
        f = call["function"]
        out.append(ToolUseBlock(id=call["id"], name=f["name"], input=orjson.loads(f["arguments"])))
    return tuple(out)


@PROPERTY
@given(requests())
def test_a_request_round_trips_through_the_chat_dialect(req: MessagesRequest) -> None:
    body = messages_to_chat_body(req)
    assert back_to_anthropic(body) == req
    # ... and the chat parser accepts the translation as it is.
    messages_to_chat(req)
