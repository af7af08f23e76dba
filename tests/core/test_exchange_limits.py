"""Rate limits through the Exchange: admission, headers, 429s, commits."""

from __future__ import annotations

from typing import Any

import orjson

from sansio_gateway.actions import (
    ClientDisconnected,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
)
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.errors import UpstreamError
from sansio_gateway.gateway import Gateway
from sansio_gateway.limits import MemoryLimitStore

from ..helpers import NOW, ExchangeDriver, make_config

CHAT = "/v1/chat/completions"
NON_STREAM = {
    "model": "llama3.2:1b",
    "message": {"role": "assistant", "content": "Hello"},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 11,
    "eval_count": 2,
}


def gateway(limits: str) -> Gateway:
    gw = Gateway(make_config(limits))
    gw.record_discovery("ollama", [DiscoveredModel(name="llama3.2:1b")], NOW)
    return gw


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "Hi"}], **extra}


def complete(d: ExchangeDriver, answer: dict[str, Any] = NON_STREAM) -> None:
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=orjson.dumps(answer)))
    d.handle(UpstreamClosed())


def test_requests_per_minute_denies_with_openai_headers_and_body() -> None:
    gw = gateway("[limits]\nrequests_per_minute = 6\n")  # burst: 1 request (10 s worth)
    store = MemoryLimitStore()
    first = ExchangeDriver(gw, limits=store)
    first.start("POST", CHAT, chat())
    complete(first)
    assert first.seen.status == 200
    assert first.seen.headers[b"x-ratelimit-limit-requests"] == b"6"
    assert b"x-ratelimit-reset-requests" in first.seen.headers
    second = ExchangeDriver(gw, request_id="req2", limits=store)
    second.start("POST", CHAT, chat(), now=NOW + 2)
    assert second.seen.status == 429 and not second.seen.upstream
    err = second.seen.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert "requests per min (RPM)" in err["message"]
    retry_ms = int(second.seen.headers[b"retry-after-ms"])
    assert 0 < retry_ms <= 10_000
    assert int(second.seen.headers[b"retry-after"]) == -(-retry_ms // 1000)
    assert not second.seen.usage and not second.seen.commits


def test_the_ollama_surface_gets_the_same_429_in_its_own_form() -> None:
    gw = gateway("[limits]\nrequests_per_minute = 6\n")
    store = MemoryLimitStore()
    body = {
        "model": "llama3.2:1b",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": False,
    }
    ExchangeDriver(gw, limits=store).start("POST", "/api/chat", body)
    d = ExchangeDriver(gw, request_id="r2", limits=store)
    d.start("POST", "/api/chat", body, now=NOW + 1)
    assert d.seen.status == 429
    assert isinstance(d.seen.json()["error"], str)
    assert b"retry-after" in d.seen.headers


def test_the_output_cap_is_written_upstream_and_charged_then_refunded() -> None:
    gw = gateway("[limits]\ntokens_per_minute = 600000\n")
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat())
    sent = orjson.loads(d.seen.upstream[0].body)
    assert sent["options"]["num_predict"] == 4096  # the default cap, so the estimate is a bound
    [decision] = d.seen.decisions
    assert decision.allowed
    complete(d)
    [commit] = d.seen.commits
    assert commit.estimate > 4096 and commit.actual == 13  # the backend's real counts


def test_an_upstream_error_refunds_the_tokens() -> None:
    gw = gateway("[limits]\ntokens_per_minute = 600000\n")
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat(max_tokens=50))
    d.handle(UpstreamResponseStarted(status=400, headers=()))
    d.handle(UpstreamChunkReceived(data=b'{"error":"bad"}'))
    d.handle(UpstreamClosed())
    [commit] = d.seen.commits
    assert commit.actual == 0


def test_a_client_disconnect_is_charged_what_was_used_so_far() -> None:
    gw = gateway("[limits]\ntokens_per_minute = 600000\n")
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat(stream=True))
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    line = {"model": "m", "message": {"role": "assistant", "content": "x"}, "done": False}
    d.handle(UpstreamChunkReceived(data=orjson.dumps(line) + b"\n"))
    d.handle(ClientDisconnected())
    [commit] = d.seen.commits
    assert 0 < commit.actual < commit.estimate


def test_stream_responses_carry_rate_limit_headers() -> None:
    gw = gateway("[limits]\nrequests_per_minute = 60\ntokens_per_minute = 100000\n")
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat(stream=True))
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    for key in (b"requests", b"tokens"):
        for part in (b"limit", b"remaining", b"reset"):
            assert b"x-ratelimit-" + part + b"-" + key in d.seen.headers


def test_a_request_larger_than_the_burst_is_refused_for_good() -> None:
    gw = gateway("[limits]\ntokens_per_minute = 600\n")  # burst 100 tokens
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat(max_tokens=1000))
    assert d.seen.status == 429
    assert d.seen.headers[b"x-should-retry"] == b"false"


def test_the_daily_quota_is_insufficient_quota_without_retry() -> None:
    gw = gateway("[limits]\ntokens_per_day = 5000\n")
    store = MemoryLimitStore()
    d = ExchangeDriver(gw, limits=store)
    d.start("POST", CHAT, chat(max_tokens=3000))
    complete(d, {**NON_STREAM, "prompt_eval_count": 40, "eval_count": 2960})
    d = ExchangeDriver(gw, request_id="r2", limits=store)
    d.start("POST", CHAT, chat(max_tokens=3000), now=NOW + 60)
    assert d.seen.status == 429
    assert d.seen.json()["error"]["code"] == "insufficient_quota"
    assert d.seen.headers[b"x-should-retry"] == b"false"


def test_concurrency_slots_are_taken_and_released() -> None:
    gw = gateway("[limits]\nconcurrent_requests = 1\n")
    store = MemoryLimitStore()
    first = ExchangeDriver(gw, limits=store)
    first.start("POST", CHAT, chat())
    second = ExchangeDriver(gw, request_id="r2", limits=store)
    second.start("POST", CHAT, chat(), now=NOW + 0.5)
    assert second.seen.status == 429
    first.handle(UpstreamFailed(error=UpstreamError("down")))  # ends first; its lease goes
    third = ExchangeDriver(gw, request_id="r3", limits=store)
    third.start("POST", CHAT, chat(), now=NOW + 3)
    assert third.seen.upstream


def test_per_user_and_per_model_overrides_apply() -> None:
    gw = gateway(
        "[limits]\nrequests_per_minute = 600\n"
        '[limits.models."llama3.2:1b"]\nrequests_per_minute = 6\n'
    )
    store = MemoryLimitStore()
    ExchangeDriver(gw, limits=store).start("POST", CHAT, chat())
    d = ExchangeDriver(gw, request_id="r2", limits=store)
    d.start("POST", CHAT, chat(), now=NOW + 1)
    assert d.seen.status == 429


def test_no_limits_configured_means_no_store_round_trip() -> None:
    d = ExchangeDriver(gateway(""))
    d.start("POST", CHAT, chat())
    assert not d.seen.decisions and d.seen.upstream
    assert b"x-ratelimit-limit-requests" not in dict(d.seen.upstream[0].headers)
