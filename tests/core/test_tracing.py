"""Trace context and span facts (sansio_gateway/tracing.py), without the SDK or a socket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.accounting.report import RequestSummary
from sansio_gateway.actions import AttemptReason, SendUpstream
from sansio_gateway.http import Headers
from sansio_gateway.limits import Decision, DenyReason, Fallback, LimitName, Scope
from sansio_gateway.tracing import (
    AttemptOutcome,
    TraceContext,
    attempt_span,
    format_traceparent,
    format_tracestate,
    forwarded_trace_context,
    limits_span,
    otlp_traces_url,
    parse_trace_context,
    refusal_span,
    request_outcome,
    request_span,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01".encode()


def _parse(*headers: tuple[bytes, bytes]) -> TraceContext | None:
    return parse_trace_context(headers)


# ---- traceparent -------------------------------------------------------------


def test_a_valid_traceparent_names_the_parent() -> None:
    context = _parse((b"traceparent", VALID))
    assert context == TraceContext(trace_id=int(TRACE, 16), span_id=int(SPAN, 16), flags=1)
    assert context.sampled


def test_the_sampled_flag_is_bit_zero() -> None:
    context = _parse((b"traceparent", f"00-{TRACE}-{SPAN}-02".encode()))
    assert context is not None and not context.sampled and context.flags == 2


def test_surrounding_spaces_and_tabs_are_tolerated() -> None:
    assert _parse((b"traceparent", b" \t" + VALID + b" ")) is not None


def test_a_later_version_may_append_fields() -> None:
    context = _parse((b"traceparent", f"01-{TRACE}-{SPAN}-01-what-comes-next".encode()))
    assert context is not None and context.trace_id == int(TRACE, 16)
    assert _parse((b"traceparent", f"01-{TRACE}-{SPAN}-01".encode())) is not None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        f"ff-{TRACE}-{SPAN}-01".encode(),  # version ff is forbidden
        f"00-{TRACE}-{SPAN}-01-extra".encode(),  # version 00 has exactly four fields
        f"01-{TRACE}-{SPAN}-01extra".encode(),  # a later version's fields follow a "-"
        f"00-{'0' * 32}-{SPAN}-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
        f"00-{TRACE.upper()}-{SPAN}-01".encode(),  # upper-case hex
        f"00-{TRACE[:-1]}-{SPAN}-01".encode(),  # short trace id
        f"00-{TRACE}-{SPAN}0-01".encode(),  # long parent id
        f"00-{TRACE}-{SPAN}-1".encode(),  # one-digit flags
        f"0-{TRACE}-{SPAN}-01".encode(),
        f"00_{TRACE}_{SPAN}_01".encode(),
        "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01".encode(),
        b"\xff\xfe",
    ],
)
def test_a_bad_traceparent_is_ignored(value: bytes) -> None:
    assert _parse((b"traceparent", value), (b"tracestate", b"a=b")) is None


def test_two_traceparents_are_ignored() -> None:
    assert _parse((b"traceparent", VALID), (b"traceparent", VALID)) is None


def test_no_traceparent_no_context_even_with_a_tracestate() -> None:
    assert _parse((b"tracestate", b"a=b")) is None


@given(st.binary(max_size=80))
def test_garbage_never_raises(value: bytes) -> None:
    context = _parse((b"traceparent", value), (b"tracestate", value))
    assert context is None or (context.trace_id and context.span_id)


@given(
    st.integers(min_value=1, max_value=2**128 - 1),
    st.integers(min_value=1, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=255),
)
def test_format_then_parse_round_trips(trace_id: int, span_id: int, flags: int) -> None:
    value = format_traceparent(trace_id, span_id, flags)
    assert len(value) == 55
    context = _parse((b"traceparent", value))
    assert context == TraceContext(trace_id=trace_id, span_id=span_id, flags=flags)


# ---- tracestate --------------------------------------------------------------


def _state(*values: bytes) -> tuple[tuple[str, str], ...]:
    headers: Headers = ((b"traceparent", VALID), *((b"tracestate", v) for v in values))
    context = parse_trace_context(headers)
    assert context is not None  # a bad tracestate never costs the traceparent
    return context.tracestate


def test_tracestate_members_in_order_across_headers() -> None:
    assert _state(b"congo=t61rcWkgMzE, rojo=00f067aa0ba902b7", b"fw529a3039@dt=a b") == (
        ("congo", "t61rcWkgMzE"),
        ("rojo", "00f067aa0ba902b7"),
        ("fw529a3039@dt", "a b"),
    )


def test_empty_tracestate_members_are_skipped() -> None:
    assert _state(b",a=1,, \t,b=2,") == (("a", "1"), ("b", "2"))


@pytest.mark.parametrize(
    "value",
    [
        b"novalue",
        b"Upper=1",  # keys are lower case
        b"a=1,a=2",  # a repeated key
        b"a b=1",  # no space in a key
        b"a=x=y",  # "=" is not allowed in a value
        b"a=",  # a value has at least one character
        b"9key=1",  # a simple key starts with a letter
        ",".join(f"k{i}=v" for i in range(33)).encode(),  # more than 32 members
        "a=é".encode(),
    ],
)
def test_a_bad_tracestate_is_dropped_whole(value: bytes) -> None:
    assert _state(value) == ()


def test_format_tracestate() -> None:
    assert format_tracestate([("a", "1"), ("b@c", "2")]) == b"a=1,b@c=2"
    assert format_tracestate([]) == b""


# ---- passing the client's context on (tracing off) ------------------------------


def test_a_valid_context_is_passed_on_unchanged() -> None:
    state = b"congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"
    headers: Headers = ((b"x-other", b"1"), (b"traceparent", VALID), (b"tracestate", state))
    assert forwarded_trace_context(headers) == ((b"traceparent", VALID), (b"tracestate", state))
    # A later version's extra fields, and empty list-members, go on as they came.
    later = f"01-{TRACE}-{SPAN}-01-what-comes-next".encode()
    headers = ((b"traceparent", b" " + later + b"\t"), (b"tracestate", b"a=1,,b=2"))
    assert forwarded_trace_context(headers) == (
        (b"traceparent", later),
        (b"tracestate", b"a=1,,b=2"),
    )


def test_several_tracestate_headers_go_on_as_one() -> None:
    headers: Headers = ((b"traceparent", VALID), (b"tracestate", b"a=1"), (b"tracestate", b"b=2"))
    assert forwarded_trace_context(headers)[1] == (b"tracestate", b"a=1,b=2")


@pytest.mark.parametrize(
    "headers",
    [
        (),
        ((b"tracestate", b"a=1"),),  # no traceparent
        ((b"traceparent", b"garbage"), (b"tracestate", b"a=1")),
        ((b"traceparent", f"00-{TRACE.upper()}-{SPAN}-01".encode()),),
        ((b"traceparent", VALID), (b"traceparent", VALID)),
    ],
)
def test_an_invalid_context_is_dropped(headers: Headers) -> None:
    assert forwarded_trace_context(headers) == ()


@pytest.mark.parametrize("state", [b"a=1,a=2", b"Upper=1", b",, ,"])
def test_a_bad_or_empty_tracestate_is_dropped_and_the_traceparent_goes_on(state: bytes) -> None:
    headers: Headers = ((b"traceparent", VALID), (b"tracestate", state))
    assert forwarded_trace_context(headers) == ((b"traceparent", VALID),)


# ---- the OTLP endpoint ----------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://otel.example/v1/traces", "https://otel.example/v1/traces"),
        ("http://c:4318/custom/path", "http://c:4318/custom/path"),
    ],
)
def test_otlp_traces_url(endpoint: str, url: str) -> None:
    assert otlp_traces_url(endpoint) == url


# ---- span facts -----------------------------------------------------------------


def _summary(**changes: object) -> RequestSummary:
    fields: dict[str, object] = {
        "request_id": "req-1",
        "surface": "openai",
        "route": "chat.completions",
        "key_id": "alice-laptop",
        "user": "alice",
        "model": "gpt-4o-mini",
        "backend": "local",
        "resolved_model": "llama3.2:1b",
        "status": 200,
        "prompt_tokens": 26,
        "completion_tokens": 9,
        "latency": 0.2,
        "ttft": 0.1,
        "retries": 1,
        "client_disconnected": False,
        "model_label": "gpt-4o-mini",
    }
    fields.update(changes)
    return RequestSummary(**fields)  # type: ignore[arg-type]


def test_request_span_facts() -> None:
    facts = request_span(_summary(), method="POST", route_path="/v1/chat/completions", outcome="ok")
    assert facts.name == "POST /v1/chat/completions"
    assert facts.error is None
    assert dict(facts.attributes) == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
        "gateway.request_id": "req-1",
        "gateway.surface": "openai",
        "gateway.route": "chat.completions",
        "gateway.outcome": "ok",
        "gateway.retries": 1,
        "enduser.id": "alice",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "llama3.2:1b",
        "gateway.backend": "local",
        "gen_ai.usage.input_tokens": 26,
        "gen_ai.usage.output_tokens": 9,
    }


def test_request_span_never_names_the_key_and_no_route_means_the_method_alone() -> None:
    facts = request_span(
        _summary(key_id="secret-key-id", route="unknown", model="", backend=""),
        method="GET",
        route_path=None,
        outcome=None,
    )
    assert facts.name == "GET"
    values = dict(facts.attributes)
    assert "secret-key-id" not in map(str, values.values())
    assert "http.route" not in values and "gateway.backend" not in values
    assert "gen_ai.request.model" not in values


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_request_is_an_error(status: int) -> None:
    facts = request_span(
        _summary(status=status), method="POST", route_path="/v1/chat/completions",
        outcome="upstream_error",
    )  # fmt: skip
    assert facts.error == f"HTTP {status}"
    assert dict(facts.attributes)["error.type"] == str(status)


@pytest.mark.parametrize("status", [200, 400, 401, 404, 429, 499])
def test_below_500_is_not_an_error(status: int) -> None:
    facts = request_span(_summary(status=status), method="POST", route_path="/x", outcome=None)
    assert facts.error is None


@pytest.mark.parametrize(
    ("status", "recorded", "outcome"),
    [
        (200, "failed_mid_stream", "failed_mid_stream"),
        (200, None, "ok"),
        (429, None, "rejected"),
        (401, None, "rejected"),
        (499, None, "client_disconnected"),
        (503, None, "error"),
        (0, None, "error"),
    ],
)
def test_request_outcome(status: int, recorded: str | None, outcome: str) -> None:
    assert request_outcome(status, recorded) == outcome


def test_limits_span_when_allowed() -> None:
    facts = limits_span(Decision(allowed=True, now_us=1))
    assert facts.name == "gateway.limits" and facts.error is None
    assert dict(facts.attributes) == {"gateway.limits.allowed": True}


def test_limits_span_names_the_limit_that_denied_and_the_wait() -> None:
    decision = Decision(
        allowed=False,
        now_us=1,
        retry_after_us=1_500_000,
        reason=DenyReason.RATE,
        limit=LimitName.TOKENS_PER_MINUTE,
        scope=Scope.MODEL,
    )
    facts = limits_span(decision)
    assert facts.error is None  # the policy working
    assert dict(facts.attributes) == {
        "gateway.limits.allowed": False,
        "gateway.limits.reason": "rate",
        "gateway.limits.denied_by": "tokens_per_minute",
        "gateway.limits.scope": "model",
        "gateway.limits.retry_after": 1.5,
    }


def test_limits_span_of_a_store_that_could_not_decide() -> None:
    decision = Decision(
        allowed=False,
        now_us=1,
        retryable=False,
        reason=DenyReason.STORE_UNAVAILABLE,
        fallback=Fallback.CLOSED,
    )
    facts = limits_span(decision)
    assert facts.error == "limit store unavailable"
    values = dict(facts.attributes)
    assert values["gateway.limits.fallback"] == "closed"
    assert "gateway.limits.retry_after" not in values


def _call(
    backend: str = "local", delay: float = 0.0, reason: AttemptReason = "first"
) -> SendUpstream:
    return SendUpstream(
        backend=backend,
        method="POST",
        url="http://user:pw@127.0.0.1:11434/api/chat?x=1",
        headers=(),
        body=b"",
        delay=delay,
        reason=reason,
    )


def test_attempt_span_answered_and_retried() -> None:
    facts = attempt_span(
        _call(delay=0.2, reason="retry"),
        AttemptOutcome(number=2, status=503, next_call=_call("other", reason="fallback")),
    )
    assert facts.name == "POST /api/chat"
    assert facts.error == "HTTP 503"
    assert dict(facts.attributes) == {
        "http.request.method": "POST",
        "url.path": "/api/chat",
        "server.address": "127.0.0.1",
        "server.port": 11434,
        "gateway.backend": "local",
        "gateway.attempt": 2,
        "gateway.attempt.reason": "retry",
        "gateway.attempt.delay": 0.2,
        "gateway.attempt.retried": True,
        "gateway.attempt.next_backend": "other",
        "http.response.status_code": 503,
        "error.type": "503",
    }
    assert not any("pw" in str(v) or "x=1" in str(v) for _, v in facts.attributes)


def test_attempt_span_ok() -> None:
    facts = attempt_span(_call(), AttemptOutcome(number=1, status=200))
    assert dict(facts.attributes)["gateway.attempt.reason"] == "first"
    values = dict(facts.attributes)
    assert facts.error is None and "error.type" not in values
    assert values["gateway.attempt.retried"] is False


def test_attempt_span_failed_before_or_after_the_head() -> None:
    before = attempt_span(_call(), AttemptOutcome(number=1, error="upstream_timeout"))
    assert before.error == "upstream_timeout"
    assert dict(before.attributes)["error.type"] == "upstream_timeout"
    after = attempt_span(_call(), AttemptOutcome(number=1, status=200, error="upstream_error"))
    assert after.error == "upstream_error"
    assert dict(after.attributes)["http.response.status_code"] == 200


def test_attempt_span_cut_short() -> None:
    facts = attempt_span(_call(), AttemptOutcome(number=1))
    assert facts.error == "cancelled"


def test_a_refusal_span_says_the_status_and_why_and_errs_only_on_5xx() -> None:
    facts = refusal_span(401, refusal="invalid_api_key")
    assert facts.name == "refused" and facts.error is None
    assert dict(facts.attributes) == {
        "http.response.status_code": 401,
        "gateway.outcome": "refused",
        "gateway.refusal": "invalid_api_key",
    }
    busy = refusal_span(503, refusal="too_many_connections")
    assert busy.error == "HTTP 503" and dict(busy.attributes)["error.type"] == "503"
