"""The Anthropic whole-answer and stream translators, and their agreement.

The grammar checker encodes Anthropic's streaming event order: one
``message_start``; then content blocks, each ``content_block_start`` (index
0, 1, ...), deltas of the block's own kind, ``content_block_stop``; then
``message_delta`` and ``message_stop``.  ``ping`` may come anywhere after
the start, and an ``error`` event ends the stream wherever it comes (it
may be the only event, when the backend failed before its first chunk).
"""

from __future__ import annotations

from typing import Any

import httpx2 as httpx  # the anthropic SDK runs on httpx2
import orjson
import pytest
from anthropic import Anthropic, APIStatusError
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.anthropic_over_chat.response import chat_to_message, stop_reason, tool_input
from sansio_gateway.anthropic_over_chat.stream import ChatToMessagesStream
from sansio_gateway.errors import UpstreamError
from sansio_gateway.framing import SSEDecoder
from tests.chat_answers import PROPERTY, Answer, answers, chunkings, decode_events

STOPS = ("STOP",)
_DELTA_FOR = {"text": "text_delta", "thinking": "thinking_delta", "tool_use": "input_json_delta"}


def check_grammar(events: list[tuple[str | None, Any]]) -> None:
    if len(events) == 1 and events[0][0] == "error":  # failed before the backend said anything
        return
    assert events and events[0][0] == "message_start"
    state, index, kind = "between", 0, ""
    for name, payload in events[1:]:
        assert state != "end", f"{name} after message_stop"
        assert name == payload["type"]
        if name == "error":
            assert (name, payload) == events[-1]
            return
        if name == "ping":
            continue
        if state == "between" and name == "content_block_start":
            assert payload["index"] == index
            state, kind = "in", payload["content_block"]["type"]
        elif state == "between":
            assert name == "message_delta"
            state = "delta"
        elif state == "in" and name == "content_block_delta":
            assert payload["index"] == index and payload["delta"]["type"] == _DELTA_FOR[kind]
        elif state == "in":
            assert name == "content_block_stop" and payload["index"] == index
            state, index = "between", index + 1
        else:
            assert name == "message_stop"
            state = "end"
    assert state == "end"


