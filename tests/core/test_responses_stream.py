"""The Responses whole-answer and stream translators, and their agreement.

The grammar checker encodes the Responses streaming order: ``response.created``
and ``response.in_progress``; then output items, each
``response.output_item.added`` (output index 0, 1, ...), its parts and
deltas, its ``.done`` events and ``response.output_item.done``; then
``response.completed`` or ``response.incomplete``.  ``response.failed``
ends the stream wherever it comes.  ``sequence_number`` counts from 0.
"""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import OpenAI

from sansio_gateway.errors import GatewayError, UpstreamError
from sansio_gateway.framing import SSEDecoder
from sansio_gateway.responses_over_chat.response import chat_to_response
from sansio_gateway.responses_over_chat.stream import ChatToResponsesStream
from sansio_gateway.wire.openai_responses import ResponsesRequest, parse_responses_request
from tests.chat_answers import PROPERTY, Answer, answers, chunkings, decode_events

REQUEST = parse_responses_request(
    orjson.dumps({
        "model": "gpt-x", "input": "hi", "instructions": "be brief", "max_output_tokens": 50,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
    })
)  # fmt: skip

# Per item type: the events between output_item.added and output_item.done.
_BODIES = {
    "message": ("response.content_part.added", "response.output_text.delta",
                "response.output_text.done", "response.content_part.done"),
    "reasoning": ("response.content_part.added", "response.reasoning_text.delta",
                  "response.reasoning_text.done", "response.content_part.done"),
    "function_call": (None, "response.function_call_arguments.delta",
                      "response.function_call_arguments.done", None),
}  # fmt: skip


def check_grammar(events: list[tuple[str | None, Any]]) -> None:
    for n, (name, payload) in enumerate(events):
        assert name == payload["type"] and payload["sequence_number"] == n
    names = [name for name, _ in events]
    if names[-1] == "response.failed":
        names = names[:-1]
        if not names:
            return
    else:
        assert names[-1] in ("response.completed", "response.incomplete")
        names = names[:-1]
    assert names[:2] == ["response.created", "response.in_progress"]
    payloads = [p for _, p in events]
    k, index = 2, 0
    while k < len(names):
        assert names[k] == "response.output_item.added"
        assert payloads[k]["output_index"] == index
        k = _item_body(names, payloads, k + 1, _BODIES[payloads[k]["item"]["type"]], index)
        assert names[k] == "response.output_item.done" and payloads[k]["output_index"] == index
        k, index = k + 1, index + 1


def _item_body(names: list[str], payloads: list[Any], k: int, body: Any, index: int) -> int:
    """Check one item's events from ``k``; return the index of its ``output_item.done``."""
    opened, delta, done, closed = body
    if opened is not None:
        assert names[k] == opened
        k += 1
    while k < len(names) and names[k] == delta:
        assert payloads[k]["output_index"] == index
        k += 1
    assert names[k] == done and payloads[k]["output_index"] == index
    k += 1
    if closed is not None:
        assert names[k] == closed
        k += 1
    return k


def rebuild_output(events: list[tuple[str | None, Any]]) -> list[dict[str, Any]]:
    """The output items as a client rebuilds them from deltas, checked against
    each ``.done`` event on the way."""
    texts: dict[int, str] = {}
    items: list[dict[str, Any]] = []
    for name, event in events:
        if name is not None and name.endswith(".delta"):
            texts[event["output_index"]] = texts.get(event["output_index"], "") + event["delta"]
        elif name in ("response.output_text.done", "response.reasoning_text.done"):
            assert event["text"] == texts.get(event["output_index"], "")
        elif name == "response.function_call_arguments.done":
            assert event["arguments"] == texts.get(event["output_index"], "")
        elif name == "response.output_item.done":
            items.append(event["item"])
    return items


def run(req: ResponsesRequest, chunks: list[dict[str, Any]]) -> tuple[ChatToResponsesStream, bytes]:
    stream = ChatToResponsesStream(req, response_id="resp_abc", created_at=1700000000)
    out = [piece for chunk in chunks for piece in stream.feed(chunk)] + stream.finish()
    return stream, b"".join(out)


def whole(answer: Answer) -> dict[str, Any]:
    completion = answer.completion()
    return chat_to_response(completion, REQUEST, response_id="resp_abc", created_at=1700000000)


@st.composite
def answer_and_chunks(draw: st.DrawFn) -> tuple[Answer, list[dict[str, Any]]]:
    answer = draw(answers())
    return answer, draw(chunkings(answer))


@PROPERTY
@given(answer_and_chunks())
def test_stream_and_whole_answer_agree(case: tuple[Answer, list[dict[str, Any]]]) -> None:
    answer, chunks = case
    stream, data = run(REQUEST, chunks)
    events = decode_events(data)
    check_grammar(events)
    expected = whole(answer)
    final = events[-1][1]["response"]
    assert final == expected
    assert rebuild_output(events) == expected["output"]
    assert stream.done and not stream.failed
    assert events[-1][0] == ("response.completed" if expected["status"] == "completed"
                             else "response.incomplete")  # fmt: skip


@PROPERTY
@given(answer_and_chunks(), st.data())
def test_a_stream_cut_anywhere_still_follows_the_grammar(
    case: tuple[Answer, list[dict[str, Any]]], data: st.DataObject
) -> None:
    _, chunks = case
    cut = data.draw(st.integers(0, len(chunks)))
    stream = ChatToResponsesStream(REQUEST, response_id="resp_abc", created_at=1)
    out = [piece for chunk in chunks[:cut] for piece in stream.feed(chunk)]
    out += stream.fail(UpstreamError("backend went away"))
    events = decode_events(b"".join(out))
    check_grammar(events)
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "backend went away"}
    assert stream.failed and stream.feed(chunks[0]) == [] and stream.finish() == []


