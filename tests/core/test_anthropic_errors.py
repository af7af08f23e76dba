"""Whole error responses on the Anthropic surface."""

from __future__ import annotations

import orjson

from sansio_gateway.anthropic_over_chat.errors import (
    anthropic_error_response,
    render_anthropic_denial,
)
from sansio_gateway.errors import MethodNotAllowed, ServiceUnavailable
from sansio_gateway.limits.decision import Decision, DenyReason
from sansio_gateway.limits.specs import LimitName

NOW = 1_700_000_000_000_000


def test_a_rate_limit_denial_is_a_429_rate_limit_error_with_retry_after() -> None:
    decision = Decision(
        allowed=False, now_us=NOW, retry_after_us=2_500_000, reason=DenyReason.RATE,
        limit=LimitName.REQUESTS_PER_MINUTE, limit_value=60, used=60, requested=1,
    )  # fmt: skip
    status, headers, body = render_anthropic_denial(decision, model="claude-x", organization="al")
    assert status == 429
    assert dict(headers)[b"retry-after"] == b"3"
    assert dict(headers)[b"content-type"] == b"application/json"
    error = orjson.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
    assert "Rate limit reached for claude-x" in error["error"]["message"]


def test_an_unavailable_limit_store_is_529_overloaded() -> None:
    decision = Decision(allowed=False, now_us=NOW, reason=DenyReason.STORE_UNAVAILABLE)
    status, headers, body = render_anthropic_denial(decision, model="m", organization="o")
    assert status == 529 and dict(headers)[b"retry-after"] == b"1"
    assert orjson.loads(body)["error"]["type"] == "overloaded_error"


def test_error_responses_keep_the_shared_headers() -> None:
    status, headers, body = anthropic_error_response(ServiceUnavailable("busy", retry_after=0.2))
    assert (status, dict(headers)[b"retry-after"]) == (529, b"1")
    assert orjson.loads(body) == {
        "type": "error", "error": {"type": "overloaded_error", "message": "busy"}
    }  # fmt: skip
    status, headers, _ = anthropic_error_response(MethodNotAllowed("use POST", allow="POST"))
    assert status == 405 and dict(headers)[b"allow"] == b"POST"
