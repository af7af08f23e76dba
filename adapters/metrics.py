"""Prometheus metrics (prometheus-client) and the one JSON log line per request.

Each ``GatewayMetrics`` owns its own ``CollectorRegistry`` -- no module-level
singletons, so two gateways in one process (tests) do not share counters.

With ``--workers N`` every worker process writes its samples to
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and a
scrape of any worker aggregates all of them, so the figures are right no
matter which worker answers.  Counters and histograms are summed over the
workers; each gauge is combined as it means (docs/deployment.md, "Metrics
under --workers"), over live workers only (the parent marks an exited
worker dead):

* ``gateway_requests_in_flight``: ``livesum`` -- requests in flight in all;
* ``gateway_backend_up``: ``livemax`` -- 1 when any worker's last probe of
  the backend succeeded (each worker probes on its own);
* ``gateway_store_fallback_mode``: ``livemax`` -- 1 while any worker runs
  on the store's failure policy;
* ``gateway_store_fallback_seconds``: ``livemax`` -- the longest any
  worker has run on the failure policy since it started;
* ``gateway_store_ready``: ``livemin`` -- 1 only when every worker's store
  is warm;
* ``gateway_store_commits{state}``: ``livesum`` -- commits queued, replayed
  and dropped, in all workers;
* ``gateway_backend_circuit_state``: ``liveall`` -- one series per worker
  (a ``pid`` label), since each worker keeps its own breaker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import IO, Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from sansio_gateway.exchange import RequestSummary
from sansio_gateway.limits import Decision

__all__ = ["GatewayMetrics", "log_request"]

access_log = logging.getLogger("sansio_gateway.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class GatewayMetrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self._store_errors_seen = 0
        registry = CollectorRegistry()
        self.registry = registry

        # How a gauge combines across --workers (see the module docstring);
        # outside multiprocess mode the argument is ignored.
        def mode(name: str) -> dict[str, Any]:
            return {"multiprocess_mode": name}

        labels = ("surface", "route", "model", "backend", "status")
        self.requests = Counter(
            "gateway_requests_total", "Requests answered", labels, registry=registry
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Time to the end of the response",
            ("surface", "route", "model"), buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds", "Time to the first streamed bytes",
            ("surface", "route", "model"), buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.tokens = Counter(
            "gateway_tokens_total", "Tokens by kind (prompt or completion)",
            ("model", "backend", "kind"), registry=registry,
        )  # fmt: skip
        self.retries = Counter(
            "gateway_upstream_retries_total", "Upstream attempts beyond the first",
            ("backend",), registry=registry,
        )  # fmt: skip
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total", "Upstream failures by kind",
            ("backend", "kind"), registry=registry,
        )  # fmt: skip
        self.limit_decisions = Counter(
            "gateway_ratelimit_decisions_total", "Rate-limit decisions by limit and outcome",
            ("limit", "outcome"), registry=registry,
        )  # fmt: skip
        self._allowed = self.limit_decisions.labels("all", "allowed")
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being served",
            registry=registry,
            **mode("livesum"),
        )
        self.store_errors = Counter(
            "gateway_store_errors_total", "Rate-limit store failures", ("store",),
            registry=registry,
        )  # fmt: skip
        self.store_fallback = Gauge(
            "gateway_store_fallback_mode", "1 while the limit store's failure policy is in force",
            ("policy",), registry=registry, **mode("livemax"),
        )  # fmt: skip
        self.store_fallback_seconds = Gauge(
            "gateway_store_fallback_seconds", "Seconds the limit store's failure policy was in"
            " force since start (not ready, or its breaker open)", registry=registry, **mode("livemax"),
        )  # fmt: skip
        self.store_ready = Gauge(
            "gateway_store_ready", "1 once the limit store is warmed (connected, scripts loaded,"
            " pool open)", registry=registry, **mode("livemin"),
        )  # fmt: skip
        self.store_commits = Gauge(
            "gateway_store_commits", "Commits that could not reach the limit store at once:"
            " pending (queued), replayed, dropped (could not be replayed)", ("state",),
            registry=registry, **mode("livesum"),
        )  # fmt: skip
        self.breaker_state = Gauge(
            "gateway_backend_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ("backend",), registry=registry, **mode("liveall"),
        )  # fmt: skip
        self.backend_up = Gauge(
            "gateway_backend_up", "1 when the backend answered its last probe",
            ("backend",), registry=registry, **mode("livemax"),
        )  # fmt: skip

        # Each request's labelled children, looked up once per label set:
        # labels() costs more than the increment itself.  As bounded as the
        # series prometheus-client keeps anyway (the core bounds the model label).
        self._series: dict[tuple[str, str, str, str, int], _RequestSeries] = {}

    def observe(self, summary: RequestSummary) -> None:
        # The core's bounded label, never the client's model string.
        model = summary.model_label
        backend = summary.backend or "-"
        key = (summary.surface, summary.route, model, backend, summary.status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _RequestSeries(self, *key)
        series.requests.inc()
        series.latency.observe(summary.latency)
        if summary.ttft is not None:
            series.ttft(summary.ttft)
        if summary.backend:
            series.tokens(summary.prompt_tokens, summary.completion_tokens)
            if summary.retries:
                series.retried(summary.retries)

    def forget_backend(self, name: str) -> None:
        """A reload removed or replaced ``name``: its gauges no longer describe it."""
        for gauge in (self.breaker_state, self.backend_up):
            with contextlib.suppress(KeyError):
                gauge.remove(name)

    def observe_decision(self, decision: Decision) -> None:
        if decision.allowed:
            if decision.fallback is None:
                self._allowed.inc()  # the common case: no labels() lookup
                return
            self.limit_decisions.labels("all", f"allowed_{decision.fallback.value}").inc()
        else:
            limit = decision.limit.value if decision.limit is not None else "store"
            reason = decision.reason.value if decision.reason is not None else "unknown"
            self.limit_decisions.labels(limit, f"denied_{reason}").inc()

    def observe_store(self, store: object) -> None:
        """Mirror a resilient store's health: errors so far and whether its
        failure policy is in force (memory stores have neither)."""
        errors = getattr(store, "store_errors", None)
        if isinstance(errors, int) and errors > self._store_errors_seen:
            self.store_errors.labels("limits").inc(errors - self._store_errors_seen)
            self._store_errors_seen = errors
        if hasattr(store, "fallback_mode"):
            mode = store.fallback_mode
            policy = getattr(store, "policy", "unknown")
            self.store_fallback.labels(str(policy)).set(1 if mode else 0)
        seconds = getattr(store, "fallback_seconds", None)
        if isinstance(seconds, float):
            self.store_fallback_seconds.set(seconds)
            self.store_ready.set(1 if getattr(store, "ready", True) else 0)
            for state, name in (
                ("pending", "pending_commits"),
                ("replayed", "commits_replayed"),
                ("dropped", "commits_dropped"),
            ):
                self.store_commits.labels(state).set(getattr(store, name, 0))

    def render(self) -> tuple[bytes, bytes]:
        if self.multiprocess:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST.encode()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST.encode()


class _RequestSeries:
    """The children a request with one set of labels updates.  Those not
    every request touches are made on first use: prometheus-client exports
    a child from its creation on, and a zero series nobody wrote is noise."""

    __slots__ = ("_completion", "_labels", "_metrics", "_prompt", "_retries", "_ttft",
                 "latency", "requests")  # fmt: skip

    def __init__(
        self,
        metrics: GatewayMetrics,
        surface: str,
        route: str,
        model: str,
        backend: str,
        status: int,
    ) -> None:
        self._metrics = metrics
        self._labels = (surface, route, model, backend)
        self.requests = metrics.requests.labels(surface, route, model, backend, str(status))
        self.latency = metrics.latency.labels(surface, route, model)
        self._ttft: Any = None
        self._prompt: Any = None
        self._completion: Any = None
        self._retries: Any = None

    def ttft(self, seconds: float) -> None:
        if self._ttft is None:
            surface, route, model, _ = self._labels
            self._ttft = self._metrics.ttft.labels(surface, route, model)
        self._ttft.observe(seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        if prompt:
            if self._prompt is None:
                self._prompt = self._metrics.tokens.labels(*self._labels[2:], "prompt")
            self._prompt.inc(prompt)
        if completion:
            if self._completion is None:
                self._completion = self._metrics.tokens.labels(*self._labels[2:], "completion")
            self._completion.inc(completion)

    def retried(self, retries: int) -> None:
        if self._retries is None:
            self._retries = self._metrics.retries.labels(self._labels[3])
        self._retries.inc(retries)


def log_request(summary: RequestSummary) -> None:
    """One JSON line per request: ids, status, tokens, timings -- never
    prompt text, never keys."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = (
        # orjson: a few times cheaper than json.dumps; the same compact JSON
        # (UTF-8 where json.dumps would write \u escapes).
        orjson.dumps(
            {
                "request_id": summary.request_id,
                "key_id": summary.key_id,
                "user": summary.user,
                "surface": summary.surface,
                "route": summary.route,
                "model": summary.model,
                "backend": summary.backend,
                "resolved_model": summary.resolved_model,
                "status": summary.status,
                "prompt_tokens": summary.prompt_tokens,
                "completion_tokens": summary.completion_tokens,
                "latency_ms": round(summary.latency * 1000, 3),
                "ttft_ms": None if summary.ttft is None else round(summary.ttft * 1000, 3),
                "retries": summary.retries,
                "client_disconnected": summary.client_disconnected,
            },
        ).decode()
    )
    handler = _direct
    # The serve command's own handler, alone on the logger and formatting
    # "%(message)s": the same line without a LogRecord, its formatting and
    # the logger's dispatch (about a third of a request's logging cost).
    if handler is not None and access_log.handlers == [handler] and not access_log.filters:
        handler.write_line(line)
    else:
        access_log.info(line)


