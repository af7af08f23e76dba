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
from collections.abc import Callable, Mapping
from dataclasses import replace
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
from sansio_gateway.reload import ConfigProblem, ReloadOutcome, ReloadPlan, plan_reload

from .executor import ActionExecutor
from .fast_upstream import FastUpstreamClient
from .front import ServerLimits, TransportFront
from .ledger import UsageLedger, open_ledger
from .limit_stores import ResilientLimitStore, open_limit_store
from .metrics import GatewayMetrics
from .plugins import load_registry
from .tracing import open_tracing, tracing_problem
from .upstream import TRANSPORT_ERRORS, UpstreamClient, map_upstream_exception
from .upstream_pool import Origin, origin_of

__all__ = [
    "STARTUP_CHECK",
    "ConfigSource",
    "Wiring",
    "checked_config",
    "load_config",
    "with_overrides",
]

log = logging.getLogger("sansio_gateway")


_BREAKER_GAUGE = {"closed": 0, "half_open": 1, "open": 2}
# The reload `serve` runs once it listens, for a change to the file made
# while it started (a SIGHUP then found no handler yet): quiet when nothing changed.
STARTUP_CHECK = "startup check"


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


class ConfigSource:
    """Where the running config comes from, so a reload reads it the same way:
    the file (None: the no-config defaults), the command line's ``[server]``
    overrides (``serve --host/--port/--runtime/--transport``), where the
    gateway listens (None under ASGI) and ``--allow-anonymous``."""

    def __init__(
        self,
        path: str | None,
        *,
        overrides: Mapping[str, object] | None = None,
        bind_host: str | None = None,
        allow_anonymous: bool = False,
    ) -> None:
        self.path = path
        self.overrides = dict(overrides or {})
        self.bind_host = bind_host
        self.allow_anonymous = allow_anonymous

    def load(self) -> GatewayConfig:
        """The config as the file and the environment say now, overrides applied."""
        return with_overrides(load_config(self.path), self.overrides)


