"""The Ollama API surface (``/`` and ``/api/*``) driven through the Exchange, no sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sansio_gateway.actions import (
    CatalogueRefreshed,
    RefreshCatalogue,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
)
from sansio_gateway.auth import hash_key
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.backends.registry import BackendKind, builtin_registry
from sansio_gateway.errors import UpstreamError
from sansio_gateway.gateway import Gateway

from ..helpers import NOW, ExchangeDriver, make_config

CONFIG = """
[[backends]]
name = "oa"
kind = "openai"
url = "http://oa.test/v1"

[[backends]]
name = "ol"
kind = "ollama"
url = "http://ol.test"

[[models]]
name = "fast"
backend = "ol"
target = "llama3.2:1b"

[[models]]
name = "resilient"
backend = "oa"
target = "gpt-4o-mini"
fallbacks = ["ol:llama3.2:1b"]
"""
DETAILS = {"format": "gguf", "family": "llama", "parameter_size": "1.2B"}
SSE_HEAD = UpstreamResponseStarted(status=200, headers=((b"content-type", b"text/event-stream"),))
JSON_HEAD = UpstreamResponseStarted(status=200, headers=((b"content-type", b"application/json"),))
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
ALICE = "sk-alice"


def gateway(extra: str = "", **env: str) -> Gateway:
    gw = Gateway(make_config(CONFIG + extra, **env))
    gw.record_discovery(
        "oa",
        [
            DiscoveredModel(name="gpt-4o-mini", created=1_715_367_049),
            DiscoveredModel(name="text-embedding-3-small"),
            DiscoveredModel(name="hf.co/org/model:Q4"),
        ],
        NOW - 5,
    )
    gw.record_discovery("ol", [DiscoveredModel(name="llama3.2:1b", details=DETAILS)], NOW - 5)
    return gw


def driver(gw: Gateway | None = None) -> ExchangeDriver:
    return ExchangeDriver(gw or gateway())


def chat(model: str = "gpt-4o-mini", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}


def sse(*payloads: Any) -> bytes:
    out = b""
    for payload in payloads:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        out += b"data: " + data + b"\n\n"
    return out


def delta(content: str, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "choices": [choice]}


def lines(body: bytes) -> list[Any]:
    assert body.endswith(b"\n") and b"\n\n" not in body
    return [orjson.loads(line) for line in body.splitlines()]


def feed(d: ExchangeDriver, raw: bytes, step: int = 7) -> None:
    for i in range(0, len(raw), step):
        d.handle(UpstreamChunkReceived(data=raw[i : i + step]))


COMPLETION = {
    "object": "chat.completion",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
    ],
    "usage": USAGE,
}

# -- /api/chat on an OpenAI-compatible backend -------------------------------------------------


def test_chat_non_stream() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat(stream=False))
    [up] = d.seen.upstream
    assert up.url == "http://oa.test/v1/chat/completions"
    assert orjson.loads(up.body) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }
    d.handle(JSON_HEAD)
    d.handle(UpstreamChunkReceived(data=orjson.dumps(COMPLETION)))
    d.handle(UpstreamClosed())
    assert d.seen.status == 200 and d.seen.headers[b"content-type"] == b"application/json"
    assert d.seen.json() == {
        "model": "gpt-4o-mini",
        "created_at": "2025-11-24T16:00:00Z",
        "message": {"role": "assistant", "content": "Hello"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 9,
        "eval_count": 3,
    }
    [record] = d.seen.usage
    assert (record.prompt_tokens, record.completion_tokens) == (9, 3)
    assert record.surface == "ollama" and record.route == "ollama.chat"
    assert record.outcome == "ok" and record.usage_reported and record.backend == "oa"


def test_chat_streams_by_default_as_ndjson() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat())
    sent = orjson.loads(d.seen.upstream[0].body)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    d.handle(SSE_HEAD)
    assert d.seen.headers[b"content-type"] == b"application/x-ndjson"
    raw = sse(delta("Hel"), delta("lo"), delta("", "stop"), {"choices": [], "usage": USAGE})
    feed(d, raw + b"data: [DONE]\n\n")
    assert d.seen.ended
    out = lines(d.seen.body)
    assert [line["message"]["content"] for line in out] == ["Hel", "lo", ""]
    assert [line["done"] for line in out] == [False, False, True]
    assert out[-1]["eval_count"] == 3 and out[-1]["done_reason"] == "stop"
    [record] = d.seen.usage
    assert record.outcome == "ok" and record.completion_tokens == 3
    assert d.handle(UpstreamClosed()) == []


def test_synthetic_latest_is_stripped_upstream_and_echoed_back() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat("gpt-4o-mini:latest", stream=False))
    assert orjson.loads(d.seen.upstream[0].body)["model"] == "gpt-4o-mini"
    d.handle(JSON_HEAD)
    d.handle(UpstreamChunkReceived(data=orjson.dumps(COMPLETION)))
    d.handle(UpstreamClosed())
    assert d.seen.json()["model"] == "gpt-4o-mini:latest"
    assert d.seen.usage[0].model == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "load"),
        ({"keep_alive": 0}, "unload"),
        ({"keep_alive": "0s", "messages": None}, "unload"),
    ],
)
def test_load_and_unload_are_answered_locally(fields: dict[str, Any], reason: str) -> None:
    d = driver()
    d.start("POST", "/api/chat", {"model": "gpt-4o-mini", "messages": [], **fields})
    assert not d.seen.upstream and not d.seen.usage
    assert d.seen.json() == {
        "model": "gpt-4o-mini",
        "created_at": "2025-11-24T16:00:00Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": reason,
    }


def unknown(d: ExchangeDriver, path: str, body: dict[str, Any]) -> None:
    """Start with an unknown model: the Exchange refreshes discovery first."""
    assert d.start("POST", path, body) == [RefreshCatalogue()]
    settle(d)


def settle(d: ExchangeDriver) -> None:
    """Report the refresh, unless the driver already did (as an adapter would)."""
    if d.seen.status is None:
        d.handle(CatalogueRefreshed())


def test_unknown_model_is_404_in_ollamas_envelope() -> None:
    d = driver()
    unknown(d, "/api/chat", chat("nope"))
    assert d.seen.status == 404 and not d.seen.upstream
    assert set(d.seen.json()) == {"error"} and "nope" in d.seen.json()["error"]


def test_hidden_model_looks_exactly_like_a_missing_one() -> None:
    keys = f'\n[[auth.keys]]\nid = "a"\nuser = "alice"\nsha256 = "{hash_key(ALICE)}"\nmodels = ["fast"]\n'
    auth = ((b"authorization", b"Bearer " + ALICE.encode()),)
    hidden, missing = driver(gateway(keys)), driver(gateway(keys))
    hidden.start("POST", "/api/show", {"model": "gpt-4o-mini"}, headers=auth)
    missing.start("POST", "/api/show", {"model": "nope"}, headers=auth)
    settle(missing)
    assert hidden.seen.status == missing.seen.status == 404
    assert hidden.seen.json()["error"].replace("gpt-4o-mini", "X") == missing.seen.json()[
        "error"
    ].replace("nope", "X")
    allowed = driver(gateway(keys))
    allowed.start("POST", "/api/chat", chat("fast", stream=False), headers=auth)
    assert allowed.seen.upstream


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{}", "model is required"),
        (b"", "missing request body"),
        (orjson.dumps(chat(stream="no")), "json: cannot unmarshal string"),
        (orjson.dumps(chat(think="ultra")), 'invalid think value: "ultra"'),
    ],
)
def test_bad_requests_are_400_and_never_reach_a_backend(raw: bytes, message: str) -> None:
    d = driver()
    d.start("POST", "/api/chat", raw)
    assert d.seen.status == 400 and not d.seen.upstream
    assert d.seen.json()["error"].startswith(message)


@pytest.mark.parametrize(("status", "expected"), [(500, 500), (400, 400), (422, 400)])
def test_upstream_errors_keep_their_status_and_message(status: int, expected: int) -> None:
    d = driver()
    d.start("POST", "/api/chat", chat())
    d.handle(UpstreamResponseStarted(status=status, headers=()))
    err = {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}}
    d.handle(UpstreamChunkReceived(data=orjson.dumps(err)))
    d.handle(UpstreamClosed())
    assert d.seen.status == expected and d.seen.json() == {"error": "boom"}
    assert d.seen.usage[0].outcome == "upstream_error"


def test_a_retry_gets_a_fresh_translation() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat())
    d.handle(UpstreamResponseStarted(status=503, headers=()))
    d.handle(UpstreamChunkReceived(data=b'{"error": {"message": "busy"}}'))
    d.handle(UpstreamClosed())
    first, second = d.seen.upstream
    assert second.url == first.url and second.body == first.body and second.delay > 0
    d.handle(SSE_HEAD)
    feed(d, sse(delta("ok", "stop"), {"choices": [], "usage": USAGE}))
    assert [line["message"]["content"] for line in lines(d.seen.body)] == ["ok", ""]
    assert d.seen.usage[0].attempts == 2


def test_a_fallback_to_an_ollama_backend_switches_to_passthrough() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat("resilient"))
    d.handle(UpstreamResponseStarted(status=500, headers=()))
    d.handle(UpstreamClosed())
    first, second = d.seen.upstream
    assert first.url == "http://oa.test/v1/chat/completions"
    assert second.url == "http://ol.test/api/chat"
    assert orjson.loads(second.body) == {**chat("resilient"), "model": "llama3.2:1b"}
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    final = native_line("", True, done_reason="stop", prompt_eval_count=5, eval_count=2)
    feed(d, ndjson(native_line("Hi"), final))
    out = lines(d.seen.body)
    assert {line["model"] for line in out} == {"resilient"}
    assert d.seen.usage[0].backend == "ol" and d.seen.usage[0].completion_tokens == 2


def test_upstream_404_is_404() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat(stream=False))
    d.handle(UpstreamResponseStarted(status=404, headers=()))
    body = {
        "error": {"message": "The model `gpt-4o-mini` does not exist", "code": "model_not_found"}
    }
    d.handle(UpstreamChunkReceived(data=orjson.dumps(body)))
    d.handle(UpstreamClosed())
    assert d.seen.status == 404 and "gpt-4o-mini" in d.seen.json()["error"]


def test_mid_stream_error_event_becomes_an_error_line() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat())
    d.handle(SSE_HEAD)
    feed(d, sse(delta("a"), {"error": {"message": "overloaded"}}))
    assert d.seen.ended
    assert lines(d.seen.body) == [
        {
            "model": "gpt-4o-mini",
            "created_at": "2025-11-24T16:00:00Z",
            "message": {"role": "assistant", "content": "a"},
            "done": False,
        },
        {"error": "overloaded"},
    ]
    [record] = d.seen.usage
    assert record.outcome == "failed_mid_stream" and not record.usage_reported


def test_premature_close_becomes_an_error_line() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat())
    d.handle(SSE_HEAD)
    feed(d, sse(delta("a")))
    d.handle(UpstreamClosed())
    assert lines(d.seen.body)[-1] == {"error": "backend closed the stream before it finished"}


def test_transport_failure_mid_stream_becomes_an_error_line() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat())
    d.handle(SSE_HEAD)
    feed(d, sse(delta("a")))
    d.handle(UpstreamFailed(error=UpstreamError("connection to backend 'oa' was lost")))
    assert lines(d.seen.body)[-1] == {"error": "connection to backend 'oa' was lost"}
    assert d.seen.ended and not d.seen.keep_alive


def test_malformed_sse_framing_fails_the_stream() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat())
    d.handle(SSE_HEAD)
    d.handle(UpstreamChunkReceived(data=b"data: \xff\xfe\n\n"))
    assert lines(d.seen.body)[-1]["error"].startswith("malformed stream from backend")


def test_non_json_whole_answer_is_502() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat(stream=False))
    d.handle(JSON_HEAD)
    d.handle(UpstreamChunkReceived(data=b"<html>"))
    d.handle(UpstreamClosed())
    assert d.seen.status == 502 and d.seen.json() == {
        "error": "backend sent a response that is not JSON"
    }


# -- /api/generate -----------------------------------------------------------------------------


def test_generate_non_stream_uses_chat_completions() -> None:
    d = driver()
    d.start(
        "POST",
        "/api/generate",
        {"model": "gpt-4o-mini", "prompt": "hi", "system": "s", "stream": False},
    )
    [up] = d.seen.upstream
    assert up.url.endswith("/v1/chat/completions")
    assert orjson.loads(up.body)["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hi"},
    ]
    d.handle(JSON_HEAD)
    d.handle(UpstreamChunkReceived(data=orjson.dumps(COMPLETION)))
    d.handle(UpstreamClosed())
    body = d.seen.json()
    assert body["response"] == "Hello" and "message" not in body and body["eval_count"] == 3


def test_generate_raw_streams_from_legacy_completions() -> None:
    d = driver()
    d.start("POST", "/api/generate", {"model": "gpt-4o-mini", "prompt": "def f(", "raw": True})
    [up] = d.seen.upstream
    assert up.url.endswith("/v1/completions")
    d.handle(SSE_HEAD)
    chunks = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in ("x", "y")]
    chunks.append({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
    feed(d, sse(*chunks) + b"data: [DONE]\n\n", step=5)
    out = lines(d.seen.body)
    assert [line["response"] for line in out] == ["x", "y", ""]
    assert out[-1]["done_reason"] == "length" and "prompt_eval_count" not in out[-1]
    record = d.seen.usage[0]
    assert record.outcome == "ok" and not record.usage_reported  # clean end, counts estimated


def test_generate_empty_prompt_is_a_local_load() -> None:
    d = driver()
    d.start("POST", "/api/generate", {"model": "gpt-4o-mini", "keep_alive": 0})
    assert not d.seen.upstream
    assert d.seen.json() == {
        "model": "gpt-4o-mini",
        "created_at": "2025-11-24T16:00:00Z",
        "response": "",
        "done": True,
        "done_reason": "unload",
    }


# -- /api/embed and /api/embeddings --------------------------------------------------------------

EMBEDDINGS = {
    "object": "list",
    "data": [{"index": 1, "embedding": [0.3, 0.4]}, {"index": 0, "embedding": [0.1, 0.2]}],
    "usage": {"prompt_tokens": 4, "total_tokens": 4},
}


def test_embed() -> None:
    d = driver()
    d.start("POST", "/api/embed", {"model": "text-embedding-3-small", "input": ["a", "b"]})
    [up] = d.seen.upstream
    assert up.url.endswith("/v1/embeddings")
    assert orjson.loads(up.body)["input"] == ["a", "b"]
    d.handle(JSON_HEAD)
    d.handle(UpstreamChunkReceived(data=orjson.dumps(EMBEDDINGS)))
    d.handle(UpstreamClosed())
    assert d.seen.json() == {
        "model": "text-embedding-3-small",
        "embeddings": [[0.1, 0.2], [0.3, 0.4]],
        "prompt_eval_count": 4,
    }
    assert d.seen.usage[0].route == "ollama.embed" and d.seen.usage[0].prompt_tokens == 4


def test_legacy_embeddings() -> None:
    d = driver()
    d.start("POST", "/api/embeddings", {"model": "text-embedding-3-small", "prompt": "a"})
    assert orjson.loads(d.seen.upstream[0].body)["input"] == "a"
    d.handle(JSON_HEAD)
    d.handle(UpstreamChunkReceived(data=orjson.dumps(EMBEDDINGS)))
    d.handle(UpstreamClosed())
    assert d.seen.json() == {"embedding": [0.1, 0.2]}


@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        ("/api/embed", {"input": ""}, {"model": "text-embedding-3-small", "embeddings": []}),
        ("/api/embed", {"input": []}, {"model": "text-embedding-3-small", "embeddings": []}),
        ("/api/embeddings", {"prompt": ""}, {"embedding": []}),
    ],
)
def test_nothing_to_embed_is_answered_locally(path: str, body: dict[str, Any], answer: Any) -> None:
    d = driver()
    d.start("POST", path, {"model": "text-embedding-3-small", **body})
    assert not d.seen.upstream and d.seen.json() == answer


# -- local endpoints ---------------------------------------------------------------------------------


def test_tags_lists_the_merged_catalogue_with_tags() -> None:
    d = driver()
    d.start("GET", "/api/tags")
    models = d.seen.json()["models"]
    names = [m["name"] for m in models]
    assert names == [
        "fast:latest",
        "resilient:latest",
        "gpt-4o-mini:latest",
        "text-embedding-3-small:latest",
        "hf.co/org/model:Q4",
        "llama3.2:1b",
    ]
    assert all(m["model"] == m["name"] and m["size"] == 0 and m["digest"] == "" for m in models)
    assert models[2]["modified_at"] == "2024-05-10T18:50:49Z"
    assert models[2]["details"]["families"] == [] and models[5]["details"]["family"] == "llama"


def test_show_answers_locally_for_openai_backends() -> None:
    d = driver()
    d.start("POST", "/api/show", {"model": "gpt-4o-mini:latest"})
    body = d.seen.json()
    assert body["model_info"] == {} and body["capabilities"] == ["completion", "tools"]
    assert body["modified_at"] == "2024-05-10T18:50:49Z" and "details" in body
    assert not d.seen.upstream and not d.seen.usage
    embed = driver()
    embed.start("POST", "/api/show", {"name": "text-embedding-3-small"})
    assert embed.seen.json()["capabilities"] == ["embedding"]


def test_show_unknown_model_is_404() -> None:
    d = driver()
    unknown(d, "/api/show", {"model": "nope"})
    assert d.seen.status == 404 and "nope" in d.seen.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/api/ps", {"models": []}), ("GET", "/api/version", {"version": "0.13.0"})],
)
def test_ps_and_version(method: str, path: str, body: Any) -> None:
    d = driver()
    d.start(method, path)
    assert d.seen.status == 200 and d.seen.json() == body


def test_root_and_head_requests() -> None:
    d = driver()
    d.start("GET", "/")
    assert d.seen.body == b"Ollama is running"
    assert d.seen.headers[b"content-type"].startswith(b"text/plain")
    for path in ("/", "/api/version", "/api/tags", "/api/ps"):
        head = driver()
        head.start("HEAD", path)
        assert head.seen.status == 200 and head.seen.body == b""


def test_root_and_version_are_public_but_tags_need_a_key() -> None:
    keys = f'\n[[auth.keys]]\nid = "a"\nuser = "alice"\nsha256 = "{hash_key(ALICE)}"\n'
    for path, status in (("/", 200), ("/api/version", 200), ("/api/tags", 401)):
        d = driver(gateway(keys))
        d.start("GET", path)
        assert d.seen.status == status, path


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/push"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/blobs/sha256:abc"),
    ],
)
def test_model_management_is_501(method: str, path: str) -> None:
    d = driver()
    d.start(method, path, {"model": "x"})
    assert d.seen.status == 501
    assert "cannot" in d.seen.json()["error"] and "gateway" in d.seen.json()["error"]


def test_head_blob_is_501_without_a_body() -> None:
    d = driver()
    d.start("HEAD", "/api/blobs/sha256:abc")
    assert d.seen.status == 501 and d.seen.body == b""


def test_pull_of_a_listed_model_succeeds() -> None:
    d = driver()
    d.start("POST", "/api/pull", {"model": "gpt-4o-mini:latest"})
    assert d.seen.headers[b"content-type"] == b"application/x-ndjson"
    assert d.seen.body == b'{"status":"success"}\n'
    single = driver()
    single.start("POST", "/api/pull", {"name": "llama3.2:1b", "stream": False})
    assert single.seen.json() == {"status": "success"}
    assert not d.seen.upstream and not single.seen.upstream


def test_pull_of_an_unknown_model() -> None:
    d = driver()
    unknown(d, "/api/pull", {"model": "nope"})
    assert d.seen.status == 404
    blind = Gateway(
        make_config(
            '[[backends]]\nname = "x"\nkind = "openai"\nurl = "http://x/v1"\ndiscover = false\n'
        )
    )
    d = driver(blind)
    d.start("POST", "/api/pull", {"model": "anything"})
    assert d.seen.status == 501 and "cannot pull" in d.seen.json()["error"]


def test_a_backend_kind_without_translator_is_400() -> None:
    registry = builtin_registry()
    registry.register(BackendKind(name="tgi", discovery_path="/info", parse_discovery=lambda b: []))
    gw = Gateway(
        make_config('[[backends]]\nname = "x"\nkind = "tgi"\nurl = "http://x"\ndiscover = false\n'),
        registry=registry,
    )
    d = driver(gw)
    d.start("POST", "/api/chat", chat())
    assert d.seen.status == 400 and "kind 'tgi'" in d.seen.json()["error"]


# -- passthrough to an Ollama backend ---------------------------------------------------------------


def native_line(content: str, done: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "llama3.2:1b",
        "created_at": "2026-11-26T06:00:00Z",
        "message": {"role": "assistant", "content": content},
        "done": done,
        **extra,
    }


def ndjson(*values: Any) -> bytes:
    return b"".join(orjson.dumps(v) + b"\n" for v in values)


def test_passthrough_rewrites_only_the_model_both_ways() -> None:
    d = driver()
    request = {
        "model": "fast",
        "messages": [{"role": "user", "content": "hi", "images": []}],
        "options": {"num_ctx": 4096},
    }
    d.start("POST", "/api/chat", request)
    [up] = d.seen.upstream
    assert up.url == "http://ol.test/api/chat"
    assert orjson.loads(up.body) == {**request, "model": "llama3.2:1b"}
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    final = native_line("", True, done_reason="stop", prompt_eval_count=5, eval_count=2)
    feed(d, ndjson(native_line("He"), native_line("y"), final), step=9)
    assert d.seen.ended
    out = lines(d.seen.body)
    assert {line["model"] for line in out} == {"fast"}
    assert [line["message"]["content"] for line in out] == ["He", "y", ""]
    [record] = d.seen.usage
    assert (record.prompt_tokens, record.completion_tokens) == (5, 2) and record.outcome == "ok"
    assert record.route == "ollama.chat" and record.resolved_model == "llama3.2:1b"


def test_passthrough_errors_and_premature_close() -> None:
    d = driver()
    d.start("POST", "/api/generate", {"model": "llama3.2:1b", "prompt": "x"})
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    feed(d, ndjson({"model": "llama3.2:1b", "response": "a", "done": False}, {"error": "oom"}))
    assert lines(d.seen.body)[-1] == {"error": "oom"} and d.seen.ended
    cut = driver()
    cut.start("POST", "/api/chat", chat("llama3.2:1b"))
    cut.handle(UpstreamResponseStarted(status=200, headers=()))
    feed(cut, ndjson(native_line("a")))
    cut.handle(UpstreamClosed())
    assert lines(cut.seen.body)[-1] == {"error": "backend closed the stream before it finished"}


def test_passthrough_load_answer_is_one_object_without_newline() -> None:
    d = driver()
    d.start("POST", "/api/chat", {"model": "fast", "messages": []})
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=orjson.dumps(native_line("", True, done_reason="load"))))
    assert d.seen.body == b""
    d.handle(UpstreamClosed())
    assert lines(d.seen.body) == [{**native_line("", True, done_reason="load"), "model": "fast"}]


def test_passthrough_non_stream_show_and_embed() -> None:
    d = driver()
    d.start("POST", "/api/show", {"name": "fast"})
    [up] = d.seen.upstream
    assert up.url == "http://ol.test/api/show" and orjson.loads(up.body) == {"model": "llama3.2:1b"}
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(
        UpstreamChunkReceived(data=b'{"model_info": {"a": 1}, "capabilities": ["completion"]}')
    )
    d.handle(UpstreamClosed())
    assert d.seen.json() == {"model_info": {"a": 1}, "capabilities": ["completion"]}
    e = driver()
    e.start("POST", "/api/embed", {"model": "fast", "input": "x"})
    e.handle(UpstreamResponseStarted(status=200, headers=()))
    e.handle(
        UpstreamChunkReceived(
            data=b'{"model": "llama3.2:1b", "embeddings": [[1]], "prompt_eval_count": 2}'
        )
    )
    e.handle(UpstreamClosed())
    assert e.seen.json()["model"] == "fast" and e.seen.usage[0].prompt_tokens == 2


def test_passthrough_backend_errors_are_forwarded() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat("fast", stream=False))
    d.handle(UpstreamResponseStarted(status=400, headers=()))
    d.handle(UpstreamChunkReceived(data=b'{"error": "\\"llama3.2:1b\\" does not support tools"}'))
    d.handle(UpstreamClosed())
    assert d.seen.status == 400 and d.seen.json() == {
        "error": '"llama3.2:1b" does not support tools'
    }


def test_passthrough_rejects_non_object_lines() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat("fast"))
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    feed(d, b"[1]\n")
    assert lines(d.seen.body) == [{"error": "backend sent a malformed stream line"}]
    bad = driver()
    bad.start("POST", "/api/chat", chat("fast"))
    bad.handle(UpstreamResponseStarted(status=200, headers=()))
    bad.handle(UpstreamChunkReceived(data=b"{oops\n"))
    assert lines(bad.seen.body)[0]["error"].startswith("malformed stream from backend")


# -- edges -------------------------------------------------------------------------------------------


def test_generate_raw_non_stream() -> None:
    d = driver()
    d.start(
        "POST",
        "/api/generate",
        {"model": "gpt-4o-mini", "prompt": "1 +", "suffix": " = 2", "stream": False},
    )
    assert d.seen.upstream[0].url.endswith("/v1/completions")
    d.handle(JSON_HEAD)
    answer = {"choices": [{"text": " 1", "finish_reason": "stop"}], "usage": USAGE}
    d.handle(UpstreamChunkReceived(data=orjson.dumps(answer)))
    d.handle(UpstreamClosed())
    assert d.seen.json()["response"] == " 1" and d.seen.json()["eval_count"] == 3


def test_an_unterminated_invalid_tail_fails_the_stream_at_eof() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat())
    d.handle(SSE_HEAD)
    feed(d, sse(delta("a")) + b"data: \xff")
    d.handle(UpstreamClosed())
    assert lines(d.seen.body)[-1]["error"].startswith("malformed stream from backend")


def test_failed_embed_records_an_estimate() -> None:
    d = driver()
    d.start("POST", "/api/embed", {"model": "text-embedding-3-small", "input": "x"})
    d.handle(UpstreamResponseStarted(status=500, headers=()))
    d.handle(UpstreamClosed())
    assert d.seen.status == 500
    [record] = d.seen.usage
    assert not record.usage_reported and record.prompt_tokens > 0


def test_passthrough_ignores_what_follows_the_done_line() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat("fast"))
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    final = native_line("", True, done_reason="stop")
    d.handle(UpstreamChunkReceived(data=ndjson(native_line("a"), final, native_line("late"))))
    assert [line["message"]["content"] for line in lines(d.seen.body)] == ["a", ""]
    assert d.seen.ended


def test_passthrough_invalid_tail_at_eof() -> None:
    d = driver()
    d.start("POST", "/api/chat", chat("fast"))
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=ndjson(native_line("a")) + b'{"trunc'))
    d.handle(UpstreamClosed())
    assert lines(d.seen.body)[-1]["error"].startswith("malformed stream from backend")


@pytest.mark.parametrize("raw", [b"<html>", b"[1]"])
def test_passthrough_non_stream_garbage_is_502(raw: bytes) -> None:
    d = driver()
    d.start("POST", "/api/embed", {"model": "fast", "input": "x"})
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=raw))
    d.handle(UpstreamClosed())
    assert d.seen.status == 502 and "backend sent" in d.seen.json()["error"]
