"""Rate-limit headers, Go durations and 429 bodies on both surfaces."""

from __future__ import annotations

import orjson
import pytest

from sansio_gateway.config import LimitsConfig
from sansio_gateway.http import Headers, Surface
from sansio_gateway.limits import (
    DAY_US,
    Costs,
    Decision,
    DenyReason,
    LimitName,
    LimitState,
    RateHeaders,
    Scope,
    UnitHeaders,
    admit,
    build_specs,
    denial_error,
    go_duration,
    peek,
    rate_limit_headers,
    render_denial,
    reset_duration,
)

NOW = 1_764_000_000_000_000  # 2025-11-24T16:00:00Z
HOUR_NS = 3600 * 10**9


# Outputs of Go's time.Duration.String(): the table in Go's time_test.go
# (durationTests), plus the forms OpenAI's headers use.
@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (1, "1ns"),
        (1100, "1.1µs"),
        (2200 * 1000, "2.2ms"),
        (3300 * 10**6, "3.3s"),
        (4 * 60 * 10**9 + 5 * 10**9, "4m5s"),
        (4 * 60 * 10**9 + 5001 * 10**6, "4m5.001s"),
        (5 * HOUR_NS + 6 * 60 * 10**9 + 7001 * 10**6, "5h6m7.001s"),
        (8 * 60 * 10**9 + 1, "8m0.000000001s"),
        (2**63 - 1, "2562047h47m16.854775807s"),
        (-(2**63), "-2562047h47m16.854775808s"),
        (10**9, "1s"),
        (360 * 10**9, "6m0s"),
        (12 * 10**6, "12ms"),
        (90_500 * 10**6, "1m30.5s"),
        (HOUR_NS, "1h0m0s"),
        (999, "999ns"),
        (1000, "1µs"),
        (999_999, "999.999µs"),
        (1_000_000, "1ms"),
        (999_999_999, "999.999999ms"),
        (-1_500_000_000, "-1.5s"),
        (-1, "-1ns"),
    ],
)
def test_go_duration_matches_go(ns: int, text: str) -> None:
    assert go_duration(ns) == text


def test_reset_rounds_up_to_the_millisecond() -> None:
    assert reset_duration(0) == "0s"
    assert reset_duration(1) == "1ms"
    assert reset_duration(1_000) == "1ms"
    assert reset_duration(1_001) == "2ms"
    assert reset_duration(1_200_000) == "1.2s"
    assert reset_duration(-5) == "0s"
    assert reset_duration(90_500_001) == "1m30.501s"


def _hdict(headers: Headers) -> dict[bytes, bytes]:
    assert len({k for k, _ in headers}) == len(headers)
    return dict(headers)


def test_rate_limit_headers_both_units() -> None:
    h = RateHeaders(
        requests=UnitHeaders(limit=60, remaining=9, reset_us=1_000_000),
        tokens=UnitHeaders(limit=1000, remaining=66, reset_us=360_000_000),
    )
    assert rate_limit_headers(h) == (
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"9"),
        (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-limit-tokens", b"1000"),
        (b"x-ratelimit-remaining-tokens", b"66"),
        (b"x-ratelimit-reset-tokens", b"6m0s"),
    )
    assert rate_limit_headers(RateHeaders()) == ()