def accumulate(events: list[tuple[str | None, Any]]) -> dict[str, Any]:
    """The message a client builds from the events (what the SDK does)."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for _, event in events:
        kind = event["type"]
        if kind == "message_start":
            message = event["message"]
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] == "input_json_delta":
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
            else:
                field = "text" if delta["type"] == "text_delta" else "thinking"
                block[field] += delta[field]
        elif kind == "content_block_stop" and event["index"] in partial:
            message["content"][event["index"]]["input"] = orjson.loads(partial[event["index"]])
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
    return message


def run(chunks: list[dict[str, Any]]) -> tuple[ChatToMessagesStream, bytes]:
    stream = ChatToMessagesStream(model="claude-x", message_id="msg_1", stops=STOPS)
    out = [piece for chunk in chunks for piece in stream.feed(chunk)] + stream.finish()
    return stream, b"".join(out)


def whole(answer: Answer) -> dict[str, Any]:
    return chat_to_message(answer.completion(), model="claude-x", message_id="msg_1", stops=STOPS)


# -- properties --------------------------------------------------------------------------


@st.composite
def answer_and_chunks(draw: st.DrawFn) -> tuple[Answer, list[dict[str, Any]]]:
    answer = draw(answers(stops=STOPS))
    return answer, draw(chunkings(answer))


@PROPERTY
@given(answer_and_chunks())
def test_stream_and_whole_answer_agree(case: tuple[Answer, list[dict[str, Any]]]) -> None:
    answer, chunks = case
    stream, data = run(chunks)
    events = decode_events(data)
    check_grammar(events)
    assert stream.done and not stream.failed
    assert accumulate(events) == whole(answer)
    expected = None if answer.usage is None else TokenUsage(
        prompt_tokens=answer.usage[0], completion_tokens=answer.usage[1])  # fmt: skip
    assert stream.usage == expected


@PROPERTY
@given(answer_and_chunks(), st.data())
def test_a_stream_cut_anywhere_still_follows_the_grammar(
    case: tuple[Answer, list[dict[str, Any]]], data: st.DataObject
) -> None:
    _, chunks = case
    cut = data.draw(st.integers(0, len(chunks)))
    stream = ChatToMessagesStream(model="claude-x", message_id="msg_1")
    out = [piece for chunk in chunks[:cut] for piece in stream.feed(chunk)]
    out += stream.fail(UpstreamError("backend went away"))
    events = decode_events(b"".join(out))
    check_grammar(events)
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "backend went away"},
    }
    assert stream.failed and stream.feed(chunks[0]) == [] and stream.finish() == []


@PROPERTY
@given(answer_and_chunks(), st.data())
def test_sse_decode_is_chunking_invariant(
    case: tuple[Answer, list[dict[str, Any]]], data: st.DataObject
) -> None:
    _, chunks = case
    _, body = run(chunks)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(body)), max_size=12)))
    decoder = SSEDecoder()
    events = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        events += decoder.feed(body[a:b])
    events += decoder.feed_eof()
    assert [(e.event, orjson.loads(e.data)) for e in events] == decode_events(body)


def test_one_byte_at_a_time_decodes_the_same() -> None:
    answer = Answer("why", "hello", (("c", "f", '{"a":[1,2]}'),), "tool_calls", None, (3, 4))
    first = {"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a":'}}
    rest = {"index": 0, "function": {"arguments": "[1,2]}"}}
    _, body = run(
        [
            {"choices": [{"delta": {"reasoning_content": "why", "content": "hello"}}]},
            {"choices": [{"delta": {"tool_calls": [first]}}]},
            {"choices": [{"delta": {"tool_calls": [rest]}, "finish_reason": "tool_calls"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
        ]
    )
    decoder = SSEDecoder()
    events = [e for i in range(len(body)) for e in decoder.feed(body[i : i + 1])]
    decoded = [(e.event, orjson.loads(e.data)) for e in events + decoder.feed_eof()]
    assert decoded == decode_events(body)
    assert accumulate(decoded) == whole(answer)


# -- the official SDK reads the stream to the same message ------------------------------


def _client(body: bytes, content_type: str) -> Anthropic:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=body)

    transport = httpx.MockTransport(answer)
    return Anthropic(api_key="k", base_url="http://gateway.test",
                     http_client=httpx.Client(transport=transport), max_retries=0)  # fmt: skip


_ARGS: dict[str, Any] = {"model": "claude-x", "max_tokens": 100,
                         "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


@settings(PROPERTY, max_examples=40)
@given(answer_and_chunks())
def test_the_sdk_accumulates_the_stream_into_the_whole_answer(
    case: tuple[Answer, list[dict[str, Any]]],
) -> None:
    answer, chunks = case
    _, body = run(chunks)
    with _client(body, "text/event-stream").messages.stream(**_ARGS) as stream:
        final = stream.get_final_message()
    expected = whole(answer)
    assert final.model_dump(exclude_none=True) == _sdk_shape(expected)
    unary = _client(orjson.dumps(expected), "application/json").messages.create(**_ARGS)
    assert unary.model_dump() == final.model_dump()


def _sdk_shape(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if v is not None}


def test_the_sdk_raises_the_error_event_as_a_typed_exception() -> None:
    stream = ChatToMessagesStream(model="claude-x", message_id="msg_1")
    body = b"".join(stream.feed({"choices": [{"delta": {"content": "hi"}}]}))
    body += b"".join(stream.fail(UpstreamError("backend went away", status_code=503)))
    client = _client(body, "text/event-stream")
    with pytest.raises(APIStatusError) as caught, client.messages.stream(**_ARGS) as events:
        events.get_final_message()
    assert caught.value.body == {
        "type": "error", "error": {"type": "overloaded_error", "message": "backend went away"}
    }  # fmt: skip


# -- edge cases --------------------------------------------------------------------------


def test_a_stream_that_ends_without_a_finish_reason_fails() -> None:
    stream = ChatToMessagesStream(model="m", message_id="msg_1")
    out = stream.feed({"choices": [{"delta": {"content": "par"}}]}) + stream.finish()
    events = decode_events(b"".join(out))
    check_grammar(events)
    assert events[-1][1]["error"]["type"] == "api_error"
    assert stream.failed and not stream.done


def test_an_empty_stream_fails_after_opening_the_message() -> None:
    stream = ChatToMessagesStream(model="m", message_id="msg_1")
    names = [name for name, _ in decode_events(b"".join(stream.finish()))]
    assert names == ["message_start", "ping", "error"]


def test_tool_arguments_that_are_not_an_object_fail_the_stream_at_the_block_end() -> None:
    stream = ChatToMessagesStream(model="m", message_id="msg_1")
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": "[1]"}}
    out = stream.feed({"choices": [{"delta": {"tool_calls": [call]}}]})
    out += stream.feed({"choices": [{"delta": {"content": "x"}}]})
    events = decode_events(b"".join(out))
    check_grammar(events)
    assert "tool 'f'" in events[-1][1]["error"]["message"]
    with pytest.raises(UpstreamError, match="not a JSON object"):
        tool_input("[1]", "f")


def test_a_second_tool_call_opens_a_second_block() -> None:
    stream = ChatToMessagesStream(model="m", message_id="msg_1")
    calls = [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}},
             {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]  # fmt: skip
    out = stream.feed(
        {"choices": [{"delta": {"tool_calls": calls}, "finish_reason": "tool_calls"}]}
    )
    events = decode_events(b"".join(out + stream.finish()))
    check_grammar(events)
    starts = [e["content_block"]["id"] for n, e in events if n == "content_block_start"]
    assert starts == ["a", "b"]


def test_ping_only_while_the_stream_is_open() -> None:
    stream = ChatToMessagesStream(model="m", message_id="msg_1")
    assert stream.ping() == []
    stream.feed({"choices": [{"delta": {"content": "x"}}]})
    assert decode_events(b"".join(stream.ping())) == [("ping", {"type": "ping"})]
    stream.feed({"choices": [{"delta": {}, "finish_reason": "stop"}]})
    stream.finish()
    assert stream.ping() == [] and stream.done


@pytest.mark.parametrize(
    ("finish", "matched", "expected"),
    [
        ("stop", None, ("end_turn", None)),
        ("stop", "STOP", ("stop_sequence", "STOP")),
        ("stop", "other", ("end_turn", None)),
        ("stop", 128001, ("end_turn", None)),  # vLLM names a stop *token* by its id
        ("length", None, ("max_tokens", None)),
        ("tool_calls", None, ("tool_use", None)),
        ("content_filter", None, ("refusal", None)),
        ("unload", None, ("end_turn", None)),
    ],
)
def test_stop_reasons(finish: str, matched: Any, expected: tuple[str, str | None]) -> None:
    assert stop_reason(finish, matched, STOPS) == expected


def test_whole_answer_without_choices_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="no choices"):
        chat_to_message({"choices": []}, model="m", message_id="msg_1")


def test_whole_answer_reads_reasoning_under_either_name_and_dict_arguments() -> None:
    message = {
        "content": "",
        "reasoning": "hmm",
        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}],
    }
    out = chat_to_message(
        {"choices": [{"message": message, "finish_reason": "tool_calls"}]},
        model="m",
        message_id="msg_1",
    )
    assert out["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": ""},
        {"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}},
    ]
    assert out["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_broken_arguments_in_the_last_block_fail_the_finish() -> None:
    stream = ChatToMessagesStream(model="m", message_id="msg_1")
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a":'}}
    out = stream.feed({"choices": [{"delta": {"tool_calls": [call]}, "finish_reason": "stop"}]})
    events = decode_events(b"".join(out + stream.finish()))
    check_grammar(events)
    assert events[-1][0] == "error" and stream.failed


def test_usage_without_integer_counts_is_ignored() -> None:
    stream = ChatToMessagesStream(model="m", message_id="msg_1")
    stream.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": None}})
    assert stream.usage is None
