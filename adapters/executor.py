"""Executing an Exchange's actions: the loop every HTTP adapter shares.

Theory of operation: an adapter (the ASGI app; the h11 server could too)
parses a request however its transport delivers it, then hands the whole
:class:`~sansio_gateway.http.IncomingRequest` and a :class:`ResponseChannel`
to :meth:`ActionExecutor.serve`.  The executor creates the Exchange, runs
every action it asks for -- the upstream call, limit checks and commits,
usage records, ledger queries, metrics scrapes, catalogue refreshes -- and
feeds each result back, until the Exchange is done.  The channel is the
only transport-specific part: it writes the response and tells when the
client hung up.

While a request waits on its backend, a watcher task awaits
:meth:`ResponseChannel.wait_disconnected`.  If the client goes away first,
or a write to it fails, the Exchange hears ``ClientDisconnected`` and
answers ``CancelUpstream`` (the upstream task is cancelled) and
``RecordUsage`` (accounting is never lost).  One lock serialises the two
tasks that feed the Exchange: the upstream reader and the watcher.  A
channel that is told of a hang-up by its transport (``watch_disconnect``,
the asyncio.Protocol server) needs no watcher task: its callback cancels
the upstream call instead.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, assert_never

import anyio

from sansio_gateway.actions import (
    SHARED_WRITES,
    Action,
    AssetLoaded,
    CancelUpstream,
    CatalogueRefreshed,
    CheckLimits,
    ClientDisconnected,
    CollectMetrics,
    CollectOverview,
    CommitLimits,
    ConfigReloaded,
    CountBackendAttempt,
    EndResponse,
    LimitsDecided,
    LoadAsset,
    MetricsCollected,
    OverviewCollected,
    QueryUsage,
    RecordBackendOutcome,
    RecordUsage,
    RefreshCatalogue,
    ReloadConfig,
    Result,
    SendBody,
    SendUpstream,
    StartResponse,
    UpstreamChunkReceived,
    UpstreamFailed,
    UpstreamResponseStarted,
    UsageQueried,
    UsageRecord,
)
from sansio_gateway.config import BackendConfig
from sansio_gateway.errors import GatewayError, InternalError
from sansio_gateway.exchange import Exchange, ExchangeState
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import Headers, IncomingRequest
from sansio_gateway.limits import RateHeaders
from sansio_gateway.local.live_stats import LiveStats
from sansio_gateway.local.overview_data import (
    LimitReading,
    OverviewSnapshot,
    limit_probes,
    overview_users,
)
from sansio_gateway.reload import ConfigProblem, ReloadOutcome
from sansio_gateway.rendering import error_response
from sansio_gateway.routes import surface_of

from .ledger import UsageLedger
from .limit_stores import LimitStore
from .metrics import GatewayMetrics, log_request
from .tracing import NO_TRACING, RequestTrace, Tracing
from .upstream import Deliver

__all__ = [
    "ActionExecutor",
    "ClientGone",
    "ResponseChannel",
    "Served",
    "Upstream",
    "new_request_id",
]

log = logging.getLogger("sansio_gateway.executor")


class Upstream(Protocol):
    """What the executor needs of an upstream client (adapters/upstream.py,
    adapters/fast_upstream.py)."""

    async def request(
        self, action: SendUpstream, backend: BackendConfig, deliver: Deliver
    ) -> None: ...


class ClientGone(Exception):
    """The client connection is unusable (closed or reset); raised by channels."""


class ResponseChannel(Protocol):
    """The transport side of one request: where the response goes.

    The three response methods only queue; :meth:`flush` writes what is
    queued, so the head, body and end of a whole response can leave in one
    write.  The executor flushes after each batch of actions, and before any
    action that may wait (on a store or a backend).  ``flush`` raises
    :class:`ClientGone` when the client is gone; the executor then reports
    ``ClientDisconnected`` and writes nothing more.
    """

    def start_response(self, status: int, headers: Headers) -> None:
        """Queue the status line and headers."""

    def send_body(self, data: bytes) -> None:
        """Queue one piece of the body (a whole body, or one stream chunk)."""

    def end_response(self, *, keep_alive: bool) -> None:
        """Queue the end of the response; ``keep_alive`` False asks to close after it."""

    async def flush(self) -> None:
        """Write everything queued, in order."""

    async def wait_disconnected(self) -> None:
        """Return (or raise ClientGone) once the client has hung up.

        Runs only while the request waits on its backend, and is cancelled
        when that ends; returning after the response is complete is harmless.
        """


@dataclass(frozen=True, slots=True)
class Served:
    """What became of one request, for the adapter's connection bookkeeping."""

    exchange: Exchange
    client_gone: bool


