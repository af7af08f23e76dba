"""What a trace says about one request: W3C trace context, and each span's facts.

Theory of operation: tracing is the adapters' business (the OpenTelemetry
SDK lives in ``adapters/otel.py``), but what goes into a trace is decided
here, from facts the core already produces, so it is tested without the SDK
and without a socket.

* **Trace context** (W3C Trace Context, Level 1): :func:`parse_trace_context`
  reads a client's ``traceparent`` and ``tracestate`` headers into a
  :class:`TraceContext`, or None.  A malformed header is ignored, never an
  error: the request then starts a trace of its own.  A bad ``tracestate``
  alone is dropped and the ``traceparent`` still holds.  With tracing off
  the gateway takes no part in the trace and passes the client's context on
  as it came (:func:`forwarded_trace_context`: the Exchange adds it to every
  attempt's headers); with tracing on the adapter replaces it with
  :func:`format_traceparent` / :func:`format_tracestate` of each attempt's
  own span.
* **Span facts**: :func:`request_span` (the SERVER span, from the
  Exchange's ``RequestSummary`` and the usage record's outcome),
  :func:`limits_span` (from the ``Decision`` of ``LimitsDecided``) and
  :func:`attempt_span` (from the ``SendUpstream`` it sent and what came
  back) return a :class:`SpanFacts`: name, attributes, error or not.  The
  adapter copies them onto its spans.  No attribute ever holds a key or
  prompt text: the user is the key's ``user``, as in the access log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .accounting.report import RequestSummary
from .actions import SendUpstream
from .http import Headers
from .limits import Decision, DenyReason

__all__ = [
    "AttemptOutcome",
    "SpanFacts",
    "TraceContext",
    "attempt_span",
    "format_traceparent",
    "format_tracestate",
    "forwarded_trace_context",
    "limits_span",
    "otlp_traces_url",
    "parse_trace_context",
    "refusal_span",
    "request_outcome",
    "request_span",
]

AttributeValue = str | int | float | bool
Attributes = tuple[tuple[str, AttributeValue], ...]

# version "-" trace-id "-" parent-id "-" trace-flags, lower-case hex only.  A
# later version may append "-" and more fields, which this version ignores.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# list-member keys: a simple key, or tenant@system; values: printable ASCII
# without "," and "=", not ending in a space.
_TRACESTATE_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
MAX_TRACESTATE_MEMBERS = 32
_OWS = " \t"


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceContext:
    """A remote parent: the client's span, as its ``traceparent`` names it."""

    trace_id: int
    span_id: int
    flags: int  # bit 0: the caller sampled (recorded) its span
    tracestate: tuple[tuple[str, str], ...] = ()

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 0x01)