# -- the official SDK reads the stream to the same response -----------------------------


def _client(body: bytes, content_type: str) -> OpenAI:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    transport = httpx2.MockTransport(answer)
    return OpenAI(api_key="k", base_url="http://gateway.test/v1",
                  http_client=httpx2.Client(transport=transport), max_retries=0)  # fmt: skip


@settings(PROPERTY, max_examples=40)
@given(answer_and_chunks())
def test_the_sdk_accumulates_the_stream_into_the_whole_answer(
    case: tuple[Answer, list[dict[str, Any]]],
) -> None:
    answer, chunks = case
    plain = ResponsesRequest(model="gpt-x", items=REQUEST.items)
    _, body = run(plain, chunks)
    expected = chat_to_response(
        answer.completion(), plain, response_id="resp_abc", created_at=1700000000
    )
    client = _client(body, "text/event-stream")
    with client.responses.stream(model="gpt-x", input="hi") as stream:
        events = list(stream)
        # The SDK's final snapshot exists for completed responses only; an
        # incomplete one is read off its closing event.
        final = stream.get_final_response() if expected["status"] == "completed" else None
    texts = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert events[-1].type == f"response.{expected['status']}"
    final = final or events[-1].response
    unary = _client(orjson.dumps(expected), "application/json").responses.create(
        model="gpt-x", input="hi"
    )
    assert final.model_dump(exclude_none=True) == unary.model_dump(exclude_none=True)
    assert final.output_text == unary.output_text == "".join(texts)
    calls = [(o.call_id, o.name, o.arguments) for o in final.output if o.type == "function_call"]
    assert calls == list(answer.calls)


# -- edge cases --------------------------------------------------------------------------


def test_a_stream_that_ends_without_a_finish_reason_fails() -> None:
    stream = ChatToResponsesStream(REQUEST, response_id="resp_abc", created_at=1)
    out = stream.feed({"choices": [{"delta": {"content": "par"}}]}) + stream.finish()
    events = decode_events(b"".join(out))
    check_grammar(events)
    assert events[-1][0] == "response.failed"
    assert stream.failed and not stream.done


def test_a_rate_limit_failure_is_named_so() -> None:
    stream = ChatToResponsesStream(REQUEST, response_id="resp_abc", created_at=1)
    error = GatewayError("slow down", status_code=429)
    events = decode_events(b"".join(stream.fail(error)))
    assert events[0][1]["response"]["error"]["code"] == "rate_limit_exceeded"
    assert stream.fail(error) == []


def test_the_response_echoes_the_request() -> None:
    out = whole(Answer("", "{}", (), "stop", None, (1, 2)))
    assert out["instructions"] == "be brief" and out["max_output_tokens"] == 50
    assert out["text"] == {"format": {"type": "json_schema", "name": "out",
                                      "schema": {"type": "object"}}}  # fmt: skip
    assert out["tools"] == [
        {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": None}
    ]
    assert out["store"] is False and out["usage"]["total_tokens"] == 3


def test_a_cut_answer_is_incomplete_in_its_last_item_only() -> None:
    answer = Answer("why", "text", (("c", "f", "{"),), "length", None, None)
    out = whole(answer)
    assert out["status"] == "incomplete"
    assert out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["status"] for i in out["output"]] == ["completed", "completed", "incomplete"]


def test_whole_answer_without_choices_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="no choices"):
        chat_to_response({}, REQUEST, response_id="resp_abc", created_at=1)


@pytest.mark.parametrize(
    ("fields", "text", "tool_choice"),
    [
        ({"text": {"format": {"type": "json_object"}}}, {"format": {"type": "json_object"}},
         "auto"),
        ({"text": {"verbosity": "low"}, "tools": [{"type": "function", "name": "f"}],
          "tool_choice": {"type": "function", "name": "f"}},
         {"format": {"type": "text"}}, {"type": "function", "name": "f"}),
        ({"tools": [{"type": "function", "name": "f"}],
          "tool_choice": {"type": "allowed_tools", "mode": "required",
                          "tools": [{"type": "function", "name": "f"}]}},
         {"format": {"type": "text"}},
         {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "f"}]}),
        ({"tool_choice": "none"}, {"format": {"type": "text"}}, "none"),
    ],
)  # fmt: skip
def test_text_format_and_tool_choice_are_echoed(
    fields: dict[str, Any], text: Any, tool_choice: Any
) -> None:
    req = parse_responses_request(orjson.dumps({"model": "m", "input": "x", **fields}))
    out = chat_to_response(
        Answer("", "x", (), "stop", None, None).completion(), req, response_id="r", created_at=1
    )
    assert (out["text"], out["tool_choice"]) == (text, tool_choice)


@PROPERTY
@given(answer_and_chunks(), st.data())
def test_sse_decode_is_chunking_invariant(
    case: tuple[Answer, list[dict[str, Any]]], data: st.DataObject
) -> None:
    _, chunks = case
    _, body = run(REQUEST, chunks)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(body)), max_size=12)))
    decoder = SSEDecoder()
    events = []
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        events += decoder.feed(body[a:b])
    events += decoder.feed_eof()
    assert [(e.event, orjson.loads(e.data)) for e in events] == decode_events(body)
