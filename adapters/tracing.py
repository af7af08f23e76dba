"""The executor's tracer: a no-op unless ``[tracing]`` is enabled.

Theory of operation: the executor (``executor.py``) calls
:meth:`Tracing.start` once per request and reports, on the
:class:`RequestTrace` it gets, the few things it already executes: the
limit check and its decision, each upstream attempt (which may add the
``traceparent`` of the attempt's span to the request it sends, and watch its
results), the usage record, and the summary at the end.  With tracing off
every one of these is an empty method on one shared object, so a request
pays a handful of calls and no allocation.

With tracing on, :func:`open_tracing` builds the OpenTelemetry
implementation (``otel.py``), imported only then: the SDK is an optional
extra (``pip install 'sansio-gateway[otel]'``), and neither the core nor
these adapters import it otherwise.  What each span says is decided in the
core (``sansio_gateway/tracing.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sansio_gateway.actions import LimitsDecided, Result, SendUpstream, UsageRecord
from sansio_gateway.config import ConfigError, TracingConfig
from sansio_gateway.errors import GatewayError
from sansio_gateway.http import IncomingRequest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from sansio_gateway.accounting.report import RequestSummary
    from sansio_gateway.exchange import Exchange

__all__ = ["NO_TRACING", "RequestTrace", "Tracing", "open_tracing", "tracing_problem"]

Deliver = Callable[[Result], Awaitable[bool]]

_EXTRA = "tracing.enabled needs the OpenTelemetry SDK: pip install 'sansio-gateway[otel]'"


class RequestTrace:
    """One request's spans.  This base class records nothing (tracing off)."""

    __slots__ = ()

    def limits_checking(self) -> None:
        """The limit check starts (``CheckLimits`` is being executed)."""

    def limits_decided(self, result: LimitsDecided) -> None:
        """The limit store answered ``result``."""

    def attempt(self, call: SendUpstream, deliver: Deliver) -> tuple[SendUpstream, Deliver]:
        """An upstream attempt starts: the call to send (with trace headers)
        and the callback its results go through."""
        return call, deliver

    def attempt_done(self, next_call: SendUpstream | None) -> None:
        """The attempt ended; ``next_call`` is the one the Exchange asked for
        after it (a retry or fallback), if any."""

    def usage(self, record: UsageRecord) -> None:
        """The request's usage record (its outcome) was written."""

    def end(self, exchange: Exchange, summary: RequestSummary) -> None:
        """The request is over; ``summary`` is ``exchange.summary(now)``."""


class Tracing:
    """The executor's tracer.  This base class is the no-op one."""

    enabled = False

    def start(self, request: IncomingRequest) -> RequestTrace:
        """The trace of one request, started as it reaches the executor."""
        return _NO_TRACE

    def refused(self, error: GatewayError, status: int) -> None:
        """A request the transport answered ``status`` for ``error`` before
        it reached the executor (adapters/front.py)."""

    def shutdown(self) -> None:
        """Export what is still buffered and stop (blocking; call from a thread)."""


_NO_TRACE = RequestTrace()
NO_TRACING = Tracing()


def tracing_problem(config: TracingConfig) -> str | None:
    """Why tracing as configured cannot start here (the extra is missing), or None."""
    if not config.enabled:
        return None
    needed = ["opentelemetry.sdk"]
    if config.exporter == "otlp":
        needed.append("opentelemetry.exporter.otlp.proto.http")
    for module in needed:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return _EXTRA
    return None


def open_tracing(config: TracingConfig, *, exporter: SpanExporter | None = None) -> Tracing:
    """The tracer ``config`` asks for: :data:`NO_TRACING` when it is off.

    ``exporter`` replaces the configured one and exports each span as it
    ends (tests pass the SDK's ``InMemorySpanExporter``).  Raises
    ``ConfigError`` when tracing is on and the ``otel`` extra is missing.
    """
    if not config.enabled and exporter is None:
        return NO_TRACING
    problem = None if exporter is not None else tracing_problem(config)
    if problem is not None:
        raise ConfigError(problem)
    from .otel import OtelTracing

    return OtelTracing(config, exporter=exporter)