def with_overrides(config: GatewayConfig, overrides: Mapping[str, object]) -> GatewayConfig:
    if not overrides:
        return config
    server = config.server.model_copy(update=dict(overrides))
    return config.model_copy(update={"server": server})


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
        source: ConfigSource | None = None,
    ) -> None:
        self.config = config
        # Where a reload reads the config again (None: nowhere, the config
        # was handed over as an object).
        self.source = source
        self.worker_index = worker_index
        self.generation = 1  # the config in force: 1 at start, +1 per reload that changed it
        self.loaded_at = clock()
        # Made in the event loop that serves (anyio binds them to it).
        self._probe_soon: anyio.Event | None = None
        self._reloading: anyio.Lock | None = None
        # Under --workers, only worker 0 prints the startup listing and clashes.
        self.announce = worker_index == 0
        self._clashes: dict[str, tuple[str, ...]] = {}
        self.worker_count = worker_count
        memory_store = config.store.url.startswith("memory")
        # With the memory store every worker enforces 1/N of each limit.
        self._limit_divisor = worker_count if memory_store else 1
        self.gateway = Gateway(
            config,
            random=random.random,
            limit_divisor=self._limit_divisor,
            registry=load_registry(),
        )
        self.clock = clock
        self._describe_process()
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
            reload_config=self.reload_on_request,
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
            self.gateway.record_discovery_failure(name, str(error), self.clock(), probed=backend)
            log.warning("backend %s (%s): discovery failed: %s", name, backend.url, error)
            return
        latency = time.perf_counter() - started
        # A reload may have swapped the Gateway meanwhile: the current one
        # drops a probe of a backend it no longer has as probed.
        self.gateway.record_discovery(name, models, self.clock(), latency=latency, probed=backend)

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
            # A reload wakes it early: new backends are discovered at once.
            self._probe_soon = anyio.Event()
            with anyio.move_on_after(self.config.server.health_interval):
                await self._probe_soon.wait()
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

    # ---- reloading -------------------------------------------------------

    def _describe_process(self) -> None:
        self.gateway.process = {
            "pid": os.getpid(),
            "worker": self.worker_index,
            "workers": self.worker_count,
            "config": {
                "source": self.source.path if self.source else None,
                "generation": self.generation,
                "loaded_at": self.loaded_at,
            },
        }

    async def reload(self, trigger: str, *, tell_workers: bool = False) -> ReloadOutcome:
        """Read the config again and serve new requests with it, if the
        core's plan accepts it (sansio_gateway/reload.py); requests in
        flight finish on the Gateway they started with.  ``tell_workers``:
        have the other ``--workers`` reload too.  Logs the outcome, and
        returns it; never raises (a failed reload leaves the gateway as it was)."""
        if self._reloading is None:
            self._reloading = anyio.Lock()
        try:
            async with self._reloading:  # one at a time, each planned against the last
                # Validating is the slow part (about 50 ms for 1000 keys): off the loop.
                loaded = await anyio.to_thread.run_sync(self._load)
                before = self.config
                # From here to the swap, no await: every request sees one config or the other.
                outcome = self._reload(trigger, loaded)
                if outcome.applied and outcome.plan is not None:
                    await self.upstream.retire(_gone_origins(before, self.config))
        except Exception:  # a bug must cost the reload, never the process
            log.exception("config reload (%s) failed", trigger)
            problem = ConfigProblem(key=None, message="internal error; see the gateway's log")
            outcome = ReloadOutcome(
                source=self.source.path if self.source else None,
                trigger=trigger,
                problems=(problem,),
                generation=self.generation,
            )
        if outcome.applied and tell_workers:
            outcome = replace(outcome, workers_told=self.tell_workers())
        if outcome.applied:
            assert outcome.plan is not None
            quiet = not outcome.plan.changed and trigger == STARTUP_CHECK
            log.log(logging.DEBUG if quiet else logging.INFO, "%s", outcome.describe())
        else:
            log.error("%s", outcome.describe())
        return outcome

    async def reload_on_request(self) -> ReloadOutcome:
        """``POST /admin/reload``: this process, then the other workers."""
        return await self.reload("POST /admin/reload", tell_workers=True)

    def tell_workers(self) -> bool:
        """Ask the other ``--workers`` processes to reload; True if asked
        (``GatewayApp`` can, under ``serve --workers``)."""
        return False

    def _load(self) -> GatewayConfig | ConfigError | None:
        """The config as the source says now, its error, or None without a source."""
        if self.source is None:
            return None
        try:
            return self.source.load()
        except ConfigError as exc:
            return exc

    def _reload(self, trigger: str, loaded: GatewayConfig | ConfigError | None) -> ReloadOutcome:
        source = self.source
        if source is None or loaded is None:
            problem = ConfigProblem(
                key=None,
                message="this gateway was given its config as an object, not a file:"
                " there is nothing to read again",
            )
            return ReloadOutcome(
                source=None,
                trigger=trigger,
                problems=(problem,),
                generation=self.generation,
                unavailable=True,
            )
        where = source.path or "(defaults)"
        try:
            if isinstance(loaded, ConfigError):
                raise loaded
            config = loaded
            gateway = Gateway(
                config,
                random=random.random,
                limit_divisor=self._limit_divisor,
                registry=self.gateway.registry,
            )
        except ConfigError as exc:
            return ReloadOutcome.refused(
                exc, source=where, trigger=trigger, generation=self.generation
            )
        plan = plan_reload(
            self.config,
            config,
            bind_host=source.bind_host,
            allow_anonymous=source.allow_anonymous,
        )
        if plan.problems:
            return ReloadOutcome(
                source=where,
                trigger=trigger,
                plan=plan,
                problems=plan.problems,
                generation=self.generation,
            )
        if plan.changed:
            gateway.carry_over(self.gateway, plan)
            self._swap(config, gateway, plan)
        return ReloadOutcome(source=where, trigger=trigger, plan=plan, generation=self.generation)

    def _swap(self, config: GatewayConfig, gateway: Gateway, plan: ReloadPlan) -> None:
        """New requests get ``gateway`` from now on (no await in between:
        every transport and the executor switch at once)."""
        self.config = config
        self.gateway = gateway
        self.executor.gateway = gateway
        self.front.gateway = gateway
        self.front.limits = ServerLimits.from_config(config.server)
        self.generation += 1
        self.loaded_at = self.clock()
        self._describe_process()
        for name in (*plan.backends.removed, *plan.backends.replaced):
            self.metrics.forget_backend(name)
        self._export_health()
        if self._probe_soon is not None:
            self._probe_soon.set()

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


def _gone_origins(before: GatewayConfig, after: GatewayConfig) -> set[Origin]:
    """The servers a reload left no backend at: their pooled connections go."""
    still = {origin_of(b.url)[0] for b in after.backends}
    return {origin_of(b.url)[0] for b in before.backends} - still
