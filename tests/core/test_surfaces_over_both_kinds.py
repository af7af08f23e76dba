"""/v1/messages and /v1/responses through the whole core, over both backend kinds.

The translator tests (test_anthropic_stream.py, test_responses_stream.py)
check each stage alone, fed chat chunks.  Here the same drawn answer goes
through the Exchange as a backend of each kind would send it -- an
OpenAI-compatible server's SSE chunks or whole ``chat.completion``, and
Ollama's NDJSON lines or whole ``/api/chat`` object -- cut into arbitrary
reads: the stream, read the way a client reads it, equals the whole
answer, tool calls included, and every stream follows its API's grammar.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.actions import UpstreamChunkReceived, UpstreamClosed, UpstreamResponseStarted
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.gateway import Gateway
from tests.chat_answers import PROPERTY, Answer, answers, chunkings, decode_events
from tests.core.test_anthropic_stream import accumulate
from tests.core.test_anthropic_stream import check_grammar as check_messages_grammar
from tests.core.test_responses_stream import check_grammar as check_responses_grammar
from tests.core.test_responses_stream import rebuild_output

from ..helpers import NOW, ExchangeDriver, make_config

TOML = """
[[backends]]
name = "ol"
kind = "ollama"
url = "http://ol.test"
[[backends]]
name = "oa"
kind = "openai"
url = "http://oa.test/v1"
"""
MODEL = {"ollama": "llama3.2:1b", "openai": "gpt-4o-mini"}
TOOLS = [{"name": "f", "input_schema": {"type": "object"}}]


def gateway() -> Gateway:
    gw = Gateway(make_config(TOML))
    gw.record_discovery("ol", [DiscoveredModel(name=MODEL["ollama"])], NOW)
    gw.record_discovery("oa", [DiscoveredModel(name=MODEL["openai"])], NOW)
    return gw


# -- what each backend kind sends for an answer -------------------------------------------


def _sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _native_calls(answer: Answer) -> list[dict[str, Any]]:
    return [{"function": {"name": n, "arguments": orjson.loads(a)}} for _, n, a in answer.calls]


def _native_done(answer: Answer) -> dict[str, Any]:
    done: dict[str, Any] = {"model": MODEL["ollama"], "done": True,
                            "done_reason": "length" if answer.finish == "length" else "stop"}  # fmt: skip
    prompt, output = answer.usage or (0, 0)
    return {**done, "prompt_eval_count": prompt, "eval_count": output}


def _native_whole(answer: Answer) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.reasoning:
        message["thinking"] = answer.reasoning
    if answer.calls:
        message["tool_calls"] = _native_calls(answer)
    return orjson.dumps({**_native_done(answer), "message": message})


@st.composite
def _native_lines(draw: st.DrawFn, answer: Answer) -> bytes:
    lines: list[dict[str, Any]] = []
    for field, text in (("thinking", answer.reasoning), ("content", answer.content)):
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=3)))
        bounds = [0, *[c for c in cuts if c < len(text)], len(text)]
        for a, b in itertools.pairwise(bounds):
            if text[a:b]:
                lines.append({"message": {"role": "assistant", "content": "", field: text[a:b]}})
    if answer.calls:  # Ollama sends a turn's calls whole, on one line
        calls = _native_calls(answer)
        lines.append({"message": {"role": "assistant", "content": "", "tool_calls": calls}})
    done = {**_native_done(answer), "message": {"role": "assistant", "content": ""}}
    lines = [{"model": MODEL["ollama"], "done": False, **line} for line in lines] + [done]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


@st.composite
def _ollama_answers(draw: st.DrawFn) -> Answer:
    """What Ollama can say: counts always, no content filter, no named stop."""
    answer = draw(answers())
    finish = (
        answer.finish if answer.finish == "length" else ("tool_calls" if answer.calls else "stop")
    )
    return Answer(answer.reasoning, answer.content, answer.calls, finish, None,
                  answer.usage or (0, 0))  # fmt: skip


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, Answer, bytes, bytes, list[int]]:
    """(kind, answer, its whole body, its stream bytes, where the reads cut them)."""
    kind = draw(st.sampled_from(("ollama", "openai")))
    if kind == "ollama":
        answer = draw(_ollama_answers())
        whole, stream = _native_whole(answer), draw(_native_lines(answer))
    else:
        answer = draw(answers())
        whole, stream = orjson.dumps(answer.completion()), _sse(draw(chunkings(answer)))
    cuts = sorted(draw(st.sets(st.integers(0, len(stream)), max_size=8)))
    return kind, answer, whole, stream, cuts


def _through(path: str, body: dict[str, Any], answer: bytes, cuts: list[int]) -> ExchangeDriver:
    d = ExchangeDriver(gateway())
    d.start("POST", path, body)
    assert d.seen.upstream, d.seen.body
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    for a, b in itertools.pairwise([0, *cuts, len(answer)]):
        if not d.seen.ended:
            d.handle(UpstreamChunkReceived(data=answer[a:b]))
    if not d.seen.ended:
        d.handle(UpstreamClosed())
    assert d.seen.ended
    return d


# -- the properties -----------------------------------------------------------------------


def _usage_agrees(stream: ExchangeDriver, whole: ExchangeDriver) -> None:
    [streamed], [answered] = stream.seen.usage, whole.seen.usage
    assert streamed.usage_reported == answered.usage_reported
    if answered.usage_reported:
        assert (streamed.prompt_tokens, streamed.completion_tokens) == (
            answered.prompt_tokens, answered.completion_tokens
        )  # fmt: skip


def _tool_answer_fits(answer: Answer) -> bool:
    # Anthropic's tool_use input must be a JSON object; the answers draw only objects.
    return all(orjson.loads(a).__class__ is dict for _, _, a in answer.calls)


@PROPERTY
@given(cases())
def test_messages_stream_and_whole_answer_agree_over_both_kinds(
    case: tuple[str, Answer, bytes, bytes, list[int]],
) -> None:
    kind, answer, whole_body, stream_body, cuts = case
    assert _tool_answer_fits(answer)
    request = {"model": MODEL[kind], "max_tokens": 100, "tools": TOOLS, "stop_sequences": ["STOP"],
               "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    whole = _through("/v1/messages", request, whole_body, [])
    stream = _through("/v1/messages", {**request, "stream": True}, stream_body, cuts)
    assert whole.seen.status == stream.seen.status == 200
    events = decode_events(stream.seen.body)
    check_messages_grammar(events)
    assert accumulate(events) == whole.seen.json()
    if answer.calls:
        uses = [b for b in whole.seen.json()["content"] if b["type"] == "tool_use"]
        assert [(u["name"], u["input"]) for u in uses] == [
            (n, orjson.loads(a)) for _, n, a in answer.calls
        ]
    _usage_agrees(stream, whole)


@PROPERTY
@given(cases())
def test_responses_stream_and_whole_answer_agree_over_both_kinds(
    case: tuple[str, Answer, bytes, bytes, list[int]],
) -> None:
    kind, answer, whole_body, stream_body, cuts = case
    request = {"model": MODEL[kind], "input": "hi", "max_output_tokens": 100,
               "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}  # fmt: skip
    whole = _through("/v1/responses", request, whole_body, [])
    stream = _through("/v1/responses", {**request, "stream": True}, stream_body, cuts)
    assert whole.seen.status == stream.seen.status == 200
    events = decode_events(stream.seen.body)
    check_responses_grammar(events)
    expected = whole.seen.json()
    assert events[-1][1]["response"] == expected
    assert rebuild_output(events) == expected["output"]
    calls = [
        (o["name"], o["arguments"]) for o in expected["output"] if o["type"] == "function_call"
    ]
    assert [(n, orjson.loads(a)) for n, a in calls] == [
        (n, orjson.loads(a)) for _, n, a in answer.calls
    ]
    _usage_agrees(stream, whole)
