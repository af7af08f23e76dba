"""OpenAI answers -> native Ollama answers, whole and streamed (no sockets)."""

from __future__ import annotations

import base64
import itertools
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.errors import UpstreamError
from sansio_gateway.framing import encode_ndjson
from sansio_gateway.ollama_over_openai.responses import (
    Shape,
    chat_completion_to_ollama,
    completion_to_ollama,
    done_reason,
    embeddings_to_ollama,
    rfc3339,
    tool_arguments,
)
from sansio_gateway.ollama_over_openai.stream import OpenAIChatToOllamaStream

AT = "2026-11-24T16:00:00.5Z"
USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


def completion(message: dict[str, Any], finish: str | None = "stop", **extra: Any) -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
    return orjson.dumps(
        {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice], **extra}
    )


def native_chat(raw: bytes, shape: Shape = Shape.CHAT) -> dict[str, Any]:
    return chat_completion_to_ollama(raw, shape=shape, model="llama3:latest", created_at=AT)[0]


# -- helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "text"),
    [
        (1_764_000_000.0, "2025-11-24T16:00:00Z"),
        (1_764_000_000.5, "2025-11-24T16:00:00.5Z"),
        (1_764_000_000.123456, "2025-11-24T16:00:00.123456Z"),
        (0, "1970-01-01T00:00:00Z"),
        (1e20, "1970-01-01T00:00:00Z"),
    ],
)
def test_rfc3339(now: float, text: str) -> None:
    assert rfc3339(now) == text


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "stop"),
        ("tool_calls", "stop"),
        ("function_call", "stop"),
        ("length", "length"),
        ("content_filter", "stop"),
        (None, "stop"),
        ("", "stop"),
        (3, "stop"),
        ("weird", "weird"),
    ],
)
def test_done_reason(finish: Any, reason: str) -> None:
    assert done_reason(finish) == reason


@pytest.mark.parametrize(
    ("raw", "arguments"),
    [
        ('{"a": 1}', {"a": 1}),
        ({"a": 1}, {"a": 1}),
        ("", {}),
        ("  ", {}),
        (None, {}),
        ("{not json", {"raw": "{not json"}),
        ("[1, 2]", {"raw": "[1, 2]"}),
        ('"text"', {"raw": '"text"'}),
        ([1], {"raw": "[1]"}),
    ],
)
def test_tool_argument_policy(raw: Any, arguments: dict[str, Any]) -> None:
    assert tool_arguments(raw) == arguments


# -- whole answers ------------------------------------------------------------------------


def test_non_stream_chat() -> None:
    native, usage = chat_completion_to_ollama(
        completion({"content": "Hi", "reasoning_content": "think"}, usage=USAGE),
        shape=Shape.CHAT,
        model="llama3:latest",
        created_at=AT,
    )
    assert native == {
        "model": "llama3:latest",
        "created_at": AT,
        "message": {"role": "assistant", "content": "Hi", "thinking": "think"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 11,
        "eval_count": 4,
    }
    assert usage == TokenUsage(prompt_tokens=11, completion_tokens=4)


def test_reasoning_under_either_name_and_null_content() -> None:
    native = native_chat(completion({"content": None, "reasoning": "r"}))
    assert native["message"] == {"role": "assistant", "content": "", "thinking": "r"}
    assert "prompt_eval_count" not in native  # no usage: no invented counts


def test_tool_calls_become_native_calls_with_objects() -> None:
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "oops"}},
        {"type": "function", "function": {"name": "h"}},
    ]
    native = native_chat(completion({"content": None, "tool_calls": calls}, "tool_calls"))
    assert native["done_reason"] == "stop"
    assert native["message"]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}},
        {"id": "c2", "function": {"index": 1, "name": "g", "arguments": {"raw": "oops"}}},
        {"id": "", "function": {"index": 2, "name": "h", "arguments": {}}},
    ]


def test_generate_shape_from_a_chat_completion() -> None:
    native = native_chat(completion({"content": "Hi", "reasoning": "r"}, "length"), Shape.GENERATE)
    assert native == {
        "model": "llama3:latest",
        "created_at": AT,
        "response": "Hi",
        "thinking": "r",
        "done": True,
        "done_reason": "length",
    }


