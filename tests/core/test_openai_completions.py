"""/v1/completions: request validation, the native /api/generate body, and both answers."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from sansio_gateway.openai_over_ollama.completions import (
    OllamaCompletionStream,
    completion_request_to_ollama,
    ollama_generate_to_completion,
)
from sansio_gateway.wire.openai_completions import (
    CompletionRequest,
    parse_completion_request,
)

CID = "cmpl-r1"
CREATED = 1700000000
ERROR_PAYLOAD_KEYS = {"message", "type", "param", "code"}


def parse(**fields: Any) -> CompletionRequest:
    body = {"model": "m", "prompt": "Once upon", **fields}
    return parse_completion_request(orjson.dumps(body))


def rejected(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(**fields)
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def native(**fields: Any) -> dict[str, Any]:
    return completion_request_to_ollama(parse(**fields), model="backend:1b")


def gen(text: str = "", *, done: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "backend:1b",
        "created_at": "2026-01-01T00:00:00Z",
        "response": text,
        "done": done,
        **extra,
    }


def done_line(reason: str = "stop", text: str = "", **extra: Any) -> dict[str, Any]:
    return gen(text, done=True, done_reason=reason, prompt_eval_count=5, eval_count=9, **extra)


def machine(include_usage: bool = False) -> OllamaCompletionStream:
    return OllamaCompletionStream(
        completion_id=CID, created=CREATED, model="client-model", include_usage=include_usage
    )


def run(stream: OllamaCompletionStream, lines: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for value in lines:
        out += stream.feed(value)
    return out


def whole(resp: Any) -> dict[str, Any]:
    return ollama_generate_to_completion(
        resp, completion_id=CID, created=CREATED, model="client-model"
    )


def lp(token: str, logprob: float, *alts: tuple[str, float]) -> dict[str, Any]:
    entry: dict[str, Any] = {"token": token, "logprob": logprob}
    if alts:
        entry["top_logprobs"] = [{"token": t, "logprob": p} for t, p in alts]
    return entry


# -- parsing: what is accepted --------------------------------------------------------------


def test_minimal_request_defaults() -> None:
    req = parse()
    assert req == CompletionRequest(model="m", prompt="Once upon")
    assert req.raw is True and req.stream is False and req.suffix is None


def test_one_element_prompt_list_is_unwrapped() -> None:
    assert parse(prompt=["Hello"]).prompt == "Hello"


def test_every_mapped_parameter_is_kept() -> None:
    req = parse(
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        frequency_penalty=-1,
        presence_penalty=2,
        seed=42,
        stop="\n",
        logprobs=3,
        stream=True,
        stream_options={"include_usage": True},
        user="u1",
        echo=False,
        best_of=1,
        n=1,
        logit_bias={},
    )
    assert (req.max_tokens, req.temperature, req.top_p) == (7, 0.5, 0.9)
    assert (req.frequency_penalty, req.presence_penalty, req.seed) == (-1, 2, 42)
    assert req.stop == ("\n",) and req.logprobs == 3 and req.user == "u1"
    assert req.stream and req.include_usage


def test_explicit_nulls_count_as_absent() -> None:
    keys = ("suffix", "max_tokens", "temperature", "stop", "logprobs", "echo", "best_of", "n")
    assert parse(**dict.fromkeys(keys)) == parse()


def test_stop_list_and_options_num_predict() -> None:
    req = parse(stop=["a", "b"], options={"num_predict": 12, "num_ctx": 4096})
    assert req.stop == ("a", "b") and req.max_tokens == 12
    assert req.native_options == {"num_ctx": 4096}


def test_extensions_are_accepted() -> None:
    req = parse(keep_alive="5m", top_k=40, min_p=0.1, num_ctx=8192, repeat_penalty=1.1)
    assert req.keep_alive == "5m"
    assert req.native_options == {"top_k": 40, "min_p": 0.1, "num_ctx": 8192, "repeat_penalty": 1.1}


def test_raw_defaults_and_suffix() -> None:
    assert parse().raw is True
    assert parse(raw=False).raw is False
    assert parse(suffix="end").raw is False  # FIM needs the template
    assert parse(suffix="end", raw=False).raw is False
    assert parse(suffix="").suffix is None and parse(suffix="").raw is True


# -- parsing: every 400 and its param --------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"prompt": ["a", "b"]}, "prompt", "one request per prompt"),
        ({"prompt": [1, 2, 3]}, "prompt", "Token arrays"),
        ({"prompt": [[1, 2], [3]]}, "prompt", "Token arrays"),
        ({"prompt": ["a", 7]}, "prompt", "Token arrays"),
        ({"prompt": []}, "prompt", "empty array"),
        ({"prompt": ""}, "prompt", "empty string"),
        ({"prompt": [""]}, "prompt", "empty string"),
        ({"prompt": None}, "prompt", "Missing required parameter"),
        ({"prompt": {"text": "x"}}, "prompt", "expected a string or an array"),
        ({"prompt": ["a", None]}, "prompt.[1]", "expected a string"),
        ({"echo": True}, "echo", "neither the prompt's tokens nor their logprobs"),
        ({"echo": "yes"}, "echo", "expected a boolean"),
        ({"best_of": 3}, "best_of", "cannot rank candidates"),
        ({"best_of": 21}, "best_of", "above maximum"),
        ({"n": 2}, "n", "exactly one completion"),
        ({"n": 0}, "n", "below minimum"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "not supported"),
        ({"logit_bias": []}, "logit_bias", "expected an object"),
        ({"logprobs": 6}, "logprobs", "above maximum"),
        ({"logprobs": True}, "logprobs", "expected an integer"),
        ({"logprobs": -1}, "logprobs", "below minimum"),
        ({"max_tokens": 0}, "max_tokens", "below minimum"),
        ({"max_tokens": 1.5}, "max_tokens", "expected an integer"),
        ({"options": {"num_predict": -1}}, "options.num_predict", "below minimum"),
        ({"temperature": 2.5}, "temperature", "above maximum"),
        ({"top_p": -0.1}, "top_p", "below minimum"),
        ({"frequency_penalty": 3}, "frequency_penalty", "above maximum"),
        ({"presence_penalty": -3}, "presence_penalty", "below minimum"),
        ({"seed": "1"}, "seed", "expected an integer"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array too long"),
        ({"stop": ["a", 1]}, "stop.[1]", "expected a string"),
        ({"stop": 5}, "stop", "expected a string or an array"),
        ({"stream": "true"}, "stream", "expected a boolean"),
        ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage", "boolean"),
        ({"suffix": 3}, "suffix", "expected a string"),
        ({"suffix": "end", "raw": True}, "suffix", "ignores the suffix in raw mode"),
        ({"raw": "yes"}, "raw", "expected a boolean"),
        ({"user": 1}, "user", "expected a string"),
        ({"keep_alive": []}, "keep_alive", "a string or a number"),
        ({"top_k": -1}, "top_k", "below minimum"),
        ({"options": "x"}, "options", "expected an object"),
        ({"model": ""}, "model", "you must provide a model parameter"),
        ({"model": 3}, "model", "expected a string"),
        ({"messages": []}, "messages", "Unrecognized request argument supplied: messages"),
        ({"think": True}, "think", "Unrecognized request argument supplied: think"),
        ({"max_completion_tokens": 3}, "max_completion_tokens", "Unrecognized"),
    ],
)
def test_rejections_name_their_param(fields: dict[str, Any], param: str, words: str) -> None:
    err = rejected(**fields)
    assert err.param == param
    assert words in err.message


def test_missing_prompt_key() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_completion_request(b'{"model": "m"}')
    assert info.value.param == "prompt"


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b'"text"'])
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_completion_request(body)
    assert info.value.param is None


# -- the native body -----------------------------------------------------------------------------


def test_native_body_minimal() -> None:
    assert native() == {
        "model": "backend:1b",
        "prompt": "Once upon",
        "stream": False,
        "raw": True,
        "think": False,
    }


def test_native_body_maps_every_parameter() -> None:
    body = native(
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        frequency_penalty=0.1,
        presence_penalty=0.2,
        seed=1,
        stop="\n",
        stream=True,
        suffix="return x",
        keep_alive=0,
        logprobs=2,
        top_k=40,
    )
    assert body["stream"] is True and body["suffix"] == "return x" and body["raw"] is False
    assert body["keep_alive"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert body["options"] == {
        "top_k": 40,
        "num_predict": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 1,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "stop": ["\n"],
    }


def test_logprobs_zero_still_asks_for_logprobs() -> None:
    body = native(logprobs=0)
    assert body["logprobs"] is True and body["top_logprobs"] == 0


def test_mapped_parameters_win_over_options() -> None:
    body = native(temperature=0.2, options={"temperature": 0.9, "num_ctx": 2048})
    assert body["options"] == {"temperature": 0.2, "num_ctx": 2048}


def test_default_max_tokens_only_when_the_client_set_none() -> None:
    req = parse()
    assert completion_request_to_ollama(req, model="x", default_max_tokens=64)["options"] == {
        "num_predict": 64
    }
    capped = completion_request_to_ollama(parse(max_tokens=5), model="x", default_max_tokens=64)
    assert capped["options"] == {"num_predict": 5}


def test_raw_opt_out_and_fim() -> None:
    assert native(raw=False)["raw"] is False
    assert native(suffix="}")["raw"] is False


# -- the whole answer -----------------------------------------------------------------------------


def test_non_stream_completion() -> None:
    assert whole(done_line(text="there was a fox", context=[1, 2])) == {
        "id": CID,
        "object": "text_completion",
        "created": CREATED,
        "model": "client-model",
        "system_fingerprint": "fp_sansio",
        "choices": [
            {"text": "there was a fox", "index": 0, "logprobs": None, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
    }


@pytest.mark.parametrize(("native_reason", "reason"), [("length", "length"), ("", "stop")])
def test_non_stream_finish_reasons(native_reason: str, reason: str) -> None:
    assert whole(done_line(native_reason))["choices"][0]["finish_reason"] == reason


def test_thinking_is_dropped_and_missing_counts_are_zero() -> None:
    body = whole(gen("x", done=True, thinking="hmm"))
    assert body["choices"][0]["text"] == "x"
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_non_stream_logprobs_are_legacy_shaped() -> None:
    resp = done_line(
        text="Hi there", logprobs=[lp("Hi", -0.1, ("Hi", -0.1), ("Hey", -2)), lp(" there", -0.5)]
    )
    assert whole(resp)["choices"][0]["logprobs"] == {
        "tokens": ["Hi", " there"],
        "token_logprobs": [-0.1, -0.5],
        "top_logprobs": [{"Hi": -0.1, "Hey": -2}, {" there": -0.5}],
        "text_offset": [0, 2],
    }


@pytest.mark.parametrize(
    ("resp", "words"),
    [
        ({"error": "model crashed"}, "model crashed"),
        ({"error": {"message": "nested"}}, "nested"),
        ({"error": None}, "upstream error"),
        ([], "not a JSON object"),
        (gen(3), "bad response"),  # type: ignore[arg-type]
        ({"response": "x", "done": "yes"}, "bad response"),
        ({"response": "x", "done_reason": 1}, "bad response"),
        ({"response": "x", "logprobs": {}}, "logprobs is not an array"),
        ({"response": "x", "logprobs": [1]}, "logprob entry is not an object"),
        ({"response": "x", "logprobs": [{"token": 1}]}, "bad logprob entry"),
        ({"response": "x", "logprobs": [{"logprob": True}]}, "bad logprob entry"),
        ({"response": "x", "logprobs": [{"top_logprobs": 3}]}, "top_logprobs is not an array"),
        ({"response": "x", "logprobs": [{"top_logprobs": [{"token": None}]}]}, "bad logprob"),
    ],
)
def test_error_and_malformed_answers_are_upstream_errors(resp: Any, words: str) -> None:
    with pytest.raises(UpstreamError) as info:
        whole(resp)
    assert words in info.value.message
    assert info.value.status_code == 502


# -- the stream ------------------------------------------------------------------------------------


def test_stream_framing() -> None:
    chunks = run(machine(), [gen("Hel"), gen("lo"), done_line()])
    assert chunks[0] == {
        "id": CID,
        "object": "text_completion",
        "created": CREATED,
        "model": "client-model",
        "system_fingerprint": "fp_sansio",
        "choices": [{"text": "Hel", "index": 0, "logprobs": None, "finish_reason": None}],
    }
    assert [c["choices"][0]["text"] for c in chunks] == ["Hel", "lo", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert all("usage" not in c for c in chunks)


def test_text_on_the_done_line_rides_on_the_finish_chunk() -> None:
    chunks = run(machine(), [done_line("length", text="all at once")])
    assert [c["choices"] for c in chunks] == [
        [{"text": "all at once", "index": 0, "logprobs": None, "finish_reason": "length"}]
    ]


def test_empty_lines_emit_nothing() -> None:
    stream = machine()
    assert stream.feed(gen("")) == [] and stream.feed(gen(None)) == []  # type: ignore[arg-type]
    assert not stream.done and not stream.failed


def test_usage_chunk_and_usage_null_when_requested() -> None:
    stream = machine(include_usage=True)
    chunks = run(stream, [gen("a"), done_line()])
    assert [c["usage"] for c in chunks] == [
        None,
        None,
        {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14},
    ]
    assert chunks[-1]["choices"] == [] and chunks[-1]["object"] == "text_completion"
    assert stream.usage == TokenUsage(prompt_tokens=5, completion_tokens=9)


def test_usage_is_recorded_without_include_usage() -> None:
    stream = machine()
    run(stream, [done_line()])
    assert stream.usage == TokenUsage(prompt_tokens=5, completion_tokens=9)
    assert stream.done and not stream.failed


def test_stream_logprobs_offsets_continue_across_chunks() -> None:
    chunks = run(
        machine(),
        [
            gen("Hi", logprobs=[lp("Hi", -0.1)]),
            gen(" you", logprobs=[lp(" you", -1, (" me", -2))]),
            done_line(),
        ],
    )
    assert chunks[0]["choices"][0]["logprobs"]["text_offset"] == [0]
    assert chunks[1]["choices"][0]["logprobs"] == {
        "tokens": [" you"],
        "token_logprobs": [-1],
        "top_logprobs": [{" me": -2, " you": -1}],
        "text_offset": [2],
    }
    assert chunks[2]["choices"][0]["logprobs"] is None


def test_in_band_error_line_fails_the_stream() -> None:
    stream = machine(include_usage=True)
    out = run(stream, [gen("a"), {"error": "runner crashed"}, gen("b"), done_line()])
    assert out[-1] == {
        "error": {
            "message": "runner crashed",
            "type": "api_error",
            "param": None,
            "code": "upstream_error",
        }
    }
    assert len(out) == 2 and stream.failed and not stream.done
    assert stream.finish() == [] and stream.usage is None


def test_garbage_line_is_an_error_payload() -> None:
    stream = machine()
    [payload] = stream.feed(["not", "an", "object"])
    assert "malformed generate response" in payload["error"]["message"]
    assert stream.failed


def test_eof_before_done_is_an_error() -> None:
    stream = machine()
    run(stream, [gen("a")])
    [payload] = stream.finish()
    assert "closed the stream before it finished" in payload["error"]["message"]
    assert stream.finish() == [] and stream.fail(UpstreamError("again")) == []


def test_eof_after_done_is_quiet() -> None:
    stream = machine()
    run(stream, [done_line()])
    assert stream.finish() == [] and stream.done


def test_transport_failure_reports_once() -> None:
    stream = machine()
    [payload] = stream.fail(UpstreamTimeout("backend went quiet"))
    assert payload["error"]["code"] == "upstream_timeout"
    assert stream.fail(UpstreamTimeout("x")) == [] and stream.feed(gen("late")) == []


def test_nothing_after_done() -> None:
    stream = machine()
    run(stream, [done_line()])
    assert stream.feed(gen("late")) == [] and stream.feed({"error": "x"}) == []
    assert stream.fail(UpstreamError("x")) == []


# -- properties ----------------------------------------------------------------------------------------

_text = st.text(max_size=8)
_logprobs = st.lists(
    st.builds(
        lambda t, p, alts: {"token": t, "logprob": p, "top_logprobs": alts},
        _text,
        st.floats(-10, 0),
        st.lists(
            st.builds(lambda t, p: {"token": t, "logprob": p}, _text, st.floats(-10, 0)), max_size=2
        ),
    ),
    max_size=2,
)


@st.composite
def _event(draw: st.DrawFn) -> dict[str, Any]:
    out = gen(draw(_text))
    if draw(st.booleans()):
        out["thinking"] = draw(_text)
    if draw(st.integers(0, 2)) == 0:
        out["logprobs"] = draw(_logprobs)
    return out


@st.composite
def _final(draw: st.DrawFn) -> dict[str, Any]:
    out = gen(draw(st.sampled_from(["", "", "end"])), done=True)
    out["done_reason"] = draw(st.sampled_from(["stop", "length", ""]))
    if draw(st.booleans()):
        out["logprobs"] = draw(_logprobs)
    for key in ("prompt_eval_count", "eval_count"):
        if draw(st.booleans()):
            out[key] = draw(st.integers(0, 10_000))
    return out


def aggregate(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-stream body Ollama gives for the same output."""
    final = dict(lines[-1])
    final["response"] = "".join(ln["response"] for ln in lines)
    final["logprobs"] = [e for ln in lines for e in ln.get("logprobs", [])]
    return final


def reassemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a client accumulates from the chunks."""
    text: list[str] = []
    legacy: dict[str, list[Any]] = {}
    finish, usage = None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            text.append(choice["text"])
            for key, values in (choice["logprobs"] or {}).items():
                legacy.setdefault(key, []).extend(values)
            finish = choice["finish_reason"] or finish
    return {"text": "".join(text), "logprobs": legacy or None, "finish": finish, "usage": usage}


@settings(max_examples=200, deadline=None)
@given(st.lists(_event(), max_size=8), _final())
def test_stream_and_non_stream_agree(events: list[dict[str, Any]], final: dict[str, Any]) -> None:
    lines = [*events, final]
    streamed = reassemble(run(machine(include_usage=True), lines))
    expected = whole(aggregate(lines))
    choice = expected["choices"][0]
    assert streamed["text"] == choice["text"] == "".join(ln["response"] for ln in lines)
    assert streamed["logprobs"] == choice["logprobs"]
    assert streamed["finish"] == choice["finish_reason"]
    assert streamed["usage"] == expected["usage"]


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=10,
)
_near_native = st.fixed_dictionaries(
    {},
    optional={
        "response": _text | _json,
        "done": st.booleans() | _json,
        "done_reason": st.sampled_from(["stop", "length"]) | _json,
        "logprobs": _logprobs | _json,
        "eval_count": st.integers(0, 9) | _json,
        "error": _json,
    },
)


def check_chunk_invariants(
    chunks: list[dict[str, Any]], include_usage: bool, *, finished: bool
) -> None:
    assert {(c["id"], c["created"], c["object"]) for c in chunks} <= {
        (CID, CREATED, "text_completion")
    }
    finishes = [
        i for i, c in enumerate(chunks) if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    if finished:
        tail = 2 if include_usage else 1
        assert finishes == [len(chunks) - tail]  # the finish is the last choice chunk
        if include_usage:
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is not None
    else:
        assert finishes == []
    for c in chunks:
        assert ("usage" in c) is include_usage
        if c["choices"]:
            assert c.get("usage") is None


@settings(max_examples=300, deadline=None)
@given(st.lists(_json | _near_native | _event() | _final(), max_size=8), st.booleans())
def test_garbage_never_raises_and_nothing_follows_the_end(
    values: list[Any], include_usage: bool
) -> None:
    stream = machine(include_usage=include_usage)
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
    orjson.dumps(out)  # every payload is serialisable


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


_request_keys = ("model", "prompt", "suffix", "max_tokens", "stop", "logprobs", "echo", "n", "raw")
_near_request = st.fixed_dictionaries(
    {}, optional={key: _json | st.sampled_from(["m", "p", 1, True]) for key in _request_keys}
)


@settings(max_examples=300, deadline=None)
@given(_json | _near_request)
def test_arbitrary_json_bodies_parse_or_400(value: Any) -> None:
    with contextlib.suppress(InvalidRequest):
        req = parse_completion_request(orjson.dumps(value))
        completion_request_to_ollama(req, model="x")