_direct: BatchedStreamHandler | None = None


def write_access_lines_to(handler: BatchedStreamHandler | None) -> None:
    """Let :func:`log_request` hand lines to ``handler`` directly while it is
    the access logger's only handler (the serve command sets this up)."""
    global _direct
    _direct = handler


class BatchedStreamHandler(logging.StreamHandler[IO[str]]):
    """A stream handler whose lines leave in one write every ``interval``
    seconds, not one write each.

    A write per access line cost a system call per request (stdout is
    unbuffered where ``PYTHONUNBUFFERED`` is set, as in the Dockerfile): about
    a tenth of the gateway's CPU per stream chunk (docs/benchmarks.md,
    "Gateway CPU per stream chunk (benchmarks/chunk_cost.py)").  nginx's buffered ``access_log`` makes
    the same trade.  A line waits ``interval`` at most, or less once
    ``max_pending`` lines wait; :meth:`close` (``logging.shutdown`` at exit,
    after a graceful stop) writes what is left.
    """

    def __init__(self, stream: IO[str], interval: float = 0.05, max_pending: int = 256) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_pending = max_pending
        self._lines: list[str] = []
        self._due = threading.Event()
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held.
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._queue(line)

    def write_line(self, line: str) -> None:
        """The access line without a LogRecord (see :func:`log_request`)."""
        with self.lock:  # type: ignore[union-attr]
            self._queue(line)

    def _queue(self, line: str) -> None:
        self._lines.append(line + self.terminator)
        if len(self._lines) >= self.max_pending:
            self._write()
        elif not self._due.is_set():
            flusher = self._flusher
            if flusher is None or not flusher.is_alive():  # first line, or after a fork
                flusher = self._flusher = threading.Thread(
                    target=self._run, name="access-log-flush", daemon=True
                )
                flusher.start()
            self._due.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def close(self) -> None:
        self.flush()
        super().close()

    def _write(self) -> None:
        self._due.clear()
        if self._lines:
            text = "".join(self._lines)
            self._lines.clear()
            self.stream.write(text)
        super().flush()

    def _run(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.interval)  # gathers the lines of this interval
            self.flush()