def test_headers_come_from_the_most_constraining_limit() -> None:
    limits = LimitsConfig(
        requests_per_minute=600,
        tokens_per_minute=6000,
        tokens_per_day=150,
        models={"m": {"requests_per_minute": 12}},  # type: ignore[dict-item]
    )
    specs = build_specs(limits, "u", "m")
    decision, _ = admit(specs, LimitState(), NOW, Costs(tokens=100), "r1")
    assert decision.allowed
    assert decision.headers.requests == UnitHeaders(limit=12, remaining=1, reset_us=5_000_000)
    # TPM leaves 900 of its burst, the day 50 of 150: the day is tighter.
    day_end = (NOW // DAY_US + 1) * DAY_US
    assert decision.headers.tokens == UnitHeaders(limit=150, remaining=50, reset_us=day_end - NOW)


def test_peek_reports_without_charging() -> None:
    specs = build_specs(LimitsConfig(requests_per_minute=60), "u", "m")
    state = LimitState()
    assert peek(specs, state, NOW).requests == UnitHeaders(limit=60, remaining=10, reset_us=0)
    _, state = admit(specs, state, NOW, Costs(tokens=0), "r")
    assert peek(specs, state, NOW) == peek(specs, state, NOW)
    assert peek(specs, state, NOW).requests == UnitHeaders(
        limit=60, remaining=9, reset_us=1_000_000
    )
    assert peek(specs, state, NOW + 500_000).requests == UnitHeaders(
        limit=60, remaining=9, reset_us=500_000
    )


def _deny(limits: LimitsConfig, tokens: int, n: int = 1) -> Decision:
    specs = build_specs(limits, "alice", "gpt-4o")
    state = LimitState()
    for i in range(n):
        decision, state = admit(specs, state, NOW, Costs(tokens=tokens), f"r{i}")
    assert not decision.allowed
    return decision


def _render(decision: Decision, surface: Surface) -> tuple[int, dict[bytes, bytes], object]:
    status, headers, body = render_denial(
        decision, surface=surface, model="gpt-4o", organization="alice"
    )
    return status, _hdict(headers), orjson.loads(body)


def test_429_for_tokens_per_minute_openai_and_ollama() -> None:
    decision = _deny(LimitsConfig(tokens_per_minute=6000), tokens=600, n=3)
    assert decision.reason is DenyReason.RATE and decision.limit is LimitName.TOKENS_PER_MINUTE
    # burst 1000: the first 600 took the bucket to 6 s of debt; 600 more need 2 s.
    assert decision.scope is Scope.USER and decision.retry_after_us == 2_000_000
    status, headers, body = _render(decision, Surface.OPENAI)
    assert status == 429
    assert headers[b"retry-after"] == b"2" and headers[b"retry-after-ms"] == b"2000"
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-ratelimit-limit-tokens"] == b"6000"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"400"
    assert headers[b"x-ratelimit-reset-tokens"] == b"6s"
    assert b"x-should-retry" not in headers
    assert body == {
        "error": {
            "message": "Rate limit reached for gpt-4o in organization alice on tokens per min (TPM):"
            " Limit 6000, Used 600, Requested 600. Please try again in 2s.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    o_status, o_headers, o_body = _render(decision, Surface.OLLAMA)
    assert (o_status, o_headers) == (status, headers)
    assert o_body == {"error": body["error"]["message"]}
    g_status, g_headers, g_body = _render(decision, Surface.GATEWAY)
    assert (g_status, g_headers, g_body) == (status, headers, body)


def test_429_for_requests_per_minute_rounds_retry_after_up() -> None:
    decision = _deny(LimitsConfig(requests_per_minute=7), tokens=1, n=2)
    # increment ceil(60 s / 7) = 8_571_429 us, burst 10 s: 2 * 8_571_429 - 10 s
    assert decision.retry_after_us == 7_142_858
    _, headers, body = _render(decision, Surface.OPENAI)
    assert headers[b"retry-after"] == b"8" and headers[b"retry-after-ms"] == b"7143"
    err = body["error"]  # type: ignore[index]
    assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded"
    assert "on requests per min (RPM): Limit 7, Used 1, Requested 1." in err["message"]
    assert err["message"].endswith("Please try again in 7.143s.")


def test_429_for_the_daily_quota() -> None:
    decision = _deny(LimitsConfig(tokens_per_day=1000), tokens=600, n=2)
    assert decision.reason is DenyReason.DAILY_QUOTA and not decision.retryable
    day_end = (NOW // DAY_US + 1) * DAY_US
    # The first request's reservation lives 31 minutes: it frees quota before the day ends.
    assert decision.retry_after_us == 1860 * 1_000_000 < day_end - NOW
    status, headers, body = _render(decision, Surface.OPENAI)
    assert status == 429 and headers[b"x-should-retry"] == b"false"
    assert headers[b"retry-after"] == b"1860"
    err = body["error"]  # type: ignore[index]
    assert err["code"] == "insufficient_quota" and err["type"] == "tokens"
    assert "on tokens per day (TPD): Limit 1000, Used 600, Requested 600." in err["message"]


def test_429_for_concurrency_points_to_a_short_retry() -> None:
    decision = _deny(LimitsConfig(concurrent_requests=1), tokens=1, n=2)
    assert decision.reason is DenyReason.CONCURRENCY and decision.retryable
    assert decision.retry_after_us == 1860 * 1_000_000  # exact: when the lease expires
    status, headers, body = _render(decision, Surface.OLLAMA)
    assert status == 429 and headers[b"retry-after"] == b"1"
    assert headers[b"retry-after-ms"] == b"1000"
    assert body == {
        "error": "Too many concurrent requests for gpt-4o in organization alice on concurrent"
        " requests: Limit 1, Used 1, Requested 1. Please try again in 1s."
    }


def test_429_too_large_says_do_not_retry() -> None:
    decision = _deny(LimitsConfig(tokens_per_minute=6000), tokens=1001)
    assert decision.reason is DenyReason.TOO_LARGE and not decision.retryable
    assert decision.burst == 1000
    status, headers, body = _render(decision, Surface.OPENAI)
    assert status == 429 and headers[b"x-should-retry"] == b"false"
    assert b"retry-after" not in headers
    err = body["error"]  # type: ignore[index]
    assert err["message"] == (
        "Request too large for gpt-4o in organization alice on tokens per min (TPM):"
        " Limit 6000 (at most 1000 at once), Requested 1001. The input or output tokens"
        " must be reduced in order to run successfully."
    )
    day = _deny(LimitsConfig(tokens_per_day=10), tokens=11)
    assert day.reason is DenyReason.TOO_LARGE and day.limit is LimitName.TOKENS_PER_DAY
    text = denial_error(day, model="gpt-4o", organization="alice").message
    assert "on tokens per day (TPD): Limit 10, Requested 11." in text


def test_503_when_the_store_is_unavailable() -> None:
    decision = Decision(
        allowed=False, now_us=NOW, retry_after_us=1_000_000, reason=DenyReason.STORE_UNAVAILABLE
    )
    for surface in Surface:
        status, headers, body = _render(decision, surface)
        # Anthropic's SDK retries its 529 (overloaded) as the others retry a 503.
        assert status == (529 if surface is Surface.ANTHROPIC else 503)
        assert headers[b"retry-after"] == b"1"
        assert "unavailable" in orjson.dumps(body).decode()


def test_rendering_an_allow_is_a_bug() -> None:
    with pytest.raises(ValueError):
        denial_error(Decision(allowed=True, now_us=NOW), model="m", organization="o")