def _all(headers: Headers, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


def _parse_traceparent(raw: bytes) -> tuple[int, int, int] | None:
    try:
        text = raw.decode("ascii").strip(_OWS)
    except UnicodeDecodeError:
        return None
    match = _TRACEPARENT.fullmatch(text)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    # "ff" is forbidden; version 00 has exactly four fields.
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace, span = int(trace_id, 16), int(span_id, 16)
    if trace == 0 or span == 0:  # all zeros is invalid
        return None
    return trace, span, int(flags, 16)


def _parse_tracestate(values: list[bytes]) -> tuple[tuple[str, str], ...]:
    """Every list-member of the (combined) headers; () when any is malformed,
    repeats a key or there are more than 32: such a tracestate is not passed on."""
    members: list[tuple[str, str]] = []
    try:
        joined = ",".join(value.decode("ascii") for value in values)
    except UnicodeDecodeError:
        return ()
    for member in joined.split(","):
        member = member.strip(_OWS)
        if not member:
            continue  # empty list-members are allowed
        key, sep, value = member.partition("=")
        if not sep or not _TRACESTATE_KEY.fullmatch(key) or not _TRACESTATE_VALUE.fullmatch(value):
            return ()
        members.append((key, value))
    keys = {key for key, _ in members}
    if len(keys) != len(members) or len(members) > MAX_TRACESTATE_MEMBERS:
        return ()
    return tuple(members)


def parse_trace_context(headers: Headers) -> TraceContext | None:
    """The client's trace context, or None when it sent none or a bad one.

    Two ``traceparent`` headers are as bad as a malformed one.  Several
    ``tracestate`` headers are one list, joined by commas.
    """
    found = _all(headers, b"traceparent")
    if len(found) != 1:
        return None
    parsed = _parse_traceparent(found[0])
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    state = _parse_tracestate(_all(headers, b"tracestate"))
    return TraceContext(trace_id=trace_id, span_id=span_id, flags=flags, tracestate=state)


def forwarded_trace_context(headers: Headers) -> Headers:
    """The client's ``traceparent`` and ``tracestate`` headers to pass on
    upstream unchanged, when :func:`parse_trace_context` accepts them; ()
    when there is none or it is invalid, and no ``tracestate`` when that
    alone is invalid or empty.  Several ``tracestate`` headers go on as one.
    """
    context = parse_trace_context(headers)
    if context is None:
        return ()
    (traceparent,) = _all(headers, b"traceparent")
    forwarded: Headers = ((b"traceparent", traceparent.strip(b" \t")),)
    if context.tracestate:
        tracestate = b",".join(_all(headers, b"tracestate")).strip(b" \t")
        forwarded += ((b"tracestate", tracestate),)
    return forwarded


def format_traceparent(trace_id: int, span_id: int, flags: int) -> bytes:
    """The version-00 ``traceparent`` value naming span ``span_id``."""
    return b"00-%032x-%016x-%02x" % (trace_id, span_id, flags & 0xFF)


def format_tracestate(members: Iterable[tuple[str, str]]) -> bytes:
    """The ``tracestate`` value (b"" when there is none to send)."""
    return ",".join(f"{key}={value}" for key, value in members).encode("ascii")


def otlp_traces_url(endpoint: str) -> str:
    """``[tracing] endpoint`` as the exporter's URL: a bare collector address
    gets the OTLP/HTTP traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does."""
    if urlsplit(endpoint).path.strip("/"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


# ---- span facts ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanFacts:
    """What one span says: its name, attributes, and whether it failed."""

    name: str
    attributes: Attributes
    error: str | None = None  # the span's error description; None: not an error


def request_outcome(status: int, recorded: str | None) -> str:
    """The request's outcome: the usage record's when there is one ("ok",
    "upstream_error", "client_disconnected", "failed_mid_stream"), else what
    the status says of a request that reached no backend."""
    if recorded is not None:
        return recorded
    if status == 499:
        return "client_disconnected"
    if status >= 500 or status == 0:
        return "error"
    return "rejected" if status >= 400 else "ok"


def request_span(
    summary: RequestSummary, *, method: str, route_path: str | None, outcome: str | None
) -> SpanFacts:
    """The SERVER span of a request, from its summary (``Exchange.summary``).

    Named ``"<method> <route path>"`` (``"POST /v1/chat/completions"``), or
    the method alone for a path no route declares, so span names never
    carry a client's free-form path.  An error when the status is a 5xx.
    """
    attributes: list[tuple[str, AttributeValue]] = [
        ("http.request.method", method),
        ("http.response.status_code", summary.status),
        ("gateway.request_id", summary.request_id),
        ("gateway.surface", summary.surface),
        ("gateway.route", summary.route),
        ("gateway.outcome", request_outcome(summary.status, outcome)),
        ("gateway.retries", summary.retries),
        ("enduser.id", summary.user),
    ]
    if route_path is not None:
        attributes.append(("http.route", route_path))
    if summary.model:
        attributes.append(("gen_ai.request.model", summary.model))
    if summary.backend:
        attributes += [
            ("gateway.backend", summary.backend),
            ("gen_ai.response.model", summary.resolved_model),
            ("gen_ai.usage.input_tokens", summary.prompt_tokens),
            ("gen_ai.usage.output_tokens", summary.completion_tokens),
        ]
    error = f"HTTP {summary.status}" if summary.status >= 500 else None
    if error is not None:
        attributes.append(("error.type", str(summary.status)))
    name = method if route_path is None else f"{method} {route_path}"
    return SpanFacts(name=name, attributes=tuple(attributes), error=error)


def refusal_span(status: int, *, refusal: str) -> SpanFacts:
    """The SERVER span of a request the transport refused before the core
    saw it (a head refused for its key or size, a body over the cap, a read
    timeout, a malformed request, too many connections): its status and
    why, as the error's code.  Unnamed by path, since no route was reached
    (a client's free-form path never names a span); an error when 5xx."""
    attributes: list[tuple[str, AttributeValue]] = [
        ("http.response.status_code", status),
        ("gateway.outcome", "refused"),
        ("gateway.refusal", refusal),
    ]
    error = f"HTTP {status}" if status >= 500 else None
    if error is not None:
        attributes.append(("error.type", str(status)))
    return SpanFacts(name="refused", attributes=tuple(attributes), error=error)


def limits_span(decision: Decision) -> SpanFacts:
    """The limit check's span: allowed or not, which limit denied, and when
    to retry.  A deny is the policy working, not an error; a store that
    could not decide (``on_error = "closed"``) is one."""
    attributes: list[tuple[str, AttributeValue]] = [("gateway.limits.allowed", decision.allowed)]
    if decision.fallback is not None:
        attributes.append(("gateway.limits.fallback", decision.fallback.value))
    error = None
    if not decision.allowed:
        if decision.reason is not None:
            attributes.append(("gateway.limits.reason", decision.reason.value))
            if decision.reason is DenyReason.STORE_UNAVAILABLE:
                error = "limit store unavailable"
        if decision.limit is not None:
            attributes.append(("gateway.limits.denied_by", decision.limit.value))
        if decision.scope is not None:
            attributes.append(("gateway.limits.scope", decision.scope.value))
        if decision.retryable:
            attributes.append(("gateway.limits.retry_after", decision.retry_after_us / 1e6))
    return SpanFacts(name="gateway.limits", attributes=tuple(attributes), error=error)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptOutcome:
    """What the executor saw of one upstream attempt."""

    number: int  # 1-based, across retries and fallbacks
    status: int | None = None  # the backend's status, once its head arrived
    error: str | None = None  # UpstreamFailed's error code, before or after the head
    next_call: SendUpstream | None = None  # the attempt the Exchange asked for next


def attempt_span(call: SendUpstream, outcome: AttemptOutcome) -> SpanFacts:
    """The CLIENT span of one upstream attempt: backend, URL path, why it
    was made (first, retry or fallback), status or error, whether another
    attempt followed, and the delay waited before it.

    Named ``"<method> <path>"``; the URL's host and port go in attributes,
    its userinfo and query nowhere.  An error for a failure or a status of
    400 and above (the backend's answer was not usable).
    """
    url = urlsplit(call.url)
    attributes: list[tuple[str, AttributeValue]] = [
        ("http.request.method", call.method),
        ("url.path", url.path),
        ("server.address", url.hostname or ""),
        ("gateway.backend", call.backend),
        ("gateway.attempt", outcome.number),
        ("gateway.attempt.reason", call.reason),
        ("gateway.attempt.delay", call.delay),
        ("gateway.attempt.retried", outcome.next_call is not None),
    ]
    if url.port is not None:
        attributes.append(("server.port", url.port))
    if outcome.next_call is not None:
        attributes.append(("gateway.attempt.next_backend", outcome.next_call.backend))
    error = None
    if outcome.status is not None:
        attributes.append(("http.response.status_code", outcome.status))
        if outcome.status >= 400 and outcome.error is None:
            error = f"HTTP {outcome.status}"
            attributes.append(("error.type", str(outcome.status)))
    if outcome.error is not None:  # before the head, or mid-stream after it
        error = outcome.error
        attributes.append(("error.type", outcome.error))
    elif outcome.status is None:  # neither a head nor a failure: the client left, or shutdown
        error = "cancelled"
        attributes.append(("error.type", "cancelled"))
    return SpanFacts(name=f"{call.method} {url.path}", attributes=tuple(attributes), error=error)