def test_logprobs_are_copied() -> None:
    entries = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    raw = orjson.dumps(
        {
            "choices": [
                {
                    "message": {"content": "Hi"},
                    "logprobs": {"content": entries},
                    "finish_reason": "stop",
                }
            ]
        }
    )
    assert native_chat(raw)["logprobs"] == entries


def test_legacy_completion_to_generate() -> None:
    raw = orjson.dumps(
        {"object": "text_completion", "choices": [{"text": "x = 1", "finish_reason": "length"}]}
    )
    native, usage = completion_to_ollama(raw, model="m", created_at=AT)
    assert native == {
        "model": "m",
        "created_at": AT,
        "response": "x = 1",
        "done": True,
        "done_reason": "length",
    }
    assert usage is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"error": {"message": "boom"}}', "boom"),
        (b'{"error": "flat"}', "flat"),
        (b'{"error": 3}', "upstream error"),
        (b'{"choices": []}', "no choices"),
        (b'{"choices": [{"message": "x"}]}', "no message"),
        (
            b'{"choices": [{"message": {"tool_calls": [{"function": {}}]}}]}',
            "without a function name",
        ),
    ],
)
def test_malformed_answers_are_upstream_errors(raw: bytes, message: str) -> None:
    with pytest.raises(UpstreamError, match=message):
        native_chat(raw)


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def test_embeddings_are_ordered_by_index_and_base64_is_decoded() -> None:
    raw = orjson.dumps(
        {
            "data": [
                {"index": 1, "embedding": _b64([0.5, -0.25])},
                {"index": 0, "embedding": [0.1, 0.2]},
            ],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    )
    native, usage = embeddings_to_ollama(raw, model="e", legacy=False)
    assert native == {
        "model": "e",
        "embeddings": [[0.1, 0.2], [0.5, -0.25]],
        "prompt_eval_count": 3,
    }
    assert usage == TokenUsage(prompt_tokens=3)
    legacy, _ = embeddings_to_ollama(raw, model="e", legacy=True)
    assert legacy == {"embedding": [0.1, 0.2]}
    assert embeddings_to_ollama(b'{"data": []}', model="e", legacy=True)[0] == {"embedding": []}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"data": "x"}',
        b'{"data": [1]}',
        b'{"data": [{"embedding": "!!"}]}',
        b'{"data": [{"embedding": "AAA="}]}',  # 2 bytes: not float32s
        b'{"data": [{"embedding": [1, "a"]}]}',
    ],
)
def test_malformed_embeddings(raw: bytes) -> None:
    with pytest.raises(UpstreamError):
        embeddings_to_ollama(raw, model="e", legacy=False)


# -- the stream ------------------------------------------------------------------------------


def machine(shape: Shape = Shape.CHAT, **kwargs: Any) -> OpenAIChatToOllamaStream:
    return OpenAIChatToOllamaStream(
        shape=shape, model="llama3:latest", created_at=AT, id_prefix="req1", **kwargs
    )


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> str:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return orjson.dumps({"object": "chat.completion.chunk", "choices": [choice], **extra}).decode()


def usage_chunk(**usage: int) -> str:
    return orjson.dumps({"choices": [], "usage": usage or USAGE}).decode()


def frag(
    index: int | None, *, id: str | None = None, name: str | None = None, args: Any = None
) -> str:
    call: dict[str, Any] = {} if index is None else {"index": index}
    if id is not None:
        call["id"] = id
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if args is not None:
        function["arguments"] = args
    call["function"] = function
    return chunk({"tool_calls": [call]})


