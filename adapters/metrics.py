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

    def observe(self, summary: RequestSummary) -> None:
        # The core's bounded label, never the client's model string.
        model = summary.model_label
        backend = summary.backend or "-"
        self.requests.labels(
            summary.surface, summary.route, model, backend, str(summary.status)
        ).inc()
        self.latency.labels(summary.surface, summary.route, model).observe(summary.latency)
        if summary.ttft is not None:
            self.ttft.labels(summary.surface, summary.route, model).observe(summary.ttft)
        if summary.backend:
            if summary.prompt_tokens:
                self.tokens.labels(model, backend, "prompt").inc(summary.prompt_tokens)
            if summary.completion_tokens:
                self.tokens.labels(model, backend, "completion").inc(summary.completion_tokens)
            if summary.retries:
                self.retries.labels(backend).inc(summary.retries)

    def forget_backend(self, name: str) -> None:
        """A reload removed or replaced ``name``: its gauges no longer describe it."""
        for gauge in (self.breaker_state, self.backend_up):
            with contextlib.suppress(KeyError):
                gauge.remove(name)

    def observe_decision(self, decision: Decision) -> None:
        if decision.allowed:
            outcome = (
                "allowed" if decision.fallback is None else f"allowed_{decision.fallback.value}"
            )
            self.limit_decisions.labels("all", outcome).inc()
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


def log_request(summary: RequestSummary) -> None:
    """One JSON line per request: ids, status, tokens, timings -- never
    prompt text, never keys."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    access_log.info(
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
            self._lines.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
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
