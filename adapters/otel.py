"""OpenTelemetry spans for requests: the SDK side of ``tracing.py``.

Imported only when ``[tracing] enabled = true`` (the ``otel`` extra).  One
``TracerProvider`` per gateway process, never the global one: each gateway
(and each test's) keeps its own exporter.  Spans are parented explicitly
(``context=``), never through the context variables of the running task,
so the anyio and asyncio tasks that feed one request need no propagation.

Span tree of one request (names and attributes from
``sansio_gateway/tracing.py``)::

    POST /v1/chat/completions      SERVER  child of the client's traceparent
      gateway.limits               INTERNAL
      POST /api/chat               CLIENT  attempt 1 (its traceparent goes upstream)
      POST /api/chat               CLIENT  attempt 2 (a retry or a fallback) ...

The standard ``OTEL_*`` variables apply where the config leaves a key
empty: the OTLP exporter's endpoint, headers, timeout, compression and
certificates, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, and
``OTEL_TRACES_SAMPLER`` when ``sample_ratio`` is unset.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.span import Span, TraceState

from sansio_gateway.actions import (
    LimitsDecided,
    Result,
    SendUpstream,
    UpstreamFailed,
    UpstreamResponseStarted,
    UsageRecord,
)
from sansio_gateway.config import TracingConfig
from sansio_gateway.errors import GatewayError
from sansio_gateway.http import IncomingRequest
from sansio_gateway.tracing import (
    AttemptOutcome,
    SpanFacts,
    attempt_span,
    format_traceparent,
    format_tracestate,
    limits_span,
    otlp_traces_url,
    parse_trace_context,
    refusal_span,
    request_span,
)

from .tracing import Deliver, RequestTrace, Tracing

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from sansio_gateway.accounting.report import RequestSummary
    from sansio_gateway.exchange import Exchange

__all__ = ["OtelTracing"]

DEFAULT_SERVICE_NAME = "sansio-gateway"
_TRACE_HEADERS = (b"traceparent", b"tracestate")

log = logging.getLogger("sansio_gateway.tracing")


def _exporter(config: TracingConfig) -> SpanExporter:
    if config.exporter == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if config.endpoint:
        return OTLPSpanExporter(endpoint=otlp_traces_url(config.endpoint))
    return OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else localhost:4318


def _resource(config: TracingConfig) -> Resource:
    # The config's name wins; else OTEL_SERVICE_NAME (read by Resource.create).
    resource = Resource.create({SERVICE_NAME: config.service_name} if config.service_name else {})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _sampler(config: TracingConfig) -> Sampler | None:
    if config.sample_ratio is None:
        return None  # the SDK's: OTEL_TRACES_SAMPLER, else parent-based always-on
    return ParentBased(TraceIdRatioBased(config.sample_ratio))


class OtelTracing(Tracing):
    """Spans through the OpenTelemetry SDK (see the module docstring)."""

    enabled = True

    def __init__(self, config: TracingConfig, *, exporter: SpanExporter | None = None) -> None:
        self.provider = TracerProvider(resource=_resource(config), sampler=_sampler(config))
        if exporter is not None:  # tests: each span exported as it ends
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:  # off the request path, in batches, from the SDK's own thread
            self.provider.add_span_processor(BatchSpanProcessor(_exporter(config)))
        self.tracer = self.provider.get_tracer("sansio_gateway")

    def start(self, request: IncomingRequest) -> RequestTrace:
        parent = parse_trace_context(request.headers)
        context = None
        if parent is not None:
            remote = SpanContext(
                trace_id=parent.trace_id,
                span_id=parent.span_id,
                is_remote=True,
                trace_flags=TraceFlags(parent.flags),
                trace_state=TraceState(list(parent.tracestate)),
            )
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        # Named by method until the route is known (request_span renames it).
        span = self.tracer.start_span(
            request.method,
            context=context,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method},
        )
        return _OtelRequestTrace(self.tracer, span)

    def refused(self, error: GatewayError, status: int) -> None:
        span = self.tracer.start_span("refused", kind=SpanKind.SERVER)
        _apply(span, refusal_span(status, refusal=error.code or error.type))
        span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()


def _apply(span: Span, facts: SpanFacts) -> None:
    span.update_name(facts.name)
    span.set_attributes(dict(facts.attributes))
    if facts.error is not None:
        span.set_status(StatusCode.ERROR, facts.error)


class _OtelRequestTrace(RequestTrace):
    __slots__ = ("attempts", "context", "current", "limits", "outcome", "span", "tracer")

    def __init__(self, tracer: trace.Tracer, span: Span) -> None:
        self.tracer = tracer
        self.span = span
        self.context: Context = trace.set_span_in_context(span)
        self.limits: Span | None = None
        self.attempts = 0
        # The attempt in flight: its call, span and what came back so far.
        self.current: tuple[SendUpstream, Span, AttemptOutcome] | None = None
        self.outcome: str | None = None

    def limits_checking(self) -> None:
        self.limits = self.tracer.start_span("gateway.limits", context=self.context)

    def limits_decided(self, result: LimitsDecided) -> None:
        if self.limits is not None:
            if self.limits.is_recording():
                _apply(self.limits, limits_span(result.decision))
            self.limits.end()
            self.limits = None

    def attempt(self, call: SendUpstream, deliver: Deliver) -> tuple[SendUpstream, Deliver]:
        self.attempts += 1
        span = self.tracer.start_span(call.method, context=self.context, kind=SpanKind.CLIENT)
        self.current = (call, span, AttemptOutcome(number=self.attempts))
        sent = span.get_span_context()
        if not sent.is_valid:  # OTEL_SDK_DISABLED: nothing to propagate
            return call, deliver
        # The attempt's own context replaces the client's, which the core
        # passes on when it takes no part in the trace.
        kept = tuple(h for h in call.headers if h[0] not in _TRACE_HEADERS)
        headers = (*kept, (b"traceparent", format_traceparent(
            sent.trace_id, sent.span_id, sent.trace_flags
        )))  # fmt: skip
        state = format_tracestate(sent.trace_state.items())
        if state:
            headers = (*headers, (b"tracestate", state))

        async def observed(result: Result) -> bool:
            self._observe(result)
            return await deliver(result)

        return replace(call, headers=headers), observed

    def _observe(self, result: Result) -> None:
        if self.current is None:
            return
        call, span, outcome = self.current
        if isinstance(result, UpstreamResponseStarted):
            outcome = replace(outcome, status=result.status)
        elif isinstance(result, UpstreamFailed):
            outcome = replace(outcome, error=result.error.code or type(result.error).__name__)
        else:
            return
        self.current = (call, span, outcome)

    def attempt_done(self, next_call: SendUpstream | None) -> None:
        if self.current is None:
            return
        call, span, outcome = self.current
        self.current = None
        if span.is_recording():
            _apply(span, attempt_span(call, replace(outcome, next_call=next_call)))
        span.end()

    def usage(self, record: UsageRecord) -> None:
        self.outcome = record.outcome

    def end(self, exchange: Exchange, summary: RequestSummary) -> None:
        try:
            self._end(exchange, summary)
        except Exception:  # a trace must never take a request down with it
            log.exception("tracing failed for request %s", summary.request_id)

    def _end(self, exchange: Exchange, summary: RequestSummary) -> None:
        self.attempt_done(None)  # an attempt cut short by cancellation
        if self.limits is not None:  # a check cut short by cancellation
            self.limits.end()
        if self.span.is_recording():
            route = exchange.route.path if exchange.route is not None else None
            facts = request_span(
                summary, method=exchange.method, route_path=route, outcome=self.outcome
            )
            _apply(self.span, facts)
        self.span.end()
