"""The Exchange on /v1/completions and /v1/embeddings, with scripted upstream results."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from sansio_gateway.actions import (
    ClientDisconnected,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
)
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.errors import UpstreamError
from sansio_gateway.exchange import ExchangeState
from sansio_gateway.gateway import Gateway

from ..helpers import NOW, ExchangeDriver, make_config

COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MODEL = "llama3.2:1b"
EMBEDDER = "nomic-embed-text:latest"
OK_HEAD = UpstreamResponseStarted(status=200, headers=((b"content-type", b"application/x-ndjson"),))
JSON_HEAD = UpstreamResponseStarted(status=200, headers=((b"content-type", b"application/json"),))


def gateway(toml: str = "") -> Gateway:
    gw = Gateway(make_config(toml))
    models = [DiscoveredModel(name=MODEL), DiscoveredModel(name=EMBEDDER)]
    gw.record_discovery("ollama", models, NOW - 5)
    return gw


def completion(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "def fib(n):", "stream": stream, **extra}


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def gen(text: str, *, done: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "created_at": "2026-11-26T06:00:00Z",
        "response": text,
        "done": done,
        **extra,
    }


DONE_LINE = gen("", done=True, done_reason="stop", prompt_eval_count=4, eval_count=3)


def scripted(d: ExchangeDriver, body: bytes, head: UpstreamResponseStarted = JSON_HEAD) -> None:
    d.handle(head)
    d.handle(UpstreamChunkReceived(data=body))
    d.handle(UpstreamClosed())


# -- /v1/completions -----------------------------------------------------------------------------


def test_completion_non_stream() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(max_tokens=20, stop=["\n\n"]))
    [up] = d.seen.upstream
    assert up.url == "http://127.0.0.1:11434/api/generate" and up.method == "POST"
    assert orjson.loads(up.body) == {
        "model": MODEL,
        "prompt": "def fib(n):",
        "stream": False,
        "raw": True,
        "think": False,
        "options": {"num_predict": 20, "stop": ["\n\n"]},
    }
    answer = gen(
        "\n    return n", done=True, done_reason="length", prompt_eval_count=4, eval_count=20
    )
    scripted(d, orjson.dumps(answer))
    assert d.seen.status == 200 and d.seen.ended
    assert d.seen.headers[b"content-type"] == b"application/json"
    assert d.seen.json() == {
        "id": "cmpl-req1",
        "object": "text_completion",
        "created": int(NOW),
        "model": MODEL,
        "system_fingerprint": "fp_sansio",
        "choices": [
            {"text": "\n    return n", "index": 0, "logprobs": None, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 20, "total_tokens": 24},
    }
    [record] = d.seen.usage
    assert record.route == "completions" and record.outcome == "ok" and record.usage_reported
    assert (record.prompt_tokens, record.completion_tokens) == (4, 20)


def test_completion_stream_with_usage_under_any_chunking() -> None:
    raw = ndjson(gen("\n    "), gen("return"), gen(" n"), DONE_LINE)
    for size in (1, 7, len(raw)):
        d = ExchangeDriver(gateway())
        d.start(
            "POST", COMPLETIONS, completion(stream=True, stream_options={"include_usage": True})
        )
        assert orjson.loads(d.seen.upstream[0].body)["stream"] is True
        d.handle(OK_HEAD)
        assert d.seen.headers[b"content-type"].startswith(b"text/event-stream")
        for i in range(0, len(raw), size):
            d.handle(UpstreamChunkReceived(data=raw[i : i + size]))
        assert d.seen.ended and d.exchange.state is ExchangeState.DONE
        payloads = d.seen.sse_payloads()
        assert payloads[-1] == "[DONE]"
        chunks = payloads[:-1]
        assert {(c["id"], c["created"], c["object"]) for c in chunks} == {
            ("cmpl-req1", int(NOW), "text_completion")
        }
        assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "\n    return n"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7
        [record] = d.seen.usage
        assert record.outcome == "ok" and record.completion_tokens == 3


def test_completion_stream_ends_at_the_done_line_before_the_upstream_closes() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=ndjson(gen("x"), DONE_LINE)))
    assert d.seen.ended and d.seen.sse_payloads()[-1] == "[DONE]"
    assert d.handle(UpstreamClosed()) == []


def test_completion_in_band_error_becomes_an_sse_error_without_done() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=ndjson(gen("a"), {"error": "out of memory"})))
    assert d.seen.ended
    payloads = d.seen.sse_payloads()
    assert "[DONE]" not in payloads
    assert payloads[-1]["error"]["message"] == "out of memory"
    assert d.seen.usage[0].outcome == "failed_mid_stream"


def test_completion_premature_eof_is_an_error_event() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=ndjson(gen("partial"))))
    d.handle(UpstreamClosed())
    payloads = d.seen.sse_payloads()
    assert "closed the stream" in payloads[-1]["error"]["message"] and "[DONE]" not in payloads
    [record] = d.seen.usage
    assert record.outcome == "failed_mid_stream" and not record.usage_reported
    assert record.completion_tokens >= 1


def test_completion_upstream_dies_mid_stream() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=ndjson(gen("partial"))))
    d.handle(UpstreamFailed(error=UpstreamError("connection to backend 'ollama' was lost")))
    assert d.seen.ended and not d.seen.keep_alive
    assert d.seen.sse_payloads()[-1]["error"]["message"].startswith("connection to backend")


def test_completion_garbage_mid_stream_is_an_error_event() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=b"<html>oops</html>\n"))
    assert d.seen.ended and "error" in d.seen.sse_payloads()[-1]


def test_completion_framing_error_mid_stream_is_an_error_event() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=b'{"response": "\xff"}\n'))
    assert d.seen.ended
    assert "malformed stream" in d.seen.sse_payloads()[-1]["error"]["message"]


def test_completion_framing_error_at_eof_is_an_error_event() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=b'{"response": "x", "done": false'))
    d.handle(UpstreamClosed())
    assert d.seen.ended and "error" in d.seen.sse_payloads()[-1]


def test_completion_done_line_without_trailing_newline_at_eof() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=ndjson(gen("x")) + orjson.dumps(DONE_LINE)))
    d.handle(UpstreamClosed())
    assert d.seen.sse_payloads()[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (completion(echo=True), "echo"),
        (completion(best_of=2), "best_of"),
        (completion(n=3), "n"),
        (completion(prompt=[1, 2, 3]), "prompt"),
        (completion(prompt=["a", "b"]), "prompt"),
        (completion(bogus=1), "bogus"),
    ],
)
def test_completion_400s_never_reach_a_backend(body: dict[str, Any], param: str) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, body)
    assert d.seen.status == 400 and d.seen.upstream == [] and d.seen.usage == []
    error = d.seen.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_completion_unknown_model_is_404() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(model="nope:1b"))
    assert d.seen.status == 404 and d.seen.json()["error"]["code"] == "model_not_found"


def test_completion_backend_400_keeps_its_message() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(suffix="}"))
    assert orjson.loads(d.seen.upstream[0].body)["raw"] is False
    error = UpstreamResponseStarted(status=400, headers=())
    scripted(d, b'{"error":"\\"llama3.2:1b\\" does not support insert"}', error)
    assert d.seen.status == 400
    assert d.seen.json()["error"]["message"] == '"llama3.2:1b" does not support insert'
    assert d.seen.usage[0].outcome == "upstream_error"


def test_completion_malformed_200_answer_is_502() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion())
    scripted(d, b'{"response": 3, "done": true}')
    assert d.seen.status == 502 and d.seen.json()["error"]["code"] == "upstream_error"


@pytest.mark.parametrize("body", [b"<html>", b"[]"])
def test_completion_non_object_200_answer_is_502(body: bytes) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion())
    scripted(d, body)
    assert d.seen.status == 502


def test_completion_client_disconnect_mid_stream() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COMPLETIONS, completion(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=ndjson(gen("x"))))
    d.handle(ClientDisconnected())
    assert d.seen.cancelled
    assert d.seen.usage[0].outcome == "client_disconnected"


def test_completion_alias_is_rewritten_both_ways() -> None:
    gw = Gateway(
        make_config(
            '[[backends]]\nname="local"\nurl="http://127.0.0.1:9"\n'
            '[[models]]\nname="gpt-3.5-turbo-instruct"\nbackend="local"\ntarget="llama3.2:1b"\n'
        )
    )
    gw.record_discovery("local", [], NOW)
    d = ExchangeDriver(gw)
    d.start("POST", COMPLETIONS, completion(model="gpt-3.5-turbo-instruct"))
    assert orjson.loads(d.seen.upstream[0].body)["model"] == MODEL
    scripted(d, orjson.dumps(gen("ok", done=True)))
    assert d.seen.json()["model"] == "gpt-3.5-turbo-instruct"
    assert d.seen.usage[0].resolved_model == MODEL


def test_completion_default_max_tokens_from_config() -> None:
    d = ExchangeDriver(gateway("[server]\ndefault_max_tokens = 128\n"))
    d.start("POST", COMPLETIONS, completion())
    assert orjson.loads(d.seen.upstream[0].body)["options"] == {"num_predict": 128}


def test_completion_passes_through_to_an_openai_backend() -> None:
    gw = Gateway(
        make_config('[[backends]]\nname="o"\nkind="openai"\nurl="http://127.0.0.1:9/v1"\n')
    )
    d = ExchangeDriver(gw)
    d.start("POST", COMPLETIONS, completion())
    [up] = d.seen.upstream
    assert up.url == "http://127.0.0.1:9/v1/completions"
    assert orjson.loads(up.body)["prompt"] == "def fib(n):"


# -- /v1/embeddings --------------------------------------------------------------------------------

NATIVE_EMBED = {
    "model": EMBEDDER,
    "embeddings": [[0.1, -0.2, 0.3], [0.6, 0.8, 0.0]],
    "total_duration": 1000,
    "prompt_eval_count": 6,
}


def embed(**extra: Any) -> dict[str, Any]:
    return {"model": "nomic-embed-text", "input": ["first", "second"], **extra}


def test_embeddings_float() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", EMBEDDINGS, embed(dimensions=3, encoding_format="float"))
    [up] = d.seen.upstream
    assert up.url == "http://127.0.0.1:11434/api/embed"
    assert orjson.loads(up.body) == {
        "model": EMBEDDER,
        "input": ["first", "second"],
        "dimensions": 3,
    }
    scripted(d, orjson.dumps(NATIVE_EMBED))
    assert d.seen.status == 200 and d.seen.headers[b"x-request-id"] == b"req1"
    assert d.seen.json() == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]},
            {"object": "embedding", "index": 1, "embedding": [0.6, 0.8, 0.0]},
        ],
        "model": "nomic-embed-text",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    [record] = d.seen.usage
    assert record.route == "embeddings" and record.outcome == "ok"
    assert (record.prompt_tokens, record.completion_tokens) == (6, 0)
    assert record.resolved_model == EMBEDDER


def test_embeddings_base64() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", EMBEDDINGS, embed(encoding_format="base64"))
    scripted(d, orjson.dumps(NATIVE_EMBED))
    data = d.seen.json()["data"]
    assert data[0]["embedding"] == "zczMPc3MTL6amZk+"
    raw = base64.b64decode(data[1]["embedding"])
    assert struct.unpack("<3f", raw) == struct.unpack("<3f", struct.pack("<3f", 0.6, 0.8, 0.0))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (embed(input=[[1, 2], [3]]), "input"),
        (embed(input=[]), "input"),
        (embed(encoding_format="binary"), "encoding_format"),
        (embed(dimensions=0), "dimensions"),
        (embed(stream=True), "stream"),
    ],
)
def test_embeddings_400s_never_reach_a_backend(body: dict[str, Any], param: str) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", EMBEDDINGS, body)
    assert d.seen.status == 400 and d.seen.upstream == []
    assert d.seen.json()["error"]["param"] == param


def test_embeddings_backend_error_is_forwarded() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", EMBEDDINGS, embed())
    error = UpstreamResponseStarted(status=400, headers=())
    scripted(d, b'{"error":"this model does not support embeddings"}', error)
    assert d.seen.status == 400
    assert d.seen.json()["error"]["message"] == "this model does not support embeddings"


def test_embeddings_count_mismatch_is_502_and_estimated_usage_is_recorded() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", EMBEDDINGS, embed())
    scripted(d, orjson.dumps({"embeddings": [[0.1]], "prompt_eval_count": 2}))
    assert d.seen.status == 502
    assert "expected 2 embeddings" in d.seen.json()["error"]["message"]
    [record] = d.seen.usage
    assert not record.usage_reported and record.prompt_tokens >= 1


@pytest.mark.parametrize("body", [b"not json", b"[1]"])
def test_embeddings_non_object_answer_is_502(body: bytes) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", EMBEDDINGS, embed())
    scripted(d, body)
    assert d.seen.status == 502


def test_embeddings_unknown_model_is_404() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", EMBEDDINGS, embed(model="nope"))
    assert d.seen.status == 404


def test_embeddings_pass_through_to_an_openai_backend() -> None:
    gw = Gateway(make_config('[[backends]]\nname="o"\nkind="openai"\nurl="http://127.0.0.1:9"\n'))
    d = ExchangeDriver(gw)
    d.start("POST", EMBEDDINGS, embed())
    [up] = d.seen.upstream
    assert up.url.endswith("/embeddings")


def test_embeddings_flow_has_no_stream_hooks() -> None:
    # plan() never streams: its call carries a whole-answer translator, and
    # the flow stubs out no stream hooks (the Flow protocol has none).
    d = ExchangeDriver(gateway())
    d.start("POST", EMBEDDINGS, embed())
    flow = d.exchange.flow
    assert flow is not None
    assert not any(hasattr(flow, hook) for hook in ("feed", "finish", "fail", "stream_headers"))
    [up] = d.seen.upstream
    assert up.url.endswith("/api/embed")


@pytest.mark.parametrize("path", [COMPLETIONS, EMBEDDINGS])
def test_get_is_405(path: str) -> None:
    d = ExchangeDriver(gateway())
    d.start("GET", path)
    assert d.seen.status == 405 and d.seen.headers[b"allow"] == b"POST"
