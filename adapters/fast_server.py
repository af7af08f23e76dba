"""The fast HTTP/1.1 server for asyncio: one ``asyncio.Protocol`` per client.

The same transport decisions as :mod:`sansio_gateway.adapters.server` (the
anyio server; it stays for trio): size limits on heads and bodies, read and
write timeouts, keep-alive, pipelined bytes kept for the next cycle, a
lingering close, refusal past ``max_connections``.  What changes is how
bytes move (docs/architecture.md, "The fast transport"):

- bytes arrive by callback (``data_received``) straight into h11; one task
  per connection reads requests and hands each to the shared
  :class:`~sansio_gateway.adapters.executor.ActionExecutor`;
- a client hanging up is pushed by ``connection_lost``/``eof_received`` to
  the request being served, so no watcher task per request reads the socket;
- a flush only schedules one ``transport.write`` for the current turn of the
  event loop, so every SSE/NDJSON piece produced from one upstream read
  leaves in one write;
- a client that reads slowly pauses the gateway (``pause_writing``), which
  stops the upstream read, which pauses the backend's socket: memory stays
  bounded by the transports' high-water marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11

from sansio_gateway.errors import (
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    ServiceUnavailable,
)
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import Headers, IncomingRequest, Surface
from sansio_gateway.rendering import error_response
from sansio_gateway.routing import surface_of

from .executor import ActionExecutor, ClientGone
from .ledger import UsageLedger
from .limit_stores import LimitStore, MemoryStore
from .metrics import GatewayMetrics
from .server import (
    LINGER_BYTES,
    LINGER_SECONDS,
    REFUSING_LINGER_MAX,
    ServerLimits,
    _content_length,
    _has,
    _reason,
)
from .upstream import UpstreamClient

__all__ = ["FastGatewayServer"]

log = logging.getLogger("sansio_gateway.server")


class _Gone(Exception):
    """The client connection is unusable."""


class _Failure(Exception):
    def __init__(self, error: GatewayError, *, path: str = "") -> None:
        super().__init__(error.message)
        self.error = error
        self.path = path


class _TimedOut(Exception):
    pass


@dataclass
class FastGatewayServer:
    """Same interface as :class:`~sansio_gateway.adapters.server.GatewayServer`;
    :meth:`protocol` is the factory for ``loop.create_server``."""

    gateway: Gateway
    upstream: UpstreamClient
    ledger: UsageLedger
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    refresh_catalogue: Callable[[], Awaitable[None]] | None = None
    limit_store: LimitStore = field(default_factory=MemoryStore)
    limits: ServerLimits = field(default_factory=ServerLimits)
    clock: Callable[[], float] = time.time
    draining: bool = False
    connections: int = 0
    executor: ActionExecutor = field(init=False)
    _refusing: int = 0
    _open: set[_ClientProtocol] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.executor = ActionExecutor(
            gateway=self.gateway,
            upstream=self.upstream,
            ledger=self.ledger,
            metrics=self.metrics,
            limit_store=self.limit_store,
            refresh_catalogue=self.refresh_catalogue,
            clock=self.clock,
        )

    def protocol(self) -> asyncio.Protocol:
        return _ClientProtocol(self)

    # ---- graceful shutdown (as GatewayServer) ----------------------------

    def begin_drain(self) -> None:
        self.draining = True
        for conn in list(self._open):
            conn.wake()  # an idle keep-alive connection closes now

    async def wait_quiet(self) -> None:
        await self.executor.wait_idle()

    def abort_in_flight(self, error: GatewayError) -> int:
        return self.executor.abort_in_flight(error)

    @property
    def active(self) -> int:
        return self.executor.active

    async def close_all(self) -> None:
        """After the drain: whatever is still open is cut, and its task
        finishes (a cancelled request still records its usage)."""
        tasks = []
        for conn in list(self._open):
            conn.kill()
            if conn.task is not None:
                tasks.append(conn.task)
        if tasks:
            await asyncio.wait(tasks, timeout=5)


class _ClientProtocol(asyncio.Protocol):
    """One client connection; its task serves requests one after another."""

    def __init__(self, server: FastGatewayServer) -> None:
        self.server = server
        limits = server.limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.eof = False
        self.closed = False  # close after the current response
        self.refused = False
        self.counted = False
        self.lingering = False
        self.linger_seen = 0
        self.out = bytearray()
        self.write_scheduled = False
        self.write_paused = False
        self.read_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.on_gone: Callable[[], None] | None = None  # the executor's watch
        self.path = ""
        self.bound = limits.max_body_bytes + limits.max_header_bytes

    # ---- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        server._open.add(self)
        if server.connections >= server.limits.max_connections:
            self.refused = True
            self.task = self.loop.create_task(self._refuse())
            return
        server.connections += 1
        self.counted = True
        self.task = self.loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.linger_seen += len(data)
            if self.linger_seen >= LINGER_BYTES:
                self.wake()
            return
        if self.refused:
            return
        self.h11.receive_data(data)
        if len(self.h11.trailing_data[0]) > self.bound and self.h11.their_state is not h11.IDLE:
            # Bytes past one request's worth while a request is served (a
            # pipelined flood): stop reading; the connection closes after
            # this answer, as the anyio server does.
            self.closed = True
            self._pause_reading()
        self.wake()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.lingering and not self.refused:
            self.h11.receive_data(b"")
        self._gone_while_served()
        self.wake()
        return True  # keep the write side: the task decides when to close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.eof = True
        self.server._open.discard(self)
        if self.counted:
            self.counted = False
            self.server.connections -= 1
        self._gone_while_served()
        self.wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def _gone_while_served(self) -> None:
        # EOF or loss while a request waits on its backend: the client left
        # (the anyio server's watcher reads the same EOF).
        if self.on_gone is not None:
            callback, self.on_gone = self.on_gone, None
            callback()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.lost:
            self.read_paused = False
            self.transport.resume_reading()

    # ---- waiting for bytes ---------------------------------------------------

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, deadline: float) -> None:
        """Until a callback wakes us (raises _TimedOut past ``deadline``)."""
        remaining = deadline - self.loop.time()
        if remaining <= 0:
            raise _TimedOut()
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(remaining, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def kill(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self.task is not None:
            self.task.cancel()

    # ---- writing ---------------------------------------------------------------

    def queue(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self.out += data

    def schedule_write(self) -> None:
        # Everything queued in this turn of the loop leaves in one write.
        if self.out and not self.write_scheduled:
            self.write_scheduled = True
            self.loop.call_soon(self.write_out)

    def write_out(self) -> None:
        self.write_scheduled = False
        if self.out and not self.lost and self.transport is not None:
            self.transport.write(bytes(self.out))
        self.out.clear()

    async def flush(self) -> None:
        """Schedule the write; if the client's buffer is full, wait until it
        drains (a client that reads nothing for write_timeout is dropped)."""
        if self.lost:
            raise _Gone()
        self.schedule_write()
        if self.write_paused:
            self.write_out()
            waiter = self.drain_waiter = self.loop.create_future()
            timer = self.loop.call_later(self.server.limits.write_timeout, _expire, waiter)
            try:
                await waiter
            except _TimedOut:
                self.closed = True
                if self.transport is not None:
                    self.transport.abort()
                raise _Gone() from None
            finally:
                timer.cancel()
                self.drain_waiter = None
            if self.lost:
                raise _Gone()

    # ---- the connection's task ---------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self.closed and not self.lost:
                request = await self._read_request()
                if request is None:
                    break
                channel = _Channel(self)
                served = await self.server.executor.serve(request, channel)
                if served.client_gone or self.server.draining:
                    self.closed = True
                h = self.h11
                if self.closed or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                    break
                h.start_next_cycle()
        except _Gone:
            pass
        except Exception:
            log.exception("connection handler failed")
        finally:
            await self._finish()

    async def _finish(self) -> None:
        self.write_out()
        if self.lost or self.transport is None:
            return
        if not self.eof:
            await self._linger()
        self.transport.close()

    async def _linger(self) -> None:
        """Half-close, then read and discard what the client still sends:
        closing with unread input makes the kernel send RST, and the client
        may lose the response just written (a 413 before the body was read)."""
        transport = self.transport
        assert transport is not None
        self.lingering = True
        self.linger_seen = len(self.h11.trailing_data[0])
        self._resume_reading()
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if transport.can_write_eof():
                transport.write_eof()
        deadline = self.loop.time() + LINGER_SECONDS
        with contextlib.suppress(_TimedOut):
            while not self.eof and self.linger_seen < LINGER_BYTES:
                await self._wait(deadline)

    async def _refuse(self) -> None:
        """Past ``max_connections``: a 503 without reading the request."""
        server = self.server
        err = ServiceUnavailable(
            "The gateway has too many open connections; retry shortly.",
            code="too_many_connections",
            retry_after=1,
        )
        status, headers, body = error_response(Surface.GATEWAY, err)
        head = [f"HTTP/1.1 {status} {_reason(status).decode()}".encode()]
        head += [k + b": " + v for k, v in headers]
        head += [b"content-length: " + str(len(body)).encode(), b"connection: close"]
        self.out += b"\r\n".join(head) + b"\r\n\r\n" + body
        server._refusing += 1
        try:
            self.write_out()
            # A flood must not hold a descriptor per refused connection for
            # long: past a few dozen at once they are closed at once.
            if server._refusing <= REFUSING_LINGER_MAX and not self.lost:
                await self._linger()
        finally:
            server._refusing -= 1
            if self.transport is not None:
                self.transport.close()

    # ---- reading requests ----------------------------------------------------------

    async def _read_request(self) -> IncomingRequest | None:
        try:
            return await self._read_request_inner()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            message = "Request header fields too large" if status == 431 else f"Bad request: {exc}"
            self._send_error(InvalidRequest(message, status_code=status), "")
            return None
        except _Failure as failure:
            self._send_error(failure.error, failure.path)
            return None

    async def _read_request_inner(self) -> IncomingRequest | None:
        server = self.server
        limits = server.limits
        self._resume_reading()
        # Idle keep-alive connections get the keep-alive timeout; once the
        # first byte of a request is in, the whole request must arrive within
        # read_timeout (slowloris protection).
        idle_deadline = self.loop.time() + limits.keepalive_timeout
        while self.h11.their_state is h11.IDLE and not self.h11.trailing_data[0]:
            if self.eof or server.draining:
                return None
            try:
                await self._wait(idle_deadline)
            except _TimedOut:
                return None
        if server.draining:
            return None
        self.path = ""
        deadline = self.loop.time() + limits.read_timeout
        try:
            return await self._read_head_and_body(deadline)
        except _TimedOut:
            err = InvalidRequest("Timed out reading the request", status_code=408)
            self._send_error(err, self.path)
            return None

    async def _next_event(self, deadline: float) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if self.eof:
                raise _Gone()
            await self._wait(deadline)

    async def _read_head_and_body(self, deadline: float) -> IncomingRequest | None:
        limits = self.server.limits
        event = await self._next_event(deadline)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _Gone()
        target = event.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        # h11 bounds only an *incomplete* head; one that arrives whole in a
        # single read is checked here, request line included.
        head_size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if head_size > limits.max_header_bytes:
            raise _Failure(
                InvalidRequest("Request header fields too large", status_code=431), path=path
            )
        self.path = path
        if _has(event.headers, b"transfer-encoding") and _has(event.headers, b"content-length"):
            # RFC 9112 6.3: ambiguous framing is how requests are smuggled.
            raise _Failure(
                InvalidRequest("Content-Length together with Transfer-Encoding is not allowed"),
                path=path,
            )
        method = event.method.decode("ascii", "replace")
        length = _content_length(event.headers)
        if length != 0 and (length is not None or _has(event.headers, b"transfer-encoding")):
            # A body is coming: the core judges the head (auth) before a byte
            # of it is read.
            refusal = self.server.gateway.refuse_head(method, path, tuple(event.headers))
            if refusal is not None:
                raise _Failure(refusal, path=path)
        if length is not None and length > limits.max_body_bytes:
            raise _Failure(_too_large(limits), path=path)
        if self.h11.client_is_waiting_for_100_continue:
            self.queue(h11.InformationalResponse(status_code=100, headers=[]))
            self.write_out()
        parts: list[bytes] = []
        size = 0
        while True:
            body_event = await self._next_event(deadline)
            if isinstance(body_event, h11.Data):
                size += len(body_event.data)
                if size > limits.max_body_bytes:
                    raise _Failure(_too_large(limits), path=path)
                parts.append(body_event.data)
            elif isinstance(body_event, h11.EndOfMessage):
                break
            else:
                raise _Gone()
        return IncomingRequest(
            method=method,
            path=path,
            query=query,
            headers=tuple((k, v) for k, v in event.headers),
            body=b"".join(parts),
            client=self.peer,
        )

    def _send_error(self, err: GatewayError, path: str) -> None:
        """An error found by the transport itself; the connection closes after."""
        self.closed = True
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status, headers, body = error_response(surface_of(path), err)
        all_headers = [
            *headers,
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            self.queue(
                h11.Response(status_code=status, headers=all_headers, reason=_reason(status))
            )
            self.queue(h11.Data(data=body))
            self.queue(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.out.clear()
        self.write_out()


class _Channel:
    """The executor's view of one fast connection (adapters/executor.py)."""

    __slots__ = ("conn",)

    def __init__(self, conn: _ClientProtocol) -> None:
        self.conn = conn

    def start_response(self, status: int, headers: Headers) -> None:
        self.conn.queue(
            h11.Response(status_code=status, headers=list(headers), reason=_reason(status))
        )

    def send_body(self, data: bytes) -> None:
        self.conn.queue(h11.Data(data=data))

    def end_response(self, *, keep_alive: bool) -> None:
        self.conn.queue(h11.EndOfMessage())
        if not keep_alive:
            self.conn.closed = True

    async def flush(self) -> None:
        try:
            await self.conn.flush()
        except _Gone:
            raise ClientGone() from None

    def watch_disconnect(self, callback: Callable[[], None] | None) -> None:
        """Push instead of a watcher task: ``callback`` runs once if the
        client hangs up while it is set (adapters/executor.py)."""
        conn = self.conn
        if callback is not None and (conn.lost or conn.eof):
            callback()
            return
        conn.on_gone = callback

    async def wait_disconnected(self) -> None:
        """Only for executors that do not use :meth:`watch_disconnect`."""
        conn = self.conn
        while not (conn.lost or conn.eof):
            with contextlib.suppress(_TimedOut):
                await conn._wait(conn.loop.time() + 3600)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_TimedOut())


def _too_large(limits: ServerLimits) -> GatewayError:
    return PayloadTooLarge(f"Request body too large: the limit is {limits.max_body_bytes} bytes")
