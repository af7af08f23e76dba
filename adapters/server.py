"""The HTTP/1.1 server: anyio + h11, driving one Exchange per request.

A shell in the sans-IO sense: it reads bytes, feeds h11, hands whole
requests to the core, and executes the actions the Exchange returns.  The
only decisions made here are transport ones: size limits on heads and
bodies, read timeouts, keep-alive, and noticing that a client went away.

While a request waits on its backend, a watcher reads the client socket:
EOF means the client disconnected, which is reported to the Exchange (it
answers ``CancelUpstream``, and the upstream task is cancelled).  Bytes that
arrive meanwhile (a pipelined request) are handed to h11, which buffers
them for the next cycle.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import anyio
import anyio.abc
import h11

from sansio_gateway.actions import (
    Action,
    CancelUpstream,
    CatalogueRefreshed,
    CheckLimits,
    ClientDisconnected,
    CollectMetrics,
    CommitLimits,
    EndResponse,
    LimitsDecided,
    MetricsCollected,
    QueryUsage,
    RecordUsage,
    RefreshCatalogue,
    Result,
    SendBody,
    SendUpstream,
    StartResponse,
    UpstreamFailed,
    UpstreamResponseStarted,
    UsageQueried,
    UsageRecord,
)
from sansio_gateway.errors import GatewayError, InternalError, InvalidRequest, PayloadTooLarge
from sansio_gateway.exchange import Exchange, ExchangeState
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import IncomingRequest
from sansio_gateway.limits import Decision
from sansio_gateway.rendering import error_response
from sansio_gateway.routing import surface_of

from .ledger import UsageLedger
from .limit_stores import LimitStore, MemoryStore
from .metrics import GatewayMetrics, log_request
from .upstream import UpstreamClient

__all__ = ["GatewayServer", "ServerLimits"]

log = logging.getLogger("sansio_gateway.server")

READ_SIZE = 65536
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    read_timeout: float = 30.0
    write_timeout: float = 60.0
    keepalive_timeout: float = 75.0


class _ClientGone(Exception):
    """The client connection is unusable (closed or reset)."""


class _HttpFailure(Exception):
    def __init__(self, error: GatewayError, *, path: str = "") -> None:
        super().__init__(error.message)
        self.error = error
        self.path = path


@dataclass
class _Connection:
    stream: anyio.abc.ByteStream
    h11: h11.Connection
    peer: str | None = None
    closed: bool = False
    eof: bool = False
    out: bytearray = field(default_factory=bytearray)
    path: str = ""  # of the request being read, once its head is in


def new_request_id() -> str:
    return uuid.uuid4().hex


@dataclass
class GatewayServer:
    gateway: Gateway
    upstream: UpstreamClient
    ledger: UsageLedger
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    refresh_catalogue: Callable[[], Awaitable[None]] | None = None
    limit_store: LimitStore = field(default_factory=MemoryStore)
    draining: bool = False
    _idle_scopes: set[anyio.CancelScope] = field(default_factory=set)
    _runs: set[_UpstreamRun] = field(default_factory=set)
    _quiet: anyio.Event = field(default_factory=anyio.Event)

    # ---- graceful shutdown ----------------------------------------------

    def begin_drain(self) -> None:
        """Stop reading new requests: idle keep-alive connections close now,
        busy ones after their current response."""
        self.draining = True
        for scope in list(self._idle_scopes):
            scope.cancel()
        if self.active == 0:
            self._quiet.set()

    async def wait_quiet(self) -> None:
        """Return once no request is being served (after ``begin_drain``)."""
        await self._quiet.wait()

    def abort_in_flight(self, error: GatewayError) -> int:
        """End every request still waiting on a backend with ``error`` (an
        in-band error event for streams); returns how many were ended."""
        runs = list(self._runs)
        for run in runs:
            run.abort(error)
        return len(runs)

    limits: ServerLimits = field(default_factory=ServerLimits)
    clock: Callable[[], float] = time.time
    active: int = 0

    # ---- connection loop -------------------------------------------------

    async def handle_connection(self, stream: anyio.abc.ByteStream) -> None:
        conn = _Connection(
            stream=stream,
            h11=h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes),
        )
        try:
            while not conn.closed:
                request = await self._read_request(conn)
                if request is None:
                    break
                await self._serve(conn, request)
                if not self._next_cycle(conn):
                    break
        except _ClientGone:
            pass
        except Exception:
            # A bug must cost one connection, never the server.
            log.exception("connection handler failed")
        finally:
            with anyio.CancelScope(shield=True):
                if not conn.eof:
                    await self._linger(conn)
                await stream.aclose()

    async def _linger(self, conn: _Connection) -> None:
        """Half-close, then read and discard what the client still sends.

        Closing a socket with unread input makes the kernel send RST, and
        the client may lose the response we just wrote (typically a 413
        sent before the body was read).
        """
        try:
            await conn.stream.send_eof()
            with anyio.move_on_after(LINGER_SECONDS):
                seen = 0
                while seen < LINGER_BYTES:
                    seen += len(await conn.stream.receive(READ_SIZE))
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            OSError,
            AttributeError,
        ):
            pass

    def _next_cycle(self, conn: _Connection) -> bool:
        if (
            conn.closed
            or conn.h11.our_state is not h11.DONE
            or conn.h11.their_state is not h11.DONE
        ):
            return False
        conn.h11.start_next_cycle()
        return True

    # ---- reading requests -----------------------------------------------

    async def _receive_into(self, conn: _Connection) -> None:
        try:
            data = await conn.stream.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            data = b""
        except OSError:
            raise _ClientGone() from None
        if not data:
            conn.eof = True
        conn.h11.receive_data(data)

    async def _next_event(
        self, conn: _Connection
    ) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = conn.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if conn.eof:
                raise _ClientGone()
            await self._receive_into(conn)

    async def _read_request(self, conn: _Connection) -> IncomingRequest | None:
        try:
            return await self._read_request_inner(conn)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            message = "Request header fields too large" if status == 431 else f"Bad request: {exc}"
            await self._send_error_raw(conn, InvalidRequest(message, status_code=status), "")
            return None
        except _HttpFailure as failure:
            await self._send_error_raw(conn, failure.error, failure.path)
            return None

    async def _read_request_inner(self, conn: _Connection) -> IncomingRequest | None:
        # Idle keep-alive connections get the keep-alive timeout; once the
        # first byte of a request is in, the whole request must arrive
        # within read_timeout (slowloris protection).
        if self.draining:
            return None
        with anyio.move_on_after(self.limits.keepalive_timeout) as idle:
            self._idle_scopes.add(idle)  # a drain closes idle connections at once
            try:
                while conn.h11.their_state is h11.IDLE and not conn.h11.trailing_data[0]:
                    if conn.eof:
                        return None
                    await self._receive_into(conn)
            finally:
                self._idle_scopes.discard(idle)
        if idle.cancelled_caught:
            return None
        conn.path = ""
        with anyio.move_on_after(self.limits.read_timeout) as scope:
            request = await self._read_head_and_body(conn)
        if scope.cancelled_caught:
            # Rendered for the surface of the path, when the head got that far.
            err = InvalidRequest("Timed out reading the request", status_code=408)
            await self._send_error_raw(conn, err, conn.path)
            return None
        return request

    async def _read_head_and_body(self, conn: _Connection) -> IncomingRequest | None:
        event = await self._next_event(conn)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _ClientGone()
        target = event.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        # h11 bounds only an *incomplete* head; one that arrives whole in a
        # single read is checked here, request line included.
        head_size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if head_size > self.limits.max_header_bytes:
            err = InvalidRequest("Request header fields too large", status_code=431)
            raise _HttpFailure(err, path=path)  # only its surface is used, never echoed
        conn.path = path
        if _has(event.headers, b"transfer-encoding") and _has(event.headers, b"content-length"):
            # RFC 9112 6.3: ambiguous framing is how requests are smuggled.
            raise _HttpFailure(
                InvalidRequest("Content-Length together with Transfer-Encoding is not allowed"),
                path=path,
            )
        length = _content_length(event.headers)
        if length is not None and length > self.limits.max_body_bytes:
            raise _HttpFailure(self._too_large(), path=path)
        if conn.h11.client_is_waiting_for_100_continue:
            await self._send(conn, h11.InformationalResponse(status_code=100, headers=[]))
        body = await self._read_body(conn, path)
        return IncomingRequest(
            method=event.method.decode("ascii", "replace"),
            path=path,
            query=query,
            headers=tuple((k, v) for k, v in event.headers),
            body=body,
            client=conn.peer,
        )

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"Request body too large: the limit is {self.limits.max_body_bytes} bytes"
        )

    async def _read_body(self, conn: _Connection, path: str) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event(conn)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.limits.max_body_bytes:
                    raise _HttpFailure(self._too_large(), path=path)
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:
                raise _ClientGone()

    # ---- writing ---------------------------------------------------------

    async def _send(self, conn: _Connection, event: h11.Event) -> None:
        self._queue(conn, event)
        await self._flush(conn)

    def _queue(self, conn: _Connection, event: h11.Event) -> None:
        data = conn.h11.send(event)
        if data:
            conn.out += data

    async def _flush(self, conn: _Connection) -> None:
        """Write what the last batch of actions produced in one send: head,
        body and terminator of a whole response go out in one syscall.  A
        client that stops reading for write_timeout is dropped, so it cannot
        hold its request (and its concurrency slot) forever."""
        if not conn.out:
            return
        data = bytes(conn.out)
        conn.out.clear()
        try:
            with anyio.fail_after(self.limits.write_timeout):
                await conn.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, TimeoutError):
            conn.closed = True
            raise _ClientGone() from None

    async def _send_error_raw(self, conn: _Connection, err: GatewayError, path: str) -> None:
        """An error found by the transport itself; the connection closes after."""
        status, headers, body = error_response(surface_of(path), err)
        if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            conn.closed = True
            return
        all_headers = [
            *headers,
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            self._queue(
                conn, h11.Response(status_code=status, headers=all_headers, reason=_reason(status))
            )
            self._queue(conn, h11.Data(data=body))
            self._queue(conn, h11.EndOfMessage())
            await self._flush(conn)
        except (_ClientGone, h11.LocalProtocolError):
            pass
        conn.closed = True

    # ---- serving one request -------------------------------------------

    async def _serve(self, conn: _Connection, request: IncomingRequest) -> None:
        exchange = self.gateway.exchange(new_request_id())
        self.active += 1
        self.metrics.in_flight.inc()
        try:
            try:
                actions = exchange.start(request, self.clock())
            except Exception:
                log.exception("exchange.start failed")
                await self._send_error_raw(conn, InternalError("internal error"), request.path)
                return
            await self._execute(conn, exchange, actions)
            if self.draining:
                conn.closed = True
        finally:
            self.active -= 1
            if self.draining and self.active == 0:
                self._quiet.set()
            self.metrics.in_flight.dec()
            summary = exchange.summary(self.clock())
            self.metrics.observe(summary)
            log_request(summary)

    async def _execute(self, conn: _Connection, exchange: Exchange, actions: list[Action]) -> None:
        """Run a batch of actions.  If the client turns out to be gone, the
        rest of the batch's bookkeeping (usage record, limits commit) still
        runs before _ClientGone propagates: nothing is lost, no slot leaks."""
        for i, action in enumerate(actions):
            try:
                await self._execute_one(conn, exchange, action)
            except _ClientGone:
                for rest in actions[i + 1 :]:
                    if isinstance(rest, (RecordUsage, CommitLimits)):
                        await self._apply(conn, rest)
                raise
        await self._flush(conn)

    async def _execute_one(self, conn: _Connection, exchange: Exchange, action: Action) -> None:
        if not isinstance(action, _QUEUED):
            await self._flush(conn)  # the client must not wait behind a store or backend
        if isinstance(action, SendUpstream):
            await self._run_upstream(conn, exchange, action)
        elif isinstance(action, CollectMetrics):
            body, content_type = self.metrics.render()
            result = MetricsCollected(body=body, content_type=content_type)
            await self._execute(conn, exchange, exchange.handle(result, self.clock()))
        elif isinstance(action, CheckLimits):
            decided = LimitsDecided(decision=await self._admit(action))
            await self._execute(conn, exchange, exchange.handle(decided, self.clock()))
        elif isinstance(action, RefreshCatalogue):
            if self.refresh_catalogue is not None:
                await self.refresh_catalogue()
            await self._execute(
                conn, exchange, exchange.handle(CatalogueRefreshed(), self.clock())
            )
        elif isinstance(action, QueryUsage):
            rows = await self.ledger.query(action.query)
            await self._execute(
                conn, exchange, exchange.handle(UsageQueried(rows=rows), self.clock())
            )
        else:
            await self._apply(conn, action)

    async def _apply(self, conn: _Connection, action: Action) -> None:
        """Queue response bytes (flushed by the caller after the batch), or
        run a bookkeeping action."""
        if isinstance(action, StartResponse):
            self._queue(
                conn,
                h11.Response(
                    status_code=action.status,
                    headers=list(action.headers),
                    reason=_reason(action.status),
                ),
            )
        elif isinstance(action, SendBody):
            self._queue(conn, h11.Data(data=action.data))
        elif isinstance(action, EndResponse):
            self._queue(conn, h11.EndOfMessage())
            if not action.keep_alive:
                conn.closed = True
        elif isinstance(action, RecordUsage):
            self._record(action.record)
        elif isinstance(action, CommitLimits):
            await self._commit(action)
        elif isinstance(action, CancelUpstream):
            pass  # handled by the caller that owns the upstream task

    async def _admit(self, action: CheckLimits) -> Decision:
        decision = await self.limit_store.admit(
            action.key, action.specs, action.costs, action.request_id
        )
        self.metrics.observe_decision(decision)
        return decision

    async def _commit(self, action: CommitLimits) -> None:
        # Shielded: a client going away must not leak its concurrency slot.
        with anyio.CancelScope(shield=True):
            try:
                await self.limit_store.commit(
                    action.key, action.specs, action.request_id, action.estimate, action.actual
                )
            except Exception:  # the store's policy already counted it; never fail a response
                log.exception("limit commit failed for request %s", action.request_id)

    def _record(self, record: UsageRecord) -> None:
        try:
            self.ledger.record(record)
        except Exception:  # the ledger must never take a response down with it
            log.exception("usage sink failed for request %s", record.request_id)

    async def _run_upstream(
        self, conn: _Connection, exchange: Exchange, action: SendUpstream
    ) -> None:
        state = _UpstreamRun(self, conn, exchange)
        call: SendUpstream | None = action
        self._runs.add(state)
        try:
            async with anyio.create_task_group() as tg:
                state.scope = tg.cancel_scope
                tg.start_soon(state.watch_client)
                # The Exchange may answer a failed attempt with another
                # SendUpstream (a retry after a backoff, or a fallback target).
                while call is not None and state.abort_error is None:
                    state.next_call = None
                    with anyio.CancelScope() as state.upstream_scope:
                        if call.delay > 0:
                            await anyio.sleep(call.delay)
                        backend = self.gateway.config.backend(call.backend)
                        await self.upstream.request(call, backend, state.deliver)
                    call = state.next_call
                if state.abort_error is not None:
                    with anyio.CancelScope(shield=True):
                        await state.deliver(UpstreamFailed(error=state.abort_error))
                tg.cancel_scope.cancel()
        finally:
            self._runs.discard(state)
        if state.client_gone:
            conn.closed = True


class _UpstreamRun:
    """Feeds upstream results and a client disconnect into one Exchange."""

    def __init__(self, server: GatewayServer, conn: _Connection, exchange: Exchange) -> None:
        self.server = server
        self.conn = conn
        self.exchange = exchange
        self.scope: anyio.CancelScope | None = None
        self.client_gone = False
        self.lock = anyio.Lock()
        self.next_call: SendUpstream | None = None
        self.upstream_scope: anyio.CancelScope | None = None
        self.abort_error: GatewayError | None = None

    def abort(self, error: GatewayError) -> None:
        self.abort_error = error
        if self.upstream_scope is not None:
            self.upstream_scope.cancel()

    async def deliver(self, result: Result) -> bool:
        async with self.lock:
            return await self._deliver(result)

    async def _deliver(self, result: Result) -> bool:
        server = self.server
        if isinstance(result, UpstreamFailed):
            server.metrics.upstream_errors.labels(
                self.exchange.backend, result.error.code or "error"
            ).inc()
        elif isinstance(result, UpstreamResponseStarted) and result.status >= 400:
            server.metrics.upstream_errors.labels(
                self.exchange.backend, f"http_{result.status}"
            ).inc()
        try:
            actions = self.exchange.handle(result, server.clock())
        except Exception:
            log.exception("exchange failed on %s", type(result).__name__)
            raise
        done = 0
        try:
            for action in actions:
                done += 1
                if isinstance(action, CancelUpstream):
                    self._cancel()
                elif isinstance(action, SendUpstream):
                    self.next_call = action
                else:
                    if not isinstance(action, _QUEUED):
                        await server._flush(self.conn)
                    await server._apply(self.conn, action)
            await server._flush(self.conn)
        except _ClientGone:
            for rest in actions[done:]:  # the batch's bookkeeping still runs
                if isinstance(rest, (RecordUsage, CommitLimits)):
                    await server._apply(self.conn, rest)
            return await self._client_went_away()
        return self.next_call is None and self.exchange.state is not ExchangeState.DONE

    async def _client_went_away(self) -> bool:
        if not self.client_gone:
            self.client_gone = True
            # Nothing more goes to the client; the bookkeeping still runs --
            # above all the limits commit, which releases the concurrency slot.
            for action in self.exchange.handle(ClientDisconnected(), self.server.clock()):
                if isinstance(action, RecordUsage):
                    self.server._record(action.record)
                elif isinstance(action, CommitLimits):
                    await self.server._commit(action)
        self._cancel()
        return False

    def _cancel(self) -> None:
        self.client_gone = self.client_gone or self.exchange.status == 499
        if self.scope is not None:
            self.scope.cancel()

    async def watch_client(self) -> None:
        conn = self.conn
        limits = self.server.limits
        bound = limits.max_body_bytes + limits.max_header_bytes
        while not conn.eof:
            try:
                await self.server._receive_into(conn)
            except _ClientGone:
                break
            if len(conn.h11.trailing_data[0]) > bound:
                # More pipelined input than one request may hold: stop
                # reading (memory stays bounded) and close after this answer.
                conn.closed = True
                return
        with anyio.CancelScope(shield=True):
            async with self.lock:
                if self.exchange.state is not ExchangeState.DONE:
                    await self._client_went_away()


def _has(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(key == name for key, _ in headers)


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# Actions that only queue response bytes; anything else may wait on I/O,
# so queued bytes are flushed first.
_QUEUED = (StartResponse, SendBody, EndResponse, RecordUsage, CancelUpstream)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""
