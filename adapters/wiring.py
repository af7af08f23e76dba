"""Wiring, once: from a config file to a gateway ready for a transport.

:func:`load_config` reads the config (``serve``, ``check-config``, the ASGI
app's ``create_app`` all read it here); :func:`checked_config` also refuses
what ``serve`` would.  :class:`Wiring` builds, from a config, the Gateway,
the limit store, the upstream client, the usage ledger, the metrics and the
:class:`~sansio_gateway.adapters.front.TransportFront` with its executor, and
runs what keeps them going: backend discovery (at start, every
``server.health_interval`` seconds as the backends' health probe, and on
demand when a client names an unknown model), the limit store's warm-up
and the ledger's writer.  The transports take it from there: the TCP
listener (``app.py``) and the ASGI app (``asgi.py``).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from sansio_gateway.backends.catalogue import changed_clashes
from sansio_gateway.config import (
    ConfigError,
    GatewayConfig,
    default_config,
    parse_config,
    redact_url,
    sqlite_path,
)
from sansio_gateway.gateway import Gateway
from sansio_gateway.limits.breaker import StoreHealth

from .executor import ActionExecutor
from .fast_upstream import FastUpstreamClient
from .front import ServerLimits, TransportFront
from .ledger import UsageLedger, open_ledger
from .limit_stores import ResilientLimitStore, open_limit_store
from .metrics import GatewayMetrics
from .plugins import load_registry
from .tracing import open_tracing, tracing_problem
from .upstream import TRANSPORT_ERRORS, UpstreamClient, map_upstream_exception

__all__ = ["Wiring", "checked_config", "load_config"]

log = logging.getLogger("sansio_gateway")


_BREAKER_GAUGE = {"closed": 0, "half_open": 1, "open": 2}


def load_config(path: str | None) -> GatewayConfig:
    """The config from ``path``, or the no-config defaults."""
    if path is None:
        return default_config(os.environ)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, source=path, env=os.environ)


def checked_config(path: str | None) -> GatewayConfig:
    """The config, with everything ``serve`` would refuse already refused:
    ``check-config`` and ``serve`` run this one check, so they agree."""
    config = load_config(path)
    try:
        Gateway(config, registry=load_registry())  # what only the app can check: backend kinds
    except ConfigError as exc:
        raise ConfigError(f"{path or '(defaults)'}: {exc}") from None
    problem = tracing_problem(config.tracing)
    if problem is not None:
        raise ConfigError(f"{path or '(defaults)'}: {problem}")
    usage = config.store.usage
    if usage.startswith("sqlite:///") and not Path(sqlite_path(usage)).parent.is_dir():
        raise ConfigError(
            f"{path or '(defaults)'}: store.usage: the directory of {usage!r} does not exist"
        )
    return config


class Wiring:
    """A gateway built from a config, for any transport (see the module docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        ledger: UsageLedger | None = None,
        worker_count: int = 1,
        clock: Callable[[], float] = time.time,
        worker_index: int = 0,
        fast: bool = False,
    ) -> None:
        self.config = config
        # Under --workers, only worker 0 prints the startup listing and clashes.
        self.announce = worker_index == 0
        self._clashes: dict[str, tuple[str, ...]] = {}
        self.worker_count = worker_count
        memory_store = config.store.url.startswith("memory")
        # With the memory store every worker enforces 1/N of each limit.
        self.gateway = Gateway(
            config,
            random=random.random,
            limit_divisor=worker_count if memory_store else 1,
            registry=load_registry(),
        )
        if config.server.runtime == "trio" and config.store.url.startswith("redis"):
            # redis-py's asyncio client needs an asyncio loop.
            raise ConfigError(
                "server.runtime = 'trio' cannot use a Redis store (store.url); use asyncio"
            )
        self.limit_store = open_limit_store(
            config.store,
            instances=config.store.instances * worker_count,
            decision_timeout=config.store.decision_timeout,
        )
        if isinstance(self.limit_store, ResilientLimitStore):
            self.limit_store.on_health = self._store_changed
            self._store_changed(self.limit_store.health)
        # fast: the asyncio.Protocol client (docs/architecture.md, "The fast
        # transport"); asyncio only, so never under ASGI or trio.
        self.upstream: UpstreamClient | FastUpstreamClient = (
            FastUpstreamClient() if fast else UpstreamClient()
        )
        self.clock = clock
        self.ledger = ledger if ledger is not None else open_ledger(config.store.usage)
        self.metrics = GatewayMetrics()
        self.tracing = open_tracing(config.tracing)
        self.executor = ActionExecutor(
            gateway=self.gateway,
            upstream=self.upstream,
            ledger=self.ledger,
            metrics=self.metrics,
            limit_store=self.limit_store,
            refresh_catalogue=self.refresh_on_miss,
            clock=clock,
            tracing=self.tracing,
        )
        self.front = TransportFront(
            self.gateway, self.executor, ServerLimits.from_config(config.server)
        )
        self._refreshing: anyio.Event | None = None

    # ---- the shared limit store -------------------------------------------

    def _store_changed(self, health: StoreHealth) -> None:
        reason = health.reason
        if reason is None and not health.serving:
            reason = f"decisions failing (breaker {health.breaker.state.value})"
        self.gateway.record_store(ready=health.ready, serving=health.serving, reason=reason)

    async def warm_store(self) -> None:
        """Warm the shared limit store before listening (bounded by its
        ``connect_timeout``); if it does not answer, ``/ready`` stays 503
        and :meth:`ResilientLimitStore.run` keeps trying."""
        store = self.limit_store
        if isinstance(store, ResilientLimitStore) and await store.warm():
            assert store.warm_seconds is not None
            log.info(
                "rate-limit store ready in %.1f ms (store.url = %s, %d connections)",
                store.warm_seconds * 1000,
                redact_url(self.config.store.url),
                self.config.store.pool_size,
            )

    # ---- discovery -------------------------------------------------------

    async def discover(self, name: str) -> None:
        backend = self.config.backend(name)
        url = backend.url + self.gateway.discovery_path(name)
        headers = [(k, v) for k, v in self.gateway.upstream_headers(name, "discovery")]
        started = time.perf_counter()
        try:
            status, body = await self.upstream.get(
                url, headers, within=backend.connect_timeout + 10
            )
            if status != 200:
                raise ValueError(f"HTTP {status} from {url}")
            models = self.gateway.parse_discovery(name, body)
        except (ValueError, *TRANSPORT_ERRORS) as exc:
            error = exc if isinstance(exc, ValueError) else map_upstream_exception(exc, name)
            self.gateway.record_discovery_failure(name, str(error), self.clock())
            log.warning("backend %s (%s): discovery failed: %s", name, backend.url, error)
            return
        latency = time.perf_counter() - started
        self.gateway.record_discovery(name, models, self.clock(), latency=latency)

    async def discover_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for backend in self.config.backends:
                if backend.discover:
                    tg.start_soon(self.discover, backend.name)
        clashes = {name: tuple(owners) for name, owners in self.gateway.catalogue.clashes()}
        # Logged once when a clash appears or changes, by the first worker only.
        for name, owners in changed_clashes(self._clashes, clashes):
            if self.announce:
                log.warning(
                    "model %s is offered by %s; %s wins (config order)",
                    name,
                    ", ".join(owners),
                    owners[0],
                )
        self._clashes = clashes

    async def refresh_on_miss(self) -> None:
        """Rediscover now; concurrent callers share one discovery run."""
        if self._refreshing is not None:
            await self._refreshing.wait()
            return
        self._refreshing = anyio.Event()
        try:
            await self.discover_all()
        finally:
            self._refreshing.set()
            self._refreshing = None

    async def _probe_forever(self) -> None:
        """Discovery doubles as the active health probe: it feeds /ready,
        /status and the backends' circuit breakers."""
        while True:
            await anyio.sleep(self.config.server.health_interval)
            await self.discover_all()
            self._export_health()

    def _export_health(self) -> None:
        """The backend gauges, from the last discovery (also the first one:
        a scrape right after startup already has them)."""
        for backend in self.config.backends:
            state = self.gateway.health.state(backend.name)
            self.metrics.breaker_state.labels(backend.name).set(_BREAKER_GAUGE[state.value])
            status = self.gateway.backend_status.get(backend.name)
            self.metrics.backend_up.labels(backend.name).set(1 if status and status.up else 0)

    # ---- running -------------------------------------------------------

    async def start(self) -> None:
        """Before serving: discover the backends and warm the shared limit
        store, side by side, then export the backends' first health."""
        async with anyio.create_task_group() as startup:
            startup.start_soon(self.discover_all)
            startup.start_soon(self.warm_store)
        self._export_health()

    async def run_services(self) -> None:
        """While serving, until cancelled: the health probes, the ledger's
        writer, and the shared limit store's warm-up and commit replay."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._probe_forever)
            tg.start_soon(self.ledger.run)
            if isinstance(self.limit_store, ResilientLimitStore):
                tg.start_soon(self.limit_store.run)

    async def aclose(self) -> None:
        """After serving: close the upstream pools, flush the ledger, close the
        store, export the spans still buffered."""
        with anyio.CancelScope(shield=True):
            await self.upstream.aclose()
            await self.ledger.aclose()
            await self.limit_store.aclose()
            if self.tracing.enabled:  # the exporter's last batch, bounded by its timeout
                await anyio.to_thread.run_sync(self.tracing.shutdown)

    def describe(self) -> list[str]:
        """Lines for the operator: backends and what was found on them."""
        lines = []
        for backend in self.config.backends:
            status = self.gateway.backend_status.get(backend.name)
            if status is None:
                state = "discovery off"
            elif status.up:
                state = f"{status.models} models"
            else:
                state = f"UNREACHABLE ({status.error})"
            lines.append(f"backend {backend.name} [{backend.kind}] {backend.url}: {state}")
        for model, owner, _ in self.gateway.catalogue.models():
            lines.append(f"  model {model} -> {owner}")
        store = self.config.store
        line = f"limits: store.url = {redact_url(store.url)}"
        limit_store = self.limit_store
        if isinstance(limit_store, ResilientLimitStore):
            if limit_store.ready and limit_store.warm_seconds is not None:
                line += f": ready in {limit_store.warm_seconds * 1000:.1f} ms"
            else:
                line += f": NOT READY ({limit_store.not_ready_reason}); /ready is 503 until it is"
        lines.append(line)
        lines.append(f"usage ledger: store.usage = {redact_url(store.usage)}")
        return lines