def run(m: OpenAIChatToOllamaStream, events: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in events:
        out += m.feed(event)
    return out


FINAL = {
    "model": "llama3:latest",
    "created_at": AT,
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 11,
    "eval_count": 4,
}


def test_content_and_thinking_lines_then_the_final_line_after_the_usage_chunk() -> None:
    m = machine()
    out = run(
        m,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "hmm"}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo", "reasoning": "!"}),
            chunk({}, "stop"),
        ],
    )
    assert not m.done
    out += m.feed(usage_chunk())
    assert m.done and m.usage == TokenUsage(prompt_tokens=11, completion_tokens=4)
    assert out == [
        {
            "model": "llama3:latest",
            "created_at": AT,
            "message": {"role": "assistant", "content": "", "thinking": "hmm"},
            "done": False,
        },
        {
            "model": "llama3:latest",
            "created_at": AT,
            "message": {"role": "assistant", "content": "Hel"},
            "done": False,
        },
        {
            "model": "llama3:latest",
            "created_at": AT,
            "message": {"role": "assistant", "content": "lo", "thinking": "!"},
            "done": False,
        },
        FINAL,
    ]
    assert m.feed("[DONE]") == [] and m.finish() == [] and m.lines_out == 4


def test_done_marker_ends_the_stream_even_without_finish_reason_or_usage() -> None:
    m = machine()
    out = run(m, [chunk({"content": "a"}), "[DONE]"])
    assert m.done and m.usage is None
    assert out[-1] == {
        "model": "llama3:latest",
        "created_at": AT,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
    }


def test_usage_on_the_finish_chunk_ends_at_once() -> None:
    m = machine()
    out = m.feed(chunk({"content": "x"}, "length", usage=USAGE))
    assert m.done and out[-1]["done_reason"] == "length"


def test_usage_before_the_finish_does_not_end_the_stream() -> None:
    m = machine()
    run(
        m,
        [
            chunk({"content": "x"}, usage={"prompt_tokens": 1, "completion_tokens": 1}),
            chunk({}, "stop"),
        ],
    )
    assert not m.done
    out = m.feed("[DONE]")
    assert m.done and out[-1]["eval_count"] == 1


def test_null_usage_on_ordinary_chunks_is_ignored() -> None:
    m = machine()
    run(m, [chunk({"content": "x"}, usage=None), chunk({}, "stop", usage=None)])
    assert not m.done
    assert m.feed(usage_chunk())[-1] == FINAL


def test_tool_calls_are_buffered_and_released_as_one_line() -> None:
    m = machine()
    out = run(
        m,
        [
            frag(0, id="c1", name="weather", args=""),
            frag(0, args='{"city": '),
            frag(1, id="c2", name="time", args=""),
            frag(0, args='"Paris"}'),
            frag(1, args="{}"),
        ],
    )
    assert out == []
    out = m.feed(chunk({}, "tool_calls"))
    assert out == [
        {
            "model": "llama3:latest",
            "created_at": AT,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "c1",
                        "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}},
                    },
                    {"id": "c2", "function": {"index": 1, "name": "time", "arguments": {}}},
                ],
            },
            "done": False,
        }
    ]
    assert m.feed(usage_chunk())[-1] == FINAL  # tool_calls -> "stop"


def test_a_new_id_at_the_same_index_is_a_new_call() -> None:
    # Some backends put every parallel call at index 0 (docs/wire-notes.md, "Tool-call indexes in
    # streams").
    m = machine()
    out = run(
        m,
        [
            frag(0, id="a", name="f", args='{"n": 1}'),
            frag(0, id="b", name="g", args='{"n":'),
            frag(0, args=" 2}"),
            "[DONE]",
        ],
    )
    calls = out[0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("a", "f", {"n": 1}),
        ("b", "g", {"n": 2}),
    ]


def test_calls_without_index_or_id_continue_the_last_call_and_get_ids() -> None:
    m = machine()
    out = run(
        m,
        [
            frag(None, name="f", args='{"a"'),
            frag(None, args=": 1}"),
            frag(None, id="x", name="g", args={"b": 2}),
            "[DONE]",
        ],
    )
    calls = out[0]["message"]["tool_calls"]
    assert calls == [
        {"id": "call_req1_0", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}},
        {"id": "x", "function": {"index": 1, "name": "g", "arguments": {"b": 2}}},
    ]


