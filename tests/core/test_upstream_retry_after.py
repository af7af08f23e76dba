"""A backend's Retry-After passed on when the gateway gives up after its 429.

The retry policy (backends/retry.py) may wait on it once or twice; when no
attempt is left, the client gets the backend's own wait in its surface's
error (errors.py ``error_from_upstream``, rendering.py ``error_response``),
bounded to whole seconds between 1 and an hour.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.actions import UpstreamChunkReceived, UpstreamClosed, UpstreamResponseStarted
from sansio_gateway.backends.retry import parse_retry_after
from sansio_gateway.errors import UpstreamError, error_from_upstream
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import Surface
from sansio_gateway.rendering import MAX_RETRY_AFTER, error_response, retry_after_seconds

from ..helpers import NOW, ExchangeDriver, make_config

TOML = """
[[backends]]
name = "ol"
kind = "ollama"
url = "http://ol.test"
max_retries = 0
[[backends]]
name = "claude"
kind = "anthropic"
url = "http://claude.test/v1"
max_retries = 0
[[backends]]
name = "spare"
kind = "ollama"
url = "http://spare.test"
max_retries = 0
[[models]]
name = "llama"
backend = "ol"
target = "llama3.2:1b"
[[models]]
name = "sonnet"
backend = "claude"
target = "claude-sonnet-4-5"
[[models]]
name = "backed"
backend = "ol"
target = "llama3.2:1b"
fallbacks = ["spare:llama3.2:1b"]
"""
HI = [{"role": "user", "content": "Hi"}]
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "llama", "messages": HI}),
    "messages": ("/v1/messages", {"model": "sonnet", "max_tokens": 9, "messages": HI}),
    "ollama": ("/api/chat", {"model": "llama", "messages": HI, "stream": False}),
}
LIMITED = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'


def gateway(toml: str = TOML) -> Gateway:
    return Gateway(make_config(toml))


def answer(d: ExchangeDriver, status: int, headers: tuple[tuple[bytes, bytes], ...]) -> None:
    d.handle(UpstreamResponseStarted(status=status, headers=headers))
    d.handle(UpstreamChunkReceived(data=LIMITED))
    d.handle(UpstreamClosed())


@pytest.mark.parametrize("surface", sorted(REQUESTS))
def test_a_backends_429_passes_its_retry_after_on(surface: str) -> None:
    path, body = REQUESTS[surface]
    d = ExchangeDriver(gateway())
    d.start("POST", path, body)
    answer(d, 429, ((b"retry-after", b"17"),))
    assert d.seen.status == 429 and d.seen.headers[b"retry-after"] == b"17"
    error = d.seen.json()["error"]
    if surface == "messages":
        assert error["type"] == "rate_limit_error" and d.seen.json()["type"] == "error"
    elif surface == "chat":
        assert error["type"] == "rate_limit_error" and error["code"] == "upstream_rate_limited"
    else:
        assert error == "slow down"


@pytest.mark.parametrize(
    ("sent", "passed"),
    [
        (b"2.2", b"3"),  # whole seconds, rounded up
        (b"0", b"1"),  # never "retry at once"
        (b"86400", str(MAX_RETRY_AFTER).encode()),  # at most an hour
        (b"inf", None),
        (b"1e999", None),
        (b"nan", None),
        (b"-5", None),
        (b"Wed, 21 Oct 2026 07:28:00 GMT", None),  # the date form needs a clock: not read
        (None, None),
    ],
)
def test_the_retry_after_passed_on_is_bounded(sent: bytes | None, passed: bytes | None) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", *REQUESTS["messages"])
    answer(d, 429, () if sent is None else ((b"retry-after", sent),))
    assert d.seen.status == 429 and d.seen.headers.get(b"retry-after") == passed


def test_an_overloaded_backend_passes_it_on_and_a_failing_one_does_not() -> None:
    overloaded = ExchangeDriver(gateway())
    overloaded.start("POST", *REQUESTS["messages"])
    answer(overloaded, 529, ((b"retry-after", b"4"),))
    assert overloaded.seen.status == 529 and overloaded.seen.headers[b"retry-after"] == b"4"
    broken = ExchangeDriver(gateway())
    broken.start("POST", *REQUESTS["chat"])
    answer(broken, 500, ((b"retry-after", b"4"),))
    assert broken.seen.status == 500 and b"retry-after" not in broken.seen.headers


def test_only_the_last_answers_retry_after_counts() -> None:
    # A 429 with a wait, then a fallback that fails otherwise: the client is
    # told what the last backend said, not what the first one did.
    d = ExchangeDriver(gateway())
    d.start("POST", "/v1/chat/completions", {"model": "backed", "messages": HI})
    answer(d, 429, ((b"retry-after", b"30"),))
    assert len(d.seen.upstream) == 2 and d.seen.upstream[1].url.startswith("http://spare.test")
    answer(d, 500, ())
    assert d.seen.status == 500 and b"retry-after" not in d.seen.headers


def test_after_the_retries_the_last_429s_wait_is_passed_on() -> None:
    d = ExchangeDriver(gateway(TOML.replace("max_retries = 0", "max_retries = 1", 1)))
    d.start("POST", *REQUESTS["chat"])
    answer(d, 429, ((b"retry-after", b"3"),))
    [_, again] = d.seen.upstream
    assert again.delay == 3.0  # the policy waited as the backend asked (backends/retry.py)
    answer(d, 429, ((b"retry-after", b"5"),))
    assert d.seen.status == 429 and d.seen.headers[b"retry-after"] == b"5"


def test_error_from_upstream_keeps_a_wait_only_where_it_means_one() -> None:
    for status in (429, 503, 529):
        assert error_from_upstream(status, b"{}", retry_after=2.0).retry_after == 2.0
    for status in (400, 404, 500, 502):
        assert error_from_upstream(status, b"{}", retry_after=2.0).retry_after is None


def test_parse_retry_after_reads_finite_seconds_only() -> None:
    assert parse_retry_after(b" 12 ") == 12.0
    for value in (b"inf", b"-inf", b"1e400", b"nan", b"-1", b"soon", b"\xff", None):
        assert parse_retry_after(value) is None


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_retry_after_seconds_is_always_a_whole_second_in_bounds(seconds: float) -> None:
    out = retry_after_seconds(seconds)
    assert type(out) is int and 1 <= out <= MAX_RETRY_AFTER
    if 0 <= seconds <= MAX_RETRY_AFTER - 1:
        assert out == max(1, math.ceil(seconds))


def test_every_surface_renders_the_header() -> None:
    err = UpstreamError("busy", status_code=503)
    err.retry_after = 9.5
    for surface in Surface:
        _, headers, body = error_response(surface, err)
        assert dict(headers)[b"retry-after"] == b"10" and orjson.loads(body)


def test_the_gateways_own_breaker_wait_is_still_sent() -> None:
    gw = gateway()
    for _ in range(gw.config.server.breaker_failures):
        gw.health.record("ol", False, NOW)
    d = ExchangeDriver(gw)
    d.start("POST", *REQUESTS["chat"], now=NOW + 1)
    cooldown = gw.config.server.breaker_cooldown
    assert d.seen.status == 503 and d.seen.headers[b"retry-after"] == b"%d" % math.ceil(
        cooldown - 1
    )