def new_request_id() -> str:
    """A fresh request id; the client's ``x-request-id`` wins when it sends one."""
    # uuid4's format (version and variant bits set) without building a UUID
    # object: this runs once per request.
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


class ActionExecutor:
    """Runs Exchanges against the real world: upstream, stores, ledger, metrics.

    One per gateway, shared by every request.  Call :meth:`serve` per
    request; :meth:`abort_in_flight` at shutdown.
    """

    def __init__(
        self,
        *,
        gateway: Gateway,
        upstream: Upstream,
        ledger: UsageLedger,
        metrics: GatewayMetrics,
        limit_store: LimitStore,
        refresh_catalogue: Callable[[], Awaitable[None]] | None = None,
        reload_config: Callable[[], Awaitable[ReloadOutcome]] | None = None,
        clock: Callable[[], float] = time.time,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.ledger = ledger
        self.metrics = metrics
        self.limit_store = limit_store
        self.refresh_catalogue = refresh_catalogue
        self.reload_config = reload_config
        self.clock = clock
        self.tracing = tracing  # a no-op unless [tracing] is on (tracing.py)
        self.active = 0
        self.live = LiveStats()  # recent traffic, for /admin/overview
        self._runs: set[_Request] = set()
        self._idle_waiters: list[anyio.Event] = []

    async def serve(self, request: IncomingRequest, channel: ResponseChannel) -> Served:
        """Answer ``request`` through ``channel``; returns once the Exchange
        is done (response written, or client gone) and its usage recorded."""
        # The request keeps this Gateway to the end, though a reload may
        # replace self.gateway meanwhile (sansio_gateway/reload.py).
        gateway = self.gateway
        exchange = gateway.exchange(new_request_id())
        job = _Request(self, exchange, channel, self.tracing.start(request), gateway)
        self.active += 1
        self.metrics.in_flight.inc()
        try:
            await job.run(request)
        finally:
            self.active -= 1
            if self.active == 0:
                self._wake_idle_waiters()
            self.metrics.in_flight.dec()
            now = self.clock()
            summary = exchange.summary(now)
            self.metrics.observe(summary)
            log_request(summary)
            self.live.observe(
                now=now,
                user=summary.user,
                model=summary.model_label,
                backend=summary.backend,
                status=summary.status,
                tokens=summary.prompt_tokens + summary.completion_tokens,
                latency=summary.latency,
            )
            job.trace.end(exchange, summary)
        return Served(exchange=exchange, client_gone=job.client_gone)

    async def wait_idle(self) -> None:
        """Return once no request is being served."""
        if self.active:
            event = anyio.Event()
            self._idle_waiters.append(event)
            await event.wait()

    def _wake_idle_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for event in waiters:
            event.set()

    def abort_in_flight(self, error: GatewayError) -> int:
        """End every request still waiting on a backend with ``error`` (an
        in-band error event for streams); returns how many were ended."""
        runs = list(self._runs)
        for run in runs:
            run.abort(error)
        return len(runs)

    # ---- the actions that do not touch the client ----------------------

    async def admit(self, action: CheckLimits) -> LimitsDecided:
        store = self.limit_store
        if getattr(store, "never_waits", False):
            # No checkpoint inside, so nothing can cancel it midway: the
            # shield's cost (a few microseconds a request) buys nothing.
            decision = await store.admit(action.key, action.specs, action.costs, action.request_id)
        else:
            # Shielded (stores answer within their decision timeout): a lease
            # the store grants must reach the Exchange, which then settles it.
            with anyio.CancelScope(shield=True):
                decision = await store.admit(
                    action.key, action.specs, action.costs, action.request_id
                )
        self.metrics.observe_decision(decision)
        self.metrics.observe_store(self.limit_store)
        return LimitsDecided(decision=decision)

    async def commit(self, action: CommitLimits) -> None:
        store = self.limit_store
        args = (action.key, action.specs, action.request_id, action.estimate, action.actual)
        try:
            if getattr(store, "never_waits", False):  # as in admit
                await store.commit(*args)
            else:
                # Shielded: a client going away must not leak its concurrency slot.
                with anyio.CancelScope(shield=True):
                    await store.commit(*args)
        except Exception:  # the store's policy already counted it; never fail a response
            log.exception(
                "%s: commit failed for request %s",
                getattr(store, "label", "rate-limit store"),
                action.request_id,
            )

    async def query_usage(self, action: QueryUsage) -> UsageQueried:
        try:
            return UsageQueried(rows=await self.ledger.query(action.query))
        except Exception as exc:  # the ledger's store is down: say so, as a 503
            # The ledger's label names its URL (password redacted) and key.
            label = getattr(self.ledger, "label", "usage ledger")
            log.warning("%s: query failed: %r", label, exc)
            return UsageQueried(rows=[], error=f"{label} is unavailable: {type(exc).__name__}")

    def record(self, record: UsageRecord) -> None:
        try:
            self.ledger.record(record)
        except Exception:  # the ledger must never take a response down with it
            log.exception("usage sink failed for request %s", record.request_id)

    async def reload(self) -> ConfigReloaded:
        if self.reload_config is None:
            problem = ConfigProblem(key=None, message="this gateway cannot reload its config")
            outcome = ReloadOutcome(
                source=None, trigger="POST /admin/reload", problems=(problem,), unavailable=True
            )
            return ConfigReloaded(outcome=outcome)
        return ConfigReloaded(outcome=await self.reload_config())

    async def refresh(self) -> CatalogueRefreshed:
        if self.refresh_catalogue is not None:
            await self.refresh_catalogue()
        return CatalogueRefreshed()

    def collect_metrics(self) -> MetricsCollected:
        self.metrics.observe_store(self.limit_store)
        body, content_type = self.metrics.render()
        return MetricsCollected(body=body, content_type=content_type)

    async def collect_overview(self) -> OverviewCollected:
        gateway = self.gateway
        users = limit_probes(
            gateway.config,
            overview_users(gateway.config, self.live.users()),
            divisor=gateway.limit_divisor,
        )
        readings: list[LimitReading] = []
        store_error = None
        for user in users:
            for probe in user.probes:
                headers: RateHeaders | None = None
                try:
                    headers = await self.limit_store.peek(probe.user, probe.specs)
                except Exception as exc:  # the page still shows everything else
                    store_error = f"{getattr(self.limit_store, 'label', 'limit store')}: {exc!r}"
                readings.append(LimitReading(probe=probe, headers=headers))
        by_user: dict[str, int] = {}
        for run in self._runs:
            name = run.exchange.identity.user
            by_user[name] = by_user.get(name, 0) + 1
        now = self.clock()
        snapshot = OverviewSnapshot(
            now=now,
            stats=self.live.snapshot(now),
            users=users,
            readings=tuple(readings),
            in_flight=self.active,
            streams=sum(r.exchange.state is ExchangeState.STREAMING for r in self._runs),
            in_flight_by_user=by_user,
            store_error=store_error,
        )
        return OverviewCollected(snapshot=snapshot)

    def count_upstream_error(self, exchange: Exchange, result: Result) -> None:
        if isinstance(result, UpstreamFailed):
            kind = result.error.code or "error"
        elif isinstance(result, UpstreamResponseStarted) and result.status >= 400:
            kind = f"http_{result.status}"
        else:
            return
        self.metrics.upstream_errors.labels(exchange.backend, kind).inc()


class _Request:
    """One Exchange being executed: its channel, upstream task and watcher."""

    def __init__(
        self,
        executor: ActionExecutor,
        exchange: Exchange,
        channel: ResponseChannel,
        trace: RequestTrace,
        gateway: Gateway,
    ) -> None:
        self.executor = executor
        self.gateway = gateway  # the one that made the Exchange
        self.exchange = exchange
        self.channel = channel
        self.trace = trace
        self.client_gone = False
        # Free almost always: the watcher takes it only when the client leaves.
        self.lock = _Lock()
        self.pushed_gone = False
        self.in_run = False
        self.run_scope: anyio.CancelScope | None = None  # upstream task and watcher
        self.upstream_scope: anyio.CancelScope | None = None  # the current attempt
        self.next_call: SendUpstream | None = None
        self.abort_error: GatewayError | None = None

    async def run(self, request: IncomingRequest) -> None:
        """Start the Exchange and execute everything it asks for."""
        try:
            actions = self.exchange.start(request, self.executor.clock())
        except Exception:
            # A bug must cost one request, never the process.
            log.exception("exchange.start failed")
            await _send_internal_error(self.channel, request.path)
            return
        try:
            await self.perform(actions)
        except anyio.get_cancelled_exc_class():
            # The server cancelled the request (its shutdown, or a framework's
            # way of saying the client left): what reached a backend is
            # still accounted for, and its limits settled.
            with anyio.CancelScope(shield=True):
                await self.abandon()
            raise

    # ---- the action loop -------------------------------------------------

    async def perform(self, actions: list[Action]) -> None:
        """Execute ``actions`` in order, feeding back the results they produce."""
        # Writes to the shared Gateway first, before any await: the Exchange
        # decided on a preview of exactly the state they produce, and no
        # other Exchange may run in between.
        for action in actions:
            if isinstance(action, SHARED_WRITES):
                self.gateway.apply_write(action, self.executor.clock())
        for index, action in enumerate(actions):
            if type(action) in _RESPONSE_TYPES:
                # The common case (a stream chunk is one SendBody): queued
                # bytes, nothing to await, nothing a cancellation could cut.
                self._respond(action)  # type: ignore[arg-type]  # one of _RESPONSE_TYPES
                continue
            try:
                if not isinstance(action, _QUEUED):
                    await self._flush()  # the client must not wait behind a store or backend
                await self._perform_one(action)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._settle(actions[index:])
                raise
        await self._flush()

    async def _settle(self, actions: list[Action]) -> None:
        """Cancelled before the end of a list: still record its usage and
        settle its limits (the rest no longer matters)."""
        for action in actions:
            if isinstance(action, RecordUsage):
                if action.ledger:
                    self.executor.record(action.record)
                self.trace.usage(action.record)
            elif isinstance(action, CommitLimits):
                await self.executor.commit(action)

    async def abandon(self) -> None:
        """The request is being cancelled: tell the Exchange the client is
        gone, and execute the bookkeeping it answers with (nothing is written)."""
        if self.exchange.state is ExchangeState.DONE:
            return
        self.client_gone = True
        await self.feed(ClientDisconnected())

    async def _perform_one(self, action: Action) -> None:
        executor = self.executor
        match action:
            case StartResponse() | SendBody() | EndResponse():
                self._respond(action)
            case RecordUsage():
                if action.ledger:
                    executor.record(action.record)
                self.trace.usage(action.record)
            case CommitLimits():
                await executor.commit(action)
            case CancelUpstream():
                self._cancel_run()
            case SendUpstream():
                if self.in_run:
                    self.next_call = action  # a retry or fallback: the run loop sends it
                else:
                    await self._run_upstream(action)
            case CheckLimits():
                self.trace.limits_checking()
                decided = await executor.admit(action)
                self.trace.limits_decided(decided)
                await self.feed(decided)
            case CollectMetrics():
                await self.feed(executor.collect_metrics())
            case CollectOverview():
                await self.feed(await executor.collect_overview())
            case LoadAsset():
                await self.feed(AssetLoaded(body=_package_file(action.name)))
            case RefreshCatalogue():
                await self.feed(await executor.refresh())
            case ReloadConfig():
                await self.feed(await executor.reload())
            case CountBackendAttempt() | RecordBackendOutcome():
                pass  # applied when the list arrived (perform)
            case QueryUsage():
                await self.feed(await executor.query_usage(action))
            case _:
                assert_never(action)

    async def feed(self, result: Result) -> None:
        await self.perform(self.exchange.handle(result, self.executor.clock()))

    def _respond(self, action: StartResponse | SendBody | EndResponse) -> None:
        # Once the client is gone its writes are skipped, but the actions
        # after them (RecordUsage, CommitLimits) still run.
        if self.client_gone:
            return
        channel = self.channel
        if isinstance(action, SendBody):  # first: the one a stream chunk is
            channel.send_body(action.data)
        elif isinstance(action, StartResponse):
            channel.start_response(action.status, action.headers)
        else:
            channel.end_response(keep_alive=action.keep_alive)

    async def _flush(self) -> None:
        if self.client_gone:
            return
        try:
            await self.channel.flush()
        except ClientGone:
            await self._client_went_away()

    async def _client_went_away(self) -> None:
        if self.client_gone:
            return
        self.client_gone = True
        # A done Exchange ignores this; otherwise it answers CancelUpstream
        # and RecordUsage.
        await self.feed(ClientDisconnected())
        self._cancel_run()

    def _cancel_run(self) -> None:
        if self.run_scope is not None:
            self.run_scope.cancel()

    # ---- the upstream call -----------------------------------------------

    async def _run_upstream(self, action: SendUpstream) -> None:
        executor = self.executor
        executor._runs.add(self)
        self.in_run = True
        watch: Callable[[Callable[[], None] | None], None] | None = getattr(
            self.channel, "watch_disconnect", None
        )
        try:
            if watch is None:
                async with anyio.create_task_group() as tg:
                    self.run_scope = tg.cancel_scope
                    tg.start_soon(self._watch_client)
                    await self._attempts(action)
                    tg.cancel_scope.cancel()
                return
            # A channel that is told of a hang-up (an asyncio.Protocol's
            # connection_lost) needs no watcher task: the callback cancels the
            # run, and the Exchange hears ClientDisconnected right after it.
            with anyio.CancelScope() as self.run_scope:
                watch(self._pushed_disconnect)
                try:
                    await self._attempts(action)
                finally:
                    watch(None)
            if self.pushed_gone:
                with anyio.CancelScope(shield=True):
                    async with self.lock:
                        if self.exchange.state is not ExchangeState.DONE:
                            await self._client_went_away()
        finally:
            self.in_run = False
            self.run_scope = None
            executor._runs.discard(self)

    async def _attempts(self, action: SendUpstream) -> None:
        executor = self.executor
        call: SendUpstream | None = action
        # The Exchange may answer a failed attempt with another SendUpstream
        # (a retry after a backoff, or a fallback target).
        while call is not None and self.abort_error is None:
            self.next_call = None
            with anyio.CancelScope() as self.upstream_scope:
                if call.delay > 0:
                    await anyio.sleep(call.delay)
                backend = self.gateway.config.backend(call.backend)
                # The attempt's span: its traceparent goes upstream with it.
                sent, deliver = self.trace.attempt(call, self.deliver)
                try:
                    await executor.upstream.request(sent, backend, deliver)
                finally:
                    self.trace.attempt_done(self.next_call)
            call = self.next_call
        if self.abort_error is not None:
            with anyio.CancelScope(shield=True):
                await self.deliver(UpstreamFailed(error=self.abort_error))

    def _pushed_disconnect(self) -> None:
        self.pushed_gone = True
        # While a result is being handled (the lock is held) its flush
        # raises ClientGone and ends the run; otherwise end it now.
        if not self.lock.locked():
            self._cancel_run()

    async def deliver(self, result: Result) -> bool:
        """The upstream client's callback: True while more results are wanted."""
        async with self.lock:
            if type(result) is not UpstreamChunkReceived:  # a chunk is never an error
                self.executor.count_upstream_error(self.exchange, result)
            try:
                actions = self.exchange.handle(result, self.executor.clock())
            except Exception:
                log.exception("exchange failed on %s", type(result).__name__)
                raise
            await self.perform(actions)
            if self.client_gone:
                return False
            return self.next_call is None and self.exchange.state is not ExchangeState.DONE

    async def _watch_client(self) -> None:
        with contextlib.suppress(ClientGone):
            await self.channel.wait_disconnected()
        # Shielded: the run may be cancelled right now, and the usage of a
        # request that reached a backend must still be recorded.
        with anyio.CancelScope(shield=True):
            async with self.lock:
                if self.exchange.state is not ExchangeState.DONE:
                    await self._client_went_away()

    def abort(self, error: GatewayError) -> None:
        """Shutdown: end the current attempt; the run reports ``error``."""
        self.abort_error = error
        if self.upstream_scope is not None:
            self.upstream_scope.cancel()


class _Lock:
    """A lock for one request's results, as anyio.Lock without a checkpoint
    when free, but without its task bookkeeping either: taken once per
    upstream read, and almost never contended."""

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters: deque[anyio.Event] = deque()

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        if not self._held:
            self._held = True
            return
        turn = anyio.Event()
        self._waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # handed the lock as we were cancelled: pass it on
                self._release()
            else:
                self._waiters.remove(turn)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # handed over: it stays held
        else:
            self._held = False


async def _send_internal_error(channel: ResponseChannel, path: str) -> None:
    """The Exchange itself failed (a bug): a plain 500 in the path's dialect."""
    status, headers, body = error_response(surface_of(path), InternalError("internal error"))
    channel.start_response(status, (*headers, (b"content-length", str(len(body)).encode())))
    channel.send_body(body)
    channel.end_response(keep_alive=False)
    with contextlib.suppress(ClientGone):
        await channel.flush()


@functools.cache
def _package_file(name: str) -> bytes | None:
    """One of the status page's files, named by the core (sansio_gateway/local/ui.py)."""
    try:
        return importlib.resources.files("sansio_gateway.local").joinpath("ui", name).read_bytes()
    except OSError:
        return None


_RESPONSE_TYPES = frozenset((StartResponse, SendBody, EndResponse))

# Actions that at most queue response bytes; anything else may wait on I/O,
# so what is queued is flushed first.
_QUEUED = (
    StartResponse,
    SendBody,
    EndResponse,
    RecordUsage,
    CancelUpstream,
    CountBackendAttempt,
    RecordBackendOutcome,
)