def test_names_are_not_repeated_and_unparseable_arguments_are_wrapped() -> None:
    m = machine()
    out = run(m, [frag(0, id="a", name="f", args="{"), frag(0, name="f", args="oops"), "[DONE]"])
    call = out[0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "f" and call["arguments"] == {"raw": "{oops"}


def test_tool_argument_buffer_is_bounded() -> None:
    m = machine(max_tool_chars=10)
    out = run(m, [frag(0, id="a", name="f", args="x" * 6), frag(0, args="x" * 6)])
    assert out == [{"error": "tool-call arguments exceeded 10 characters"}]
    assert m.failed and m.feed("[DONE]") == []


@pytest.mark.parametrize(
    ("event", "kind", "message"),
    [
        ('{"error": {"message": "overloaded", "type": "server_error"}}', None, "overloaded"),
        ('{"error": "flat"}', None, "flat"),
        ('{"message": "bad"}', "error", "upstream error"),
        ("{not json", None, "backend sent a malformed stream event"),
        ("[1]", None, "backend sent a malformed stream event"),
    ],
)
def test_in_band_errors_fail_the_machine(event: str, kind: str | None, message: str) -> None:
    m = machine()
    assert m.feed(chunk({"content": "a"}))
    assert m.feed(event, kind) == [{"error": message}]
    assert m.failed and not m.done
    assert m.feed(chunk({"content": "b"})) == [] and m.finish() == []


def test_eof_before_any_finish_is_an_error_line() -> None:
    m = machine()
    m.feed(chunk({"content": "a"}))
    assert m.finish() == [{"error": "backend closed the stream before it finished"}]
    assert m.failed


def test_eof_after_the_finish_chunk_ends_normally() -> None:
    # Some servers never send [DONE]; the finish chunk is enough.
    m = machine()
    run(m, [frag(0, id="a", name="f", args="{}"), chunk({}, "stop")])
    assert m.finish()[-1]["done"] is True and m.done


def test_fail_after_done_is_silent() -> None:
    m = machine()
    m.feed("[DONE]")
    assert m.fail(UpstreamError("late")) == []
    assert m.done


def test_generate_shape_from_completion_chunks() -> None:
    m = machine(Shape.GENERATE)
    events = [
        orjson.dumps(
            {
                "object": "text_completion",
                "choices": [{"text": t, "index": 0, "finish_reason": None}],
            }
        ).decode()
        for t in ("def", " f")
    ]
    events.append(
        orjson.dumps({"choices": [{"text": "", "index": 0, "finish_reason": "length"}]}).decode()
    )
    out = run(m, [*events, usage_chunk()])
    assert [line.get("response") for line in out] == ["def", " f", ""]
    assert out[-1] == {
        "model": "llama3:latest",
        "created_at": AT,
        "response": "",
        "done": True,
        "done_reason": "length",
        "prompt_eval_count": 11,
        "eval_count": 4,
    }


def test_generate_shape_from_chat_chunks_puts_thinking_and_calls_at_top_level() -> None:
    m = machine(Shape.GENERATE)
    out = run(
        m,
        [
            chunk({"reasoning_content": "r", "content": "c"}),
            frag(0, id="a", name="f", args="{}"),
            "[DONE]",
        ],
    )
    assert out[0] == {
        "model": "llama3:latest",
        "created_at": AT,
        "response": "c",
        "thinking": "r",
        "done": False,
    }
    assert out[1]["tool_calls"][0]["function"]["name"] == "f"


def test_other_choices_are_ignored_and_logprobs_are_copied() -> None:
    entries = [{"token": "a", "logprob": -1.0, "bytes": None, "top_logprobs": []}]
    payload = {
        "choices": [
            {"index": 1, "delta": {"content": "other"}},
            {"index": 0, "delta": {"content": "a"}, "logprobs": {"content": entries}},
        ]
    }
    out = machine().feed(orjson.dumps(payload).decode())
    assert out[0]["message"]["content"] == "a" and out[0]["logprobs"] == entries


# -- properties -----------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)  # no lone surrogates
_INTS = st.integers(-(2**63), 2**63 - 1)  # what JSON (and orjson) carries
_ARGS = st.dictionaries(
    st.text("abc_", min_size=1, max_size=4),
    st.none() | st.booleans() | _INTS | _TEXT,
    max_size=4,
)


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200)
@given(
    st.lists(_TEXT, max_size=6),
    st.lists(st.tuples(st.sampled_from(["f", "g"]), _ARGS), max_size=3),
    st.lists(st.integers(0, 10_000), max_size=8),
    st.booleans(),
)
def test_any_fragmentation_gives_the_same_content_and_complete_calls(
    pieces: list[str], calls: list[tuple[str, dict[str, Any]]], cuts: list[int], interleave: bool
) -> None:
    events = [chunk({"content": p}) for p in pieces]
    fragments: list[list[str]] = []
    for index, (name, args) in enumerate(calls):
        text = orjson.dumps(args).decode()
        parts = _split(text, cuts)
        fragments.append(
            [frag(index, id=f"id{index}", name=name, args=parts[0])]
            + [frag(index, args=p) for p in parts[1:]]
        )
    if interleave:  # parallel calls' fragments interleaved, as some servers send them
        longest = max((len(f) for f in fragments), default=0)
        events += [f[i] for i in range(longest) for f in fragments if i < len(f)]
    else:
        events += [e for f in fragments for e in f]
    events += [chunk({}, "tool_calls" if calls else "stop"), usage_chunk()]
    out = run(machine(), events)
    assert out[-1] == FINAL
    text = "".join(line["message"]["content"] for line in out)
    assert text == "".join(pieces)
    got = [c for line in out for c in line["message"].get("tool_calls", ())]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in got] == [
        (f"id{i}", name, args) for i, (name, args) in enumerate(calls)
    ]
    assert sum(1 for line in out if "tool_calls" in line["message"]) == (1 if calls else 0)


