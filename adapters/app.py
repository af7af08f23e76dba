"""Wiring: a Gateway, its upstream client, discovery, and the listening server.

``GatewayApp.serve`` runs until cancelled.  It reports the bound address
through anyio's ``task_status`` (so tests can bind port 0 and learn the
port), then serves connections; backend discovery runs alongside and is
refreshed every ``server.health_interval`` seconds (it doubles as the
backends' health probe) and on demand when a client names an unknown model.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import anyio
import anyio.abc

from sansio_gateway.backends.catalogue import changed_clashes
from sansio_gateway.config import ConfigError, GatewayConfig, redact_url
from sansio_gateway.errors import ServiceUnavailable
from sansio_gateway.gateway import Gateway
from sansio_gateway.limits.breaker import StoreHealth

from .fast_server import FastGatewayServer
from .fast_upstream import FastUpstreamClient
from .ledger import UsageLedger, open_ledger
from .limit_stores import ResilientLimitStore, open_limit_store
from .metrics import GatewayMetrics
from .plugins import load_registry
from .server import GatewayServer, ServerLimits
from .upstream import TRANSPORT_ERRORS, UpstreamClient, map_upstream_exception

__all__ = ["GatewayApp"]

log = logging.getLogger("sansio_gateway")


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_BREAKER_GAUGE = {"closed": 0, "half_open": 1, "open": 2}


class GatewayApp:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        ledger: UsageLedger | None = None,
        worker_count: int = 1,
        reuse_port: bool = False,
        clock: Callable[[], float] = time.time,
        worker_index: int = 0,
        transport: str | None = None,
    ) -> None:
        self.config = config
        # Under --workers, only worker 0 prints the startup listing and clashes.
        self.announce = worker_index == 0
        self._clashes: dict[str, tuple[str, ...]] = {}
        self.worker_count = worker_count
        self.reuse_port = reuse_port
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
        self.clock = clock
        self.ledger = ledger if ledger is not None else open_ledger(config.store.usage)
        self.metrics = GatewayMetrics()
        self.upstream: UpstreamClient | FastUpstreamClient
        self.server: GatewayServer | FastGatewayServer
        # The fast transport (asyncio.Protocol) on asyncio; anyio on trio and
        # under ASGI (which passes transport="anyio").
        self._build_transport(
            (transport or config.server.transport) == "fast" and config.server.runtime == "asyncio"
        )
        self._refreshing: anyio.Event | None = None
        self._accepting: anyio.CancelScope | None = None
        self._listener: asyncio.Server | None = None
        self._drained = anyio.Event()

    def _build_transport(self, fast: bool) -> None:
        self.fast = fast
        self.upstream = FastUpstreamClient() if fast else UpstreamClient()
        server = self.config.server
        server_class = FastGatewayServer if fast else GatewayServer
        self.server = server_class(
            metrics=self.metrics,
            gateway=self.gateway,
            upstream=self.upstream,  # type: ignore[arg-type]
            ledger=self.ledger,
            limits=ServerLimits(
                max_body_bytes=server.max_body_bytes,
                max_header_bytes=server.max_header_bytes,
                read_timeout=server.read_timeout,
                write_timeout=server.write_timeout,
                keepalive_timeout=server.keepalive_timeout,
                max_connections=server.max_connections,
            ),
            clock=self.clock,
            refresh_catalogue=self.refresh_on_miss,
            limit_store=self.limit_store,
        )

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

    # ---- serving ---------------------------------------------------------

    async def serve(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        host = host or self.config.server.host
        port = self.config.server.port if port is None else port
        async with anyio.create_task_group() as startup:
            startup.start_soon(self.discover_all)
            startup.start_soon(self.warm_store)
        self._export_health()
        if self.fast and not _on_asyncio():
            # Served under trio although the config names asyncio (tests
            # pick the event loop themselves): trio has only the anyio transport.
            self._build_transport(False)
        if isinstance(self.server, FastGatewayServer):
            await self._serve_fast(self.server, host, port, task_status)
            return
        listener = await anyio.create_tcp_listener(
            local_host=host, local_port=port, reuse_port=self.reuse_port
        )
        bound = listener.extra(anyio.abc.SocketAttribute.local_address)
        address = (str(bound[0]), int(bound[1]))
        try:
            async with anyio.create_task_group() as tg:
                self._start_background(tg)
                # Connections live in their own task group, so closing the
                # listener (shutdown) does not cancel requests in flight.
                async with anyio.create_task_group() as connections:
                    with anyio.CancelScope() as self._accepting:
                        task_status.started(address)
                        await listener.serve(self.server.handle_connection, task_group=connections)
                    await self._drained.wait()
                    connections.cancel_scope.cancel()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
                await self._close_stores()

    def _start_background(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self._probe_forever)
        tg.start_soon(self.ledger.run)
        if isinstance(self.limit_store, ResilientLimitStore):
            tg.start_soon(self.limit_store.run)

    async def _close_stores(self) -> None:
        await self.upstream.aclose()
        await self.ledger.aclose()
        await self.limit_store.aclose()

    async def _serve_fast(
        self,
        server: FastGatewayServer,
        host: str,
        port: int,
        task_status: anyio.abc.TaskStatus[tuple[str, int]],
    ) -> None:
        """The asyncio.Protocol server: the loop accepts and calls back; no
        task per accept (docs/architecture.md, "The fast transport")."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            server.protocol,
            host,
            port,
            reuse_port=self.reuse_port or None,
            backlog=65535,
        )
        self._listener = listener
        bound = listener.sockets[0].getsockname()
        address = (str(bound[0]), int(bound[1]))
        try:
            async with anyio.create_task_group() as tg:
                self._start_background(tg)
                task_status.started(address)
                await self._drained.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                listener.close()
                await server.close_all()
                await self._close_stores()

    async def shutdown(self, grace: float | None = None) -> int:
        """Graceful shutdown: stop accepting, give requests in flight up to
        ``grace`` seconds (``server.shutdown_grace``) to finish, then end the
        rest with an error (an in-band error event for streams).  Their usage
        is recorded either way; ``serve`` then flushes the ledger and returns.
        Returns the number of requests that had to be cut short."""
        grace = self.config.server.shutdown_grace if grace is None else grace
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()
        self.server.begin_drain()
        with anyio.move_on_after(grace):
            await self.server.wait_quiet()
        cut = self.server.abort_in_flight(
            ServiceUnavailable("The gateway is shutting down; retry the request.", code="shutdown")
        )
        with anyio.move_on_after(5):
            await self.server.wait_quiet()
        self._drained.set()
        return cut

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
