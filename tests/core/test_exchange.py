"""The Exchange on every path, with scripted upstream results and no sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sansio_gateway.actions import (
    CatalogueRefreshed,
    ClientDisconnected,
    RefreshCatalogue,
    SendUpstream,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
)
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.errors import UpstreamError, UpstreamTimeout
from sansio_gateway.exchange import ExchangeState, ExchangeStateError
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import IncomingRequest

from ..helpers import NOW, ExchangeDriver, make_config

CHAT = "/v1/chat/completions"
OK_HEAD = UpstreamResponseStarted(status=200, headers=((b"content-type", b"application/x-ndjson"),))


def gateway(discovered: bool = True) -> Gateway:
    gw = Gateway(make_config())
    if discovered:
        gw.record_discovery("ollama", [DiscoveredModel(name="llama3.2:1b")], NOW - 5)
    return gw


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "llama3.2:1b",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": stream,
        **extra,
    }


def ndjson(*lines: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def content_line(text: str) -> dict[str, Any]:
    return {
        "model": "llama3.2:1b",
        "created_at": "2026-11-26T06:00:00.123456789Z",
        "message": {"role": "assistant", "content": text},
        "done": False,
    }


DONE_LINE = {
    "model": "llama3.2:1b",
    "created_at": "2026-11-26T06:00:01Z",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 11,
    "eval_count": 2,
}

NON_STREAM = {
    "model": "llama3.2:1b",
    "created_at": "2026-11-26T06:00:01Z",
    "message": {"role": "assistant", "content": "Hello there"},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 11,
    "eval_count": 2,
}


def test_success_non_stream() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat())
    [up] = d.seen.upstream
    assert up.url == "http://127.0.0.1:11434/api/chat"
    sent = orjson.loads(up.body)
    assert sent["model"] == "llama3.2:1b" and sent["stream"] is False
    assert (b"x-request-id", b"req1") in up.headers
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=orjson.dumps(NON_STREAM)[:20]))
    d.handle(UpstreamChunkReceived(data=orjson.dumps(NON_STREAM)[20:]))
    d.handle(UpstreamClosed())
    assert d.seen.status == 200 and d.seen.ended
    body = d.seen.json()
    assert body["id"] == "chatcmpl-req1"
    assert body["object"] == "chat.completion"
    assert body["created"] == int(NOW)
    assert body["choices"][0]["message"]["content"] == "Hello there"
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}
    assert d.seen.headers[b"x-request-id"] == b"req1"
    [record] = d.seen.usage
    assert (record.prompt_tokens, record.completion_tokens) == (11, 2)
    assert record.outcome == "ok" and record.usage_reported and record.status == 200
    assert d.exchange.state is ExchangeState.DONE


def test_success_stream_with_usage() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=True, stream_options={"include_usage": True}))
    assert orjson.loads(d.seen.upstream[0].body)["stream"] is True
    d.handle(OK_HEAD)
    assert d.seen.status == 200
    assert d.seen.headers[b"content-type"].startswith(b"text/event-stream")
    raw = ndjson(content_line("Hel"), content_line("lo"), DONE_LINE)
    for i in range(0, len(raw), 7):  # any chunking of the upstream bytes
        d.handle(UpstreamChunkReceived(data=raw[i : i + 7]))
    assert d.seen.ended
    payloads = d.seen.sse_payloads()
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert {c["id"] for c in chunks} == {"chatcmpl-req1"}
    assert {c["created"] for c in chunks} == {int(NOW)}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 13
    [record] = d.seen.usage
    assert record.outcome == "ok" and record.completion_tokens == 2
    # the upstream socket closing afterwards is fine and changes nothing
    assert d.handle(UpstreamClosed()) == []


def test_bad_json_is_400_in_openai_envelope_and_never_reaches_a_backend() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, b"{not json")
    assert d.seen.status == 400
    err = d.seen.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert not d.seen.upstream and not d.seen.usage


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "llama3.2:1b"}, "messages"),
        ({"model": "llama3.2:1b", "messages": "hi"}, "messages"),
        (
            {
                "model": "llama3.2:1b",
                "messages": [{"role": "user", "content": "x"}],
                "temperature": "hot",
            },
            "temperature",
        ),
    ],
)
def test_invalid_fields_name_the_param(body: dict[str, Any], param: str) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, body)
    assert d.seen.status == 400
    assert d.seen.json()["error"]["param"] == param


def test_unknown_model_refreshes_discovery_once_then_is_404_model_not_found() -> None:
    gw = gateway()
    d = ExchangeDriver(gw)
    [refresh] = d.start("POST", CHAT, chat(model="nope:7b"))
    assert isinstance(refresh, RefreshCatalogue)  # the driver answered CatalogueRefreshed
    assert d.seen.status == 404
    # within discovery_ttl a second miss answers at once
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat(model="nope:7b"), now=NOW + 1)
    assert d.seen.status == 404
    err = d.seen.json()["error"]
    assert err["code"] == "model_not_found" and "nope:7b" in err["message"]
    assert not d.seen.upstream


def test_a_model_pulled_since_discovery_is_found_by_the_refresh() -> None:
    gw = gateway()
    exchange = gw.exchange("r")
    request = IncomingRequest(method="POST", path=CHAT, body=orjson.dumps(chat(model="new:1b")))
    [refresh] = exchange.start(request, NOW)
    assert isinstance(refresh, RefreshCatalogue)
    gw.record_discovery("ollama", [DiscoveredModel(name="new:1b")], NOW)  # the adapter's refresh
    [send] = exchange.handle(CatalogueRefreshed(), NOW)
    assert isinstance(send, SendUpstream) and orjson.loads(send.body)["model"] == "new:1b"


def test_model_without_tag_resolves_to_latest() -> None:
    gw = Gateway(make_config())
    gw.record_discovery("ollama", [DiscoveredModel(name="mistral:latest")], NOW)
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat(model="mistral"))
    assert orjson.loads(d.seen.upstream[0].body)["model"] == "mistral:latest"


def test_undiscovered_backend_gets_unknown_models_and_its_404_maps_to_model_not_found() -> None:
    d = ExchangeDriver(gateway(discovered=False))
    d.start("POST", CHAT, chat(model="ghost"))
    assert d.seen.upstream
    d.handle(UpstreamResponseStarted(status=404, headers=()))
    d.handle(
        UpstreamChunkReceived(data=b'{"error":"model \\"ghost\\" not found, try pulling it first"}')
    )
    d.handle(UpstreamClosed())
    assert d.seen.status == 404
    err = d.seen.json()["error"]
    assert err["code"] == "model_not_found"
    assert err["type"] == "invalid_request_error"
    [record] = d.seen.usage
    assert record.outcome == "upstream_error" and record.status == 404


def test_upstream_500_surfaces_as_500_api_error() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=True))
    d.handle(UpstreamResponseStarted(status=500, headers=()))
    d.handle(UpstreamChunkReceived(data=b'{"error":"llama runner process has terminated"}'))
    d.handle(UpstreamClosed())
    assert d.seen.status == 500
    assert d.seen.headers[b"content-type"] == b"application/json"
    err = d.seen.json()["error"]
    assert err["type"] == "api_error" and "terminated" in err["message"]
    assert len(d.seen.usage) == 1


def test_upstream_non_json_error_body_is_kept_as_the_message() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat())
    d.handle(UpstreamResponseStarted(status=500, headers=()))
    d.handle(UpstreamChunkReceived(data=b"server exploded"))
    d.handle(UpstreamClosed())
    assert d.seen.status == 500
    assert d.seen.json()["error"]["message"] == "server exploded"


def test_upstream_unreachable_is_502() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=True))
    d.handle(UpstreamFailed(error=UpstreamError("could not connect to backend 'ollama'")))
    assert d.seen.status == 502 and d.seen.ended
    assert d.seen.json()["error"]["type"] == "api_error"
    [record] = d.seen.usage
    assert record.outcome == "upstream_error"


def test_upstream_timeout_before_head_is_504() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat())
    d.handle(UpstreamFailed(error=UpstreamTimeout("backend 'ollama' timed out")))
    assert d.seen.status == 504


def test_upstream_dies_mid_stream_sends_an_error_event_and_ends() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=ndjson(content_line("partial"))))
    d.handle(UpstreamFailed(error=UpstreamError("connection to backend 'ollama' was lost")))
    assert d.seen.ended and not d.seen.keep_alive
    payloads = d.seen.sse_payloads()
    assert "[DONE]" not in payloads
    assert payloads[-1]["error"]["message"].startswith("connection to backend")
    [record] = d.seen.usage
    assert record.outcome == "failed_mid_stream" and not record.usage_reported
    assert record.completion_tokens >= 1


def test_upstream_closes_without_done_line_is_an_error_event() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=ndjson(content_line("partial"))))
    d.handle(UpstreamClosed())
    payloads = d.seen.sse_payloads()
    assert "error" in payloads[-1] and d.seen.ended
    assert len(d.seen.usage) == 1


def test_in_band_ollama_error_line_becomes_sse_error_event() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=ndjson(content_line("a"), {"error": "out of memory"})))
    assert d.seen.ended
    assert d.seen.sse_payloads()[-1]["error"]["message"] == "out of memory"


def test_garbage_from_upstream_mid_stream_is_an_error_event() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamChunkReceived(data=b"<html>oops</html>\n"))
    assert d.seen.ended
    assert "error" in d.seen.sse_payloads()[-1]


def test_non_json_200_answer_is_502() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat())
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=b"<html>"))
    d.handle(UpstreamClosed())
    assert d.seen.status == 502


@pytest.mark.parametrize("when", ["before_head", "buffering", "streaming"])
def test_client_disconnect_cancels_upstream_and_records_usage(when: str) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=when == "streaming"))
    if when != "before_head":
        d.handle(UpstreamResponseStarted(status=200, headers=()))
    if when == "streaming":
        d.handle(UpstreamChunkReceived(data=ndjson(content_line("x"), content_line("y"))))
    sent_before = d.seen.body
    d.handle(ClientDisconnected())
    assert d.seen.cancelled
    assert d.seen.body == sent_before  # nothing more is written to a gone client
    [record] = d.seen.usage
    assert record.outcome == "client_disconnected" and record.status == 499
    # late upstream results are ignored
    assert d.handle(UpstreamClosed()) == []


def test_idle_disconnect_before_start_is_harmless() -> None:
    d = ExchangeDriver(gateway())
    assert d.handle(ClientDisconnected()) == []


def test_results_out_of_order_are_adapter_bugs() -> None:
    d = ExchangeDriver(gateway())
    with pytest.raises(ExchangeStateError):
        d.handle(UpstreamClosed())
    d.start("POST", CHAT, chat())
    with pytest.raises(ExchangeStateError):
        d.handle(UpstreamChunkReceived(data=b"x"))
    with pytest.raises(ExchangeStateError):
        d.start("POST", CHAT, chat())


def test_unknown_paths_and_methods() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", "/v1/nope", chat())
    assert d.seen.status == 404 and "error" in d.seen.json()
    d = ExchangeDriver(gateway())
    d.start("GET", CHAT)
    assert d.seen.status == 405 and d.seen.headers[b"allow"] == b"POST"
    d = ExchangeDriver(gateway())
    d.start("GET", "/api/nothing")
    assert d.seen.status == 404 and isinstance(d.seen.json()["error"], str)  # Ollama's form


def test_client_request_id_is_echoed_when_safe() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(), headers=((b"x-request-id", b"abc-123"),))
    assert (b"x-request-id", b"abc-123") in d.seen.upstream[0].headers
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(), headers=((b"x-request-id", b"bad id\r\nx: y"),))
    assert (b"x-request-id", b"req1") in d.seen.upstream[0].headers


def test_models_list_and_retrieve() -> None:
    gw = Gateway(make_config())
    gw.record_discovery(
        "ollama",
        [
            DiscoveredModel(name="llama3.2:1b", created=5),
            DiscoveredModel(name="hf.co/u/m:Q4", owned_by="u"),
        ],
        NOW,
    )
    d = ExchangeDriver(gw)
    d.start("GET", "/v1/models")
    data = d.seen.json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["llama3.2:1b", "hf.co/u/m:Q4"]
    d = ExchangeDriver(gw)
    d.start("GET", "/v1/models/hf.co/u/m:Q4")
    assert d.seen.json() == {"id": "hf.co/u/m:Q4", "object": "model", "created": 0, "owned_by": "u"}
    d = ExchangeDriver(gw)
    d.start("GET", "/v1/models/hf.co%2Fu%2Fm:Q4")
    assert d.seen.status == 200
    d = ExchangeDriver(gw)
    d.start("GET", "/v1/models/missing")
    assert d.seen.status == 404 and d.seen.json()["error"]["code"] == "model_not_found"


def test_empty_catalogue_lists_an_empty_array() -> None:
    d = ExchangeDriver(gateway(discovered=False))
    d.start("GET", "/v1/models")
    assert d.seen.json() == {"object": "list", "data": []}


def test_health_ready_status() -> None:
    gw = gateway(discovered=False)
    d = ExchangeDriver(gw)
    d.start("GET", "/ready")
    assert d.seen.status == 503
    gw.record_discovery("ollama", [], NOW)
    d = ExchangeDriver(gw)
    d.start("GET", "/ready")
    assert d.seen.status == 200
    d = ExchangeDriver(gw)
    d.start("GET", "/health")
    assert d.seen.json() == {"status": "ok"}
    d = ExchangeDriver(gw)
    d.start("GET", "/status")
    assert d.seen.json()["backends"][0]["up"] is True


def test_aliases_rewrite_the_model_both_ways() -> None:
    gw = Gateway(
        make_config(
            '[[backends]]\nname="local"\nurl="http://127.0.0.1:9"\n'
            '[[models]]\nname="gpt-4o-mini"\nbackend="local"\ntarget="llama3.2:1b"\n'
        )
    )
    gw.record_discovery("local", [], NOW)
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat(model="gpt-4o-mini"))
    assert orjson.loads(d.seen.upstream[0].body)["model"] == "llama3.2:1b"
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=orjson.dumps(NON_STREAM)))
    d.handle(UpstreamClosed())
    assert d.seen.json()["model"] == "gpt-4o-mini"
    assert d.seen.usage[0].resolved_model == "llama3.2:1b"


# ---- retries and fallbacks ------------------------------------------------

FALLBACK_CONFIG = """
[[backends]]
name = "a"
url = "http://a.invalid:1"
retry_backoff = 0.5
[[backends]]
name = "b"
url = "http://b.invalid:2"
[[models]]
name = "m"
backend = "a"
target = "llama3.2:1b"
fallbacks = ["b:llama3.2:3b"]
"""


def fallback_gateway() -> Gateway:
    gw = Gateway(make_config(FALLBACK_CONFIG))
    gw.record_discovery("a", [], NOW)
    gw.record_discovery("b", [], NOW)
    return gw


def fail_with(d: ExchangeDriver, status: int, body: bytes = b'{"error":"busy"}') -> None:
    d.handle(UpstreamResponseStarted(status=status, headers=((b"retry-after", b"3"),)))
    d.handle(UpstreamChunkReceived(data=body))
    d.handle(UpstreamClosed())


def test_503_twice_then_success_is_retried_with_backoff() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat())
    fail_with(d, 503)
    fail_with(d, 503)
    assert len(d.seen.upstream) == 3 and d.seen.status is None
    # Retry-After 3 s beats the jittered 0.125 s / 0.25 s backoff.
    assert [u.delay for u in d.seen.upstream] == [0.0, 3.0, 3.0]
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=orjson.dumps(NON_STREAM)))
    d.handle(UpstreamClosed())
    assert d.seen.status == 200
    [record] = d.seen.usage
    assert record.attempts == 3 and record.outcome == "ok"


def test_backoff_without_retry_after_is_jittered_exponential() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat())
    d.handle(UpstreamFailed(error=UpstreamError("refused", code="upstream_unreachable")))
    d.handle(UpstreamFailed(error=UpstreamError("refused", code="upstream_unreachable")))
    # default backoff 0.25 s, doubling, times the injected random 0.5
    assert [u.delay for u in d.seen.upstream] == [0.0, 0.125, 0.25]
    d.handle(UpstreamFailed(error=UpstreamError("refused", code="upstream_unreachable")))
    assert d.seen.status == 502 and len(d.seen.upstream) == 3


def test_fallback_serves_when_the_primary_is_down() -> None:
    d = ExchangeDriver(fallback_gateway())
    d.start("POST", CHAT, chat(model="m"))
    for _ in range(3):
        d.handle(UpstreamFailed(error=UpstreamError("refused", code="upstream_unreachable")))
    urls = [u.url for u in d.seen.upstream]
    assert urls[:3] == ["http://a.invalid:1/api/chat"] * 3
    assert urls[3] == "http://b.invalid:2/api/chat"
    assert orjson.loads(d.seen.upstream[3].body)["model"] == "llama3.2:3b"
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=orjson.dumps(NON_STREAM)))
    d.handle(UpstreamClosed())
    assert d.seen.json()["model"] == "m"
    record = d.seen.usage[0]
    assert (record.backend, record.resolved_model, record.attempts) == ("b", "llama3.2:3b", 4)


def test_500_and_timeouts_go_straight_to_the_fallback() -> None:
    d = ExchangeDriver(fallback_gateway())
    d.start("POST", CHAT, chat(model="m"))
    fail_with(d, 500)
    assert d.seen.upstream[-1].url.startswith("http://b.invalid")
    d.handle(UpstreamFailed(error=UpstreamTimeout("slow")))
    assert d.seen.status == 504


def test_client_errors_are_never_retried() -> None:
    d = ExchangeDriver(fallback_gateway())
    d.start("POST", CHAT, chat(model="m"))
    fail_with(d, 400, b'{"error":"bad"}')
    assert len(d.seen.upstream) == 1 and d.seen.status == 400


def test_the_attempt_budget_caps_everything() -> None:
    gw = Gateway(
        make_config(
            FALLBACK_CONFIG.replace("retry_backoff = 0.5", "retry_backoff = 0.5\nmax_retries = 9")
        )
    )
    gw.record_discovery("a", [], NOW)
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat(model="m"))
    for _ in range(10):
        if d.seen.status is not None:
            break
        fail_with(d, 503)
    assert len(d.seen.upstream) == 4  # server.max_attempts
    assert d.seen.status == 503


def test_no_retry_once_the_stream_started() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=True))
    d.handle(OK_HEAD)
    d.handle(UpstreamFailed(error=UpstreamError("lost", code="upstream_unreachable")))
    assert len(d.seen.upstream) == 1 and d.seen.ended


def test_head_gets_the_get_head_without_a_body() -> None:
    d = ExchangeDriver(gateway())
    d.start("HEAD", "/health")
    assert d.seen.status == 200 and d.seen.body == b"" and d.seen.ended
    assert d.seen.headers[b"content-length"] == b"15"  # what GET would send


def test_unknown_model_on_the_ollama_surface_is_worded_as_ollama_does() -> None:
    d = ExchangeDriver(gateway())
    d.start(
        "POST", "/api/chat", {"model": "ghost:1b", "messages": [{"role": "user", "content": "x"}]}
    )
    assert d.seen.status == 404
    assert d.seen.json() == {"error": 'model "ghost:1b" not found, try pulling it first'}


def test_an_unreadable_ledger_is_a_503() -> None:
    from sansio_gateway.actions import QueryUsage, UsageQueried

    exchange = gateway().exchange("r")
    [query] = exchange.start(IncomingRequest(method="GET", path="/admin/usage"), NOW)
    assert isinstance(query, QueryUsage)
    actions = exchange.handle(UsageQueried(rows=[], error="the usage ledger is unavailable"), NOW)
    assert actions[0].status == 503  # type: ignore[union-attr]


def test_a_reused_client_request_id_is_for_tracing_only() -> None:
    first = ExchangeDriver(gateway(), request_id="internal-1")
    first.start("POST", CHAT, chat(), headers=((b"x-request-id", b"trace-1"),))
    first.handle(UpstreamFailed(error=UpstreamError("down")))
    assert first.seen.usage[0].request_id == "internal-1"
    assert (b"x-request-id", b"trace-1") in first.seen.upstream[0].headers
    assert first.seen.headers[b"x-request-id"] == b"trace-1"


def test_each_upstream_call_says_why_it_is_made() -> None:
    d = ExchangeDriver(fallback_gateway())
    d.start("POST", CHAT, chat(model="m"))
    fail_with(d, 503)
    fail_with(d, 503)
    d.handle(UpstreamFailed(error=UpstreamError("refused", code="upstream_unreachable")))
    calls = [(u.url.split("/")[2], u.reason) for u in d.seen.upstream]
    assert calls == [
        ("a.invalid:1", "first"),
        ("a.invalid:1", "retry"),
        ("a.invalid:1", "retry"),
        ("b.invalid:2", "fallback"),
    ]


CLIENT_TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_every_attempt_passes_the_clients_trace_context_on() -> None:
    d = ExchangeDriver(fallback_gateway())
    client = ((b"traceparent", CLIENT_TRACEPARENT), (b"tracestate", b"congo=t61rcWkgMzE"))
    d.start("POST", CHAT, chat(model="m"), headers=client)
    fail_with(d, 500)  # straight to the fallback
    assert len(d.seen.upstream) == 2
    for call in d.seen.upstream:
        assert [h for h in call.headers if h[0] in (b"traceparent", b"tracestate")] == list(client)


def test_an_invalid_trace_context_is_not_passed_on() -> None:
    d = ExchangeDriver(gateway())
    bad = ((b"traceparent", CLIENT_TRACEPARENT.upper()), (b"tracestate", b"congo=t61rcWkgMzE"))
    d.start("POST", CHAT, chat(), headers=bad)
    [call] = d.seen.upstream
    assert not [h for h in call.headers if h[0] in (b"traceparent", b"tracestate")]