_JSON = st.recursive(
    st.none() | st.booleans() | _INTS | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=10,
)
_KEYS = st.sampled_from(["choices", "delta", "usage", "error", "content", "tool_calls", "index"])
_PAYLOADS = st.one_of(
    _TEXT,
    _JSON.map(lambda v: orjson.dumps(v).decode()),
    st.dictionaries(_KEYS, _JSON, max_size=4).map(lambda v: orjson.dumps(v).decode()),
    st.builds(
        lambda delta, finish: chunk(delta, finish),
        st.dictionaries(
            st.sampled_from(["content", "reasoning", "tool_calls", "role"]), _JSON, max_size=3
        ),
        st.none() | _TEXT,
    ),
    st.just("[DONE]"),
)


@settings(max_examples=300)
@given(
    st.lists(_PAYLOADS, max_size=8), st.sampled_from([Shape.CHAT, Shape.GENERATE]), st.booleans()
)
def test_arbitrary_payloads_never_raise(events: list[str], shape: Shape, eof: bool) -> None:
    m = machine(shape)
    out = run(m, events)
    out += m.finish() if eof else m.fail(UpstreamError("cut"))
    assert m.done or m.failed
    assert ("error" in out[-1]) is m.failed
    orjson.dumps(out)  # every line is serialisable


# Plain text deltas, the events the hot path takes, and near misses.
_PLAIN = st.builds(
    lambda text, extra, choice: chunk({"content": text, **extra}, **choice),
    st.text(min_size=1, max_size=8),
    st.sampled_from([{}, {"role": "assistant"}, {"reasoning": ""}, {"tool_calls": None}]),
    st.sampled_from([{}, {"usage": None}, {"id": "c", "model": 'm"content":""'}]),
)


@settings(max_examples=300)
@given(
    st.lists(_PLAIN | _PLAIN | _PAYLOADS, max_size=10),
    st.sampled_from([Shape.CHAT, Shape.GENERATE]),
    st.sampled_from([None, "error", "message"]),
)
def test_the_hot_path_gives_the_bytes_feed_gives(
    events: list[str], shape: Shape, kind: str | None
) -> None:
    # ``ndjson_line`` first, as the stream base calls it, against ``feed`` alone.
    fast, slow = machine(shape), machine(shape)
    for i, data in enumerate(events):
        event = kind if i == len(events) // 2 else None
        expected = slow.feed(data, event)
        line = fast.ndjson_line(data, event)
        if line is None:
            got = b"".join(encode_ndjson(p) for p in fast.feed(data, event))
        else:
            assert len(expected) == 1
            got = line
        assert got == b"".join(encode_ndjson(p) for p in expected)
        assert (fast.done, fast.failed, fast.usage) == (slow.done, slow.failed, slow.usage)
        assert fast.lines_out == slow.lines_out
