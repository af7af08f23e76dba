"""OllamaChatStream: native NDJSON values -> chat.completion.chunk payloads."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.errors import UpstreamError, UpstreamTimeout
from sansio_gateway.framing import encode_sse_json
from sansio_gateway.openai_over_ollama.chat_response import ollama_chat_to_completion
from sansio_gateway.openai_over_ollama.chat_stream import OllamaChatStream
from sansio_gateway.wire.openai_chat import ForcedTool

CID = "chatcmpl-s1"
NAMED = ForcedTool(name="get", names=("get",))
REQUIRED = ForcedTool(name=None, names=("get", "put"))


def machine(include_usage: bool = False, **kw: Any) -> OllamaChatStream:
    return OllamaChatStream(
        completion_id=CID,
        created=1700000000,
        model="client-model",
        include_usage=include_usage,
        **kw,
    )


def line(content: str = "", *, done: bool = False, **message: Any) -> dict[str, Any]:
    return {
        "model": "llama3",
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": content, **message},
        "done": done,
    }


def done_line(reason: str = "stop", content: str = "", **extra: Any) -> dict[str, Any]:
    out = line(content, done=True)
    out.update({"done_reason": reason, "prompt_eval_count": 5, "eval_count": 9, **extra})
    return out


def run(stream: OllamaChatStream, lines: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for value in lines:
        out += stream.feed(value)
    return out


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c.get("choices")]


def call(name: str, arguments: dict[str, Any], call_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"function": {"index": 0, "name": name, "arguments": arguments}}
    if call_id:
        out["id"] = call_id
    return out


# -- framing ---------------------------------------------------------------------------


def test_content_stream_framing() -> None:
    chunks = run(machine(), [line("Hel"), line("lo"), done_line()])
    assert chunks[0] == {
        "id": CID,
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "client-model",
        "system_fingerprint": "fp_sansio",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "Hel"},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    assert deltas(chunks) == [{"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
    assert chunks[-1]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert all("usage" not in c for c in chunks)


def test_thinking_and_content_on_one_line_are_two_chunks() -> None:
    chunks = run(machine(), [line("answer", thinking="hmm"), done_line()])
    assert deltas(chunks)[:2] == [
        {"role": "assistant", "reasoning_content": "hmm"},
        {"content": "answer"},
    ]


def test_reasoning_field_is_configurable() -> None:
    chunks = run(machine(reasoning_field="reasoning"), [line(thinking="t"), done_line()])
    assert deltas(chunks)[0] == {"role": "assistant", "reasoning": "t"}


def test_metrics_trailer_and_empty_lines_emit_no_delta() -> None:
    chunks = run(machine(), [line("a"), line(""), done_line()])
    assert deltas(chunks) == [{"role": "assistant", "content": "a"}, {}]


def test_done_only_stream_still_sends_the_role_first() -> None:
    chunks = run(machine(), [done_line()])
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {}]


def test_content_on_the_done_line_is_emitted_before_the_finish() -> None:
    chunks = run(machine(), [done_line(content="tail")])
    assert deltas(chunks) == [{"role": "assistant", "content": "tail"}, {}]


def test_length_stays_length() -> None:
    chunks = run(machine(), [line("a"), done_line("length")])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_usage_chunk_and_usage_null_when_requested() -> None:
    stream = machine(include_usage=True)
    chunks = run(stream, [line("a"), done_line()])
    assert [c["usage"] for c in chunks[:-1]] == [None, None]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    assert stream.usage == TokenUsage(prompt_tokens=5, completion_tokens=9)


def test_usage_without_include_usage_is_still_recorded() -> None:
    stream = machine()
    run(stream, [line("a"), done_line()])
    assert stream.usage == TokenUsage(prompt_tokens=5, completion_tokens=9)
    assert stream.done and not stream.failed


# -- tool calls ---------------------------------------------------------------------


def test_parallel_tool_calls_get_running_indexes_and_stable_ids() -> None:
    lines = [
        line(tool_calls=[call("get", {"a": 1}, "n0"), call("get", {"a": 2})]),
        line(tool_calls=[call("put", {})]),
        done_line(),
    ]
    chunks = run(machine(), lines)
    calls = [c for d in deltas(chunks) for c in d.get("tool_calls", [])]
    assert calls == [
        {
            "index": 0,
            "id": "n0",
            "type": "function",
            "function": {"name": "get", "arguments": '{"a":1}'},
        },
        {
            "index": 1,
            "id": "call_s1_1",
            "type": "function",
            "function": {"name": "get", "arguments": '{"a":2}'},
        },
        {
            "index": 2,
            "id": "call_s1_2",
            "type": "function",
            "function": {"name": "put", "arguments": "{}"},
        },
    ]
    assert "content" not in deltas(chunks)[1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_content_and_tool_call_on_one_line() -> None:
    chunks = run(machine(), [line("checking", tool_calls=[call("get", {})]), done_line()])
    first = deltas(chunks)[0]
    assert first["content"] == "checking" and first["tool_calls"][0]["index"] == 0


def test_tool_call_then_length_stays_length() -> None:
    chunks = run(machine(), [line(tool_calls=[call("get", {})]), done_line("length")])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# -- logprobs --------------------------------------------------------------------------

LP = [{"token": "a", "logprob": -0.5}]
LP_OUT = {"content": [{"token": "a", "logprob": -0.5, "bytes": None, "top_logprobs": []}]}


def test_logprobs_ride_on_the_content_chunk() -> None:
    with_lp = line("a", thinking="t")
    with_lp["logprobs"] = LP
    chunks = run(machine(), [with_lp, done_line()])
    assert [c["choices"][0]["logprobs"] for c in chunks[:2]] == [None, LP_OUT]


def test_logprobs_of_a_thinking_only_line() -> None:
    with_lp = line(thinking="t")
    with_lp["logprobs"] = LP
    assert run(machine(), [with_lp])[0]["choices"][0]["logprobs"] == LP_OUT


def test_logprobs_only_line() -> None:
    with_lp = line()
    with_lp["logprobs"] = LP
    chunk = run(machine(), [with_lp])[0]["choices"][0]
    assert chunk["delta"] == {"role": "assistant", "content": ""}
    assert chunk["logprobs"] == LP_OUT


# -- errors and the end of the stream ------------------------------------------------------

ERROR_PAYLOAD_KEYS = {"message", "type", "param", "code"}


def test_in_band_error_line_fails_the_stream() -> None:
    stream = machine()
    run(stream, [line("a")])
    out = stream.feed({"error": "model runner crashed"})
    assert out == [
        {
            "error": {
                "message": "model runner crashed",
                "type": "api_error",
                "param": None,
                "code": "upstream_error",
            }
        }
    ]
    assert stream.failed and not stream.done
    assert (
        stream.feed(line("b")) == []
        and stream.finish() == []
        and stream.fail(UpstreamError("x")) == []
    )


def test_garbage_line_is_an_error_payload() -> None:
    garbages: list[Any] = [[1, 2], "text", 3, None, {"message": []}]
    for garbage in garbages:
        stream = machine()
        (payload,) = stream.feed(garbage)
        assert set(payload["error"]) == ERROR_PAYLOAD_KEYS
        assert stream.failed


def test_eof_before_done_is_an_error() -> None:
    stream = machine()
    run(stream, [line("a")])
    (payload,) = stream.finish()
    assert payload["error"]["message"] == "upstream closed the stream before it finished"
    assert payload["error"]["code"] == "upstream_error"
    assert stream.failed and stream.finish() == []


def test_eof_after_done_is_quiet() -> None:
    stream = machine()
    run(stream, [done_line()])
    assert stream.finish() == [] and not stream.failed


def test_transport_failure_reports_once() -> None:
    stream = machine()
    (payload,) = stream.fail(UpstreamTimeout("backend timed out"))
    assert payload["error"]["code"] == "upstream_timeout"
    assert stream.fail(UpstreamTimeout("again")) == []


def test_nothing_after_done() -> None:
    stream = machine(include_usage=True)
    run(stream, [done_line()])
    assert stream.feed(line("late")) == []
    assert stream.feed({"error": "x"}) == []
    assert stream.fail(UpstreamError("x")) == []
    assert stream.done and not stream.failed


# -- forced tool_choice -----------------------------------------------------------------


def test_forced_named_call_is_held_and_released_as_one_call() -> None:
    lines = [line('{"ci', thinking="plan"), line('ty": "Paris"}'), done_line()]
    chunks = run(machine(forced_tool=NAMED), lines)
    assert deltas(chunks) == [
        {"role": "assistant", "reasoning_content": "plan"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_s1_0",
                    "type": "function",
                    "function": {"name": "get", "arguments": '{"city":"Paris"}'},
                }
            ]
        },
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_forced_required_call() -> None:
    lines = [line('{"name": "put", "arguments": {"k": true}}'), done_line()]
    (first, _) = deltas(run(machine(forced_tool=REQUIRED), lines))
    assert first["tool_calls"][0]["function"] == {"name": "put", "arguments": '{"k":true}'}


def test_forced_output_cut_short_is_content() -> None:
    chunks = run(machine(forced_tool=NAMED), [line('{"city": "Pa'), done_line("length")])
    assert deltas(chunks) == [{"role": "assistant", "content": '{"city": "Pa'}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_forced_logprobs_are_released_with_the_call() -> None:
    held = line('{"a": 1}')
    held["logprobs"] = LP
    chunks = run(machine(forced_tool=NAMED), [held, done_line()])
    assert chunks[0]["choices"][0]["logprobs"] == LP_OUT


def test_forced_buffer_is_bounded() -> None:
    stream = machine(forced_tool=NAMED, max_forced_chars=10)
    assert stream.feed(line("12345")) == []
    (payload,) = stream.feed(line("678901"))
    assert "exceeded 10 characters" in payload["error"]["message"]
    assert stream.failed


# -- properties ------------------------------------------------------------------------------

_text = st.text(max_size=8)
_args = st.dictionaries(st.text(max_size=4), st.integers(-5, 5) | st.text(max_size=4), max_size=3)
_native_call = st.builds(
    lambda name, args, call_id: call(name, args, call_id),
    st.sampled_from(["get", "put"]),
    _args,
    st.none() | st.sampled_from(["n1", "n2"]),
)
_logprobs = st.lists(
    st.builds(lambda t, p: {"token": t, "logprob": p}, _text, st.floats(-10, 0)), max_size=2
)


@st.composite
def _event(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": draw(_text)}
    if draw(st.booleans()):
        message["thinking"] = draw(_text)
    if draw(st.integers(0, 3)) == 0:
        message["tool_calls"] = draw(st.lists(_native_call, min_size=1, max_size=3))
    out: dict[str, Any] = {"model": "m", "message": message, "done": False}
    if draw(st.integers(0, 3)) == 0:
        out["logprobs"] = draw(_logprobs)
    return out


@st.composite
def _final(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "m",
        "message": {"role": "assistant", "content": draw(st.sampled_from(["", "", "end"]))},
        "done": True,
        "done_reason": draw(st.sampled_from(["stop", "length", "", "load"])),
    }
    for key in ("prompt_eval_count", "eval_count"):
        if draw(st.booleans()):
            out[key] = draw(st.integers(0, 10_000))
    return out


def aggregate(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-stream answer Ollama gives for the same output: contents and
    thinking concatenated, tool calls and logprobs collected, the done line's fields."""
    messages = [ln["message"] for ln in lines]
    final = dict(lines[-1])
    final["message"] = {
        "role": "assistant",
        "content": "".join(m.get("content", "") for m in messages),
        "thinking": "".join(m.get("thinking", "") for m in messages),
        "tool_calls": [c for m in messages for c in m.get("tool_calls", [])],
    }
    final["logprobs"] = [e for ln in lines for e in ln.get("logprobs", [])]
    return final


def reassemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client accumulates from the chunks (the openai SDK's way)."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []
    finish, usage = None, None
    for chunk in chunks:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for c in delta.get("tool_calls", []):
                assert c["index"] == len(calls)
                calls.append({k: v for k, v in c.items() if k != "index"})
            if choice["logprobs"]:
                logprobs += choice["logprobs"]["content"]
            finish = choice["finish_reason"] or finish
    text = "".join(content)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    message["refusal"] = None
    if "".join(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {
        "message": message,
        "finish_reason": finish,
        "logprobs": {"content": logprobs} if logprobs else None,
        "usage": usage,
    }


def assert_stream_matches_non_stream(
    lines: list[dict[str, Any]], forced: ForcedTool | None = None
) -> None:
    chunks = run(machine(include_usage=True, forced_tool=forced), lines)
    whole = ollama_chat_to_completion(
        aggregate(lines),
        completion_id=CID,
        created=1700000000,
        model="client-model",
        forced_tool=forced,
    )
    streamed = reassemble(chunks)
    assert streamed["message"] == whole["choices"][0]["message"]
    assert streamed["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert streamed["logprobs"] == whole["choices"][0]["logprobs"]
    assert streamed["usage"] == whole["usage"]


@settings(max_examples=200, deadline=None)
@given(st.lists(_event(), max_size=8), _final())
def test_stream_and_non_stream_agree(events: list[dict[str, Any]], final: dict[str, Any]) -> None:
    assert_stream_matches_non_stream([*events, final])


@st.composite
def _forced_output(draw: st.DrawFn) -> tuple[ForcedTool, list[dict[str, Any]]]:
    forced = draw(st.sampled_from([NAMED, REQUIRED]))
    args = draw(_args)
    value = (
        args if forced.name else {"name": draw(st.sampled_from(["get", "put"])), "arguments": args}
    )
    text = orjson.dumps(value).decode()
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]  # cut short, as by `length`
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    lines = [line(p, thinking=draw(_text)) for p in pieces]
    return forced, [*lines, draw(_final())]


@settings(max_examples=150, deadline=None)
@given(_forced_output())
def test_forced_stream_and_non_stream_agree(case: tuple[ForcedTool, list[dict[str, Any]]]) -> None:
    forced, lines = case
    assert_stream_matches_non_stream(lines, forced)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=10,
)
# Values shaped like native lines, so the machine gets past the first check.
_near_native = st.fixed_dictionaries(
    {},
    optional={
        "message": st.fixed_dictionaries(
            {},
            optional={
                "content": _text | _json,
                "thinking": _text | _json,
                "tool_calls": st.lists(_native_call | _json, max_size=2) | _json,
            },
        )
        | _json,
        "done": st.booleans() | _json,
        "done_reason": st.sampled_from(["stop", "length"]) | _json,
        "logprobs": _logprobs | _json,
        "eval_count": st.integers(0, 9) | _json,
        "error": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_json | _near_native | _event() | _final(), max_size=8),
    st.sampled_from([None, NAMED, REQUIRED]),
    st.booleans(),
)
def test_garbage_never_raises_and_nothing_follows_the_end(
    values: list[Any], forced: ForcedTool | None, include_usage: bool
) -> None:
    stream = machine(include_usage=include_usage, forced_tool=forced)
    out: list[dict[str, Any]] = []
    for value in values:
        ended = stream.done or stream.failed
        emitted = stream.feed(value)
        assert not (ended and emitted)
        out += emitted
    out += stream.finish()
    assert stream.done != stream.failed
    errors = [p for p in out if "error" in p]
    chunks = [p for p in out if "error" not in p]
    if stream.failed:
        assert len(errors) == 1 and out[-1] is errors[0]
        assert set(errors[0]["error"]) == ERROR_PAYLOAD_KEYS
    else:
        assert errors == []
    check_chunk_invariants(chunks, include_usage, finished=stream.done)


# Plain content lines, the ones the hot path takes, and near misses.
_plain = st.builds(
    lambda text, extra: (
        {"model": "m", "message": {"role": "assistant", "content": text, **extra}} | {"done": False}
    ),
    st.text(min_size=1, max_size=8),
    st.sampled_from([{}, {"thinking": ""}, {"thinking": None}, {"tool_calls": None}]),
)


@settings(max_examples=300, deadline=None)
@given(
    # Plain lines often, and first, so that the stream has started.
    st.lists(_plain | _plain | _json | _near_native | _event() | _final(), max_size=10).map(
        lambda values: [{"message": {"content": "a"}, "done": False}, *values]
    ),
    st.sampled_from([None, None, None, NAMED, REQUIRED]),
    st.booleans(),
    st.sampled_from(["client-model", 'm"content":""', "m\u2028\\"]),
)
def test_the_hot_path_gives_the_bytes_feed_gives(
    values: list[Any], forced: ForcedTool | None, include_usage: bool, model: str
) -> None:
    # ``sse_event`` first, as the stream base calls it, against ``feed`` alone.
    def make() -> OllamaChatStream:
        return OllamaChatStream(
            completion_id=CID,
            created=1700000000,
            model=model,
            include_usage=include_usage,
            forced_tool=forced,
        )

    fast, slow = make(), make()
    for value in values:
        expected = slow.feed(value)
        event = fast.sse_event(value)
        if event is None:
            got = b"".join(encode_sse_json(p) for p in fast.feed(value))
        else:
            assert len(expected) == 1
            got = event
        assert got == b"".join(encode_sse_json(p) for p in expected)
        assert (fast.done, fast.failed, fast.usage) == (slow.done, slow.failed, slow.usage)


def check_chunk_invariants(
    chunks: list[dict[str, Any]], include_usage: bool, *, finished: bool
) -> None:
    assert {(c["id"], c["created"], c["object"]) for c in chunks} <= {
        (CID, 1700000000, "chat.completion.chunk")
    }
    roles = [
        i
        for i, d in enumerate(c["choices"][0]["delta"] for c in chunks if c["choices"])
        if "role" in d
    ]
    assert roles in ([], [0])
    finishes = [
        i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    if finished:
        tail = 2 if include_usage else 1
        assert finishes == [len(chunks) - tail]
        if include_usage:
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is not None
    else:
        assert finishes == []
    for c in chunks:
        assert ("usage" in c) is include_usage
        if c["choices"]:
            assert c.get("usage") is None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(_event(), max_size=6),
    _final(),
    st.lists(_event() | _final(), max_size=3),
    st.booleans(),
)
def test_nothing_after_finish_and_one_id(
    events: list[dict[str, Any]],
    final: dict[str, Any],
    extra: list[dict[str, Any]],
    include_usage: bool,
) -> None:
    stream = machine(include_usage=include_usage)
    chunks = run(stream, [*events, final])
    assert stream.done
    assert run(stream, extra) == [] and stream.finish() == []
    check_chunk_invariants(chunks, include_usage, finished=True)
