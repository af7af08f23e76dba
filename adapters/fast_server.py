"""The fast HTTP/1.1 server for asyncio: one ``asyncio.Protocol`` per client.

The same transport decisions as :mod:`sansio_gateway.adapters.server` (the
anyio server; it stays for trio): size limits on heads and bodies, read and
write timeouts, keep-alive, pipelined bytes kept for the next cycle, a
lingering close, refusal past ``max_connections``.  What changes is how
bytes move (docs/architecture.md, "The fast transport"):

- bytes arrive by callback (``data_received``) straight into the request
  reader: httptools when installed (adapters/fast_http.py), which hands
  every head it would not read exactly as h11 does to h11 for the rest of
  the connection; one task per connection reads requests and hands each to
  the shared
  :class:`~sansio_gateway.adapters.executor.ActionExecutor`;
- a client hanging up is pushed by ``connection_lost``/``eof_received`` to
  the request being served, so no watcher task per request reads the socket;
- a flush only schedules one ``transport.write`` for the current turn of the
  event loop, so every SSE/NDJSON piece produced from one upstream read
  leaves in one write; the pieces of a chunked body are framed here, and
  the heads too when httptools read the request (as h11 would write them);
- a client that reads slowly pauses the gateway (``pause_writing``), which
  stops the upstream read, which pauses the backend's socket: memory stays
  bounded by the transports' high-water marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import h11

from sansio_gateway.http import Headers, IncomingRequest
from sansio_gateway.transport import (
    content_length,
    has_header,
    header_fields_too_large,
    malformed_request,
    read_timed_out,
    too_many_connections,
)

from .executor import ClientGone
from .fast_http import (
    HTTPTOOLS,
    USE_H11,
    Marker,
    RequestHead,
    RequestReader,
    response_head,
)
from .front import Refused, ServerLimits, TransportFront, reason_phrase
from .server import LINGER_BYTES, LINGER_SECONDS, REFUSING_LINGER_MAX

__all__ = ["FastGatewayServer"]

log = logging.getLogger("sansio_gateway.server")


class _Gone(Exception):
    """The client connection is unusable."""


class _TimedOut(Exception):
    pass


@dataclass
class FastGatewayServer:
    """The asyncio.Protocol transport of a
    :class:`~sansio_gateway.adapters.front.TransportFront`, with the interface
    of :class:`~sansio_gateway.adapters.server.GatewayServer`; :meth:`protocol`
    is the factory for ``loop.create_server``."""

    front: TransportFront
    draining: bool = False
    use_httptools: bool = HTTPTOOLS  # False: h11 reads every request
    connections: int = 0  # open client connections being served
    _refusing: int = 0  # connections past max_connections, being answered 503
    _open: set[_ClientProtocol] = field(default_factory=set)

    @property
    def limits(self) -> ServerLimits:
        return self.front.limits

    def protocol(self) -> asyncio.Protocol:
        return _ClientProtocol(self)

    # ---- graceful shutdown (as GatewayServer) ----------------------------

    def begin_drain(self) -> None:
        """Stop reading new requests: idle keep-alive connections close now,
        busy ones after their current response."""
        self.draining = True
        for conn in list(self._open):
            conn.wake()

    async def wait_quiet(self) -> None:
        await self.front.wait_idle()

    def abort_in_flight(self) -> int:
        return self.front.abort_in_flight()

    @property
    def active(self) -> int:
        return self.front.active

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
        # While ``reader`` is set, it reads the requests and h11 is unused;
        # once it answers USE_H11, h11 gets its bytes and the connection.
        self.reader: RequestReader | None = (
            RequestReader(limits.max_header_bytes) if server.use_httptools else None
        )
        self.busy = False  # a request read by ``reader`` is being served
        self.keep_alive = True  # of the request read by ``reader``
        self.ended = False  # its response was ended (h11's DONE)
        self.body_left: int | None = None  # of the response; None: chunked
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
        self.chunked = False  # the response being sent is chunked: its pieces are framed here
        self.write_scheduled = False
        self.write_paused = False
        self.read_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.on_gone: Callable[[], None] | None = None  # the executor's watch
        self.path = ""
        self.method = ""  # of the request being served
        self.bound = limits.max_body_bytes + limits.max_header_bytes
        self.read_deadline = math.inf  # of the request being read

    # ---- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
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
        reader = self.reader
        if reader is not None:
            reader.buf += data
            if self.busy and len(reader.buf) > self.bound:
                self.closed = True  # a pipelined flood, as below
                self._pause_reading()
            self.wake()
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
        if not self.lingering and not self.refused and self.reader is None:
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
        timer = None if remaining == math.inf else self.loop.call_later(remaining, _expire, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
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
                served = await self.server.front.serve(request, channel)
                if served.client_gone or self.server.draining:
                    self.closed = True
                if self.reader is not None:
                    self.busy = False
                    if self.closed or not self.keep_alive or not self.ended:
                        break
                    continue
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
        self.linger_seen = len(
            self.reader.buf if self.reader is not None else self.h11.trailing_data[0]
        )
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
        self.out += server.front.raw_refusal(too_many_connections())
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
            self._send_refusal(Refused(malformed_request(exc.error_status_hint, str(exc)), ""))
            return None
        except Refused as refused:
            # A refusal without a path is rendered for the surface of the
            # path, when the head got that far.
            self._send_refusal(refused)
            return None

    async def _read_request_inner(self) -> IncomingRequest | None:
        server = self.server
        limits = server.limits
        self._resume_reading()
        # Idle keep-alive connections get the keep-alive timeout; once the
        # first byte of a request is in, the whole request must arrive within
        # read_timeout (the front's reading deadline: slowloris protection).
        idle_deadline = self.loop.time() + limits.keepalive_timeout
        while not self._pending():
            if self.eof or server.draining:
                return None
            try:
                await self._wait(idle_deadline)
            except _TimedOut:
                return None
        if server.draining:
            return None
        self.path = self.method = ""
        # The front's reading() deadline, as the timer of the waits for
        # bytes: an anyio cancel scope per request costs more than the rest
        # of reading it (docs/architecture.md, "The fast transport").
        self.read_deadline = self.loop.time() + limits.read_timeout
        try:
            if self.reader is not None:
                request = await self._read_with_reader(self.reader)
                if not isinstance(request, Marker):
                    return request
            return await self._read_head_and_body()
        except _TimedOut:
            raise Refused(read_timed_out(), None) from None
        finally:
            self.read_deadline = math.inf

    def _pending(self) -> bool:
        """Some bytes of a request are in."""
        if self.reader is not None:
            return bool(self.reader.buf)
        return self.h11.their_state is not h11.IDLE or bool(self.h11.trailing_data[0])

    async def _read_with_reader(self, reader: RequestReader) -> IncomingRequest | Marker:
        """A request read by httptools, or USE_H11 once h11 has its bytes."""
        while True:
            head = reader.next_head()
            if isinstance(head, RequestHead):
                break
            if head is USE_H11 or self.eof:
                # h11 reads what httptools would not read as it does, and
                # an EOF inside a head: its refusals and features, exactly.
                self.reader = None
                self.h11.receive_data(bytes(reader.buf))
                if self.eof:
                    self.h11.receive_data(b"")
                return USE_H11
            await self._wait(self.read_deadline)
        front = self.server.front
        self.busy = True
        self.ended = False
        self.keep_alive = head.keep_alive
        target = head.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        head_size = len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers)
        if head_size > front.limits.max_header_bytes:
            raise Refused(header_fields_too_large(), path)
        self.path = path
        headers: Headers = tuple(head.headers)
        method = self.method = head.method.decode("ascii", "replace")
        front.check_head(method, path, headers, body_follows=head.length != 0)
        body = await front.read_body(self._reader_body_piece, path)
        return IncomingRequest(
            method=method, path=path, query=query, headers=headers, body=body, client=self.peer
        )

    async def _reader_body_piece(self) -> bytes | None:
        reader = self.reader
        assert reader is not None
        while True:
            piece = reader.next_body()
            if not isinstance(piece, Marker):
                return piece
            if self.eof:
                # What h11 says of a body cut short by the client's EOF.
                raise h11.RemoteProtocolError("peer unexpectedly closed", error_status_hint=400)
            await self._wait(self.read_deadline)

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if self.eof:
                raise _Gone()
            await self._wait(self.read_deadline)

    async def _read_head_and_body(self) -> IncomingRequest | None:
        front = self.server.front
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _Gone()
        target = event.target.decode("ascii", "replace")
        path, _, query = target.partition("?")
        # h11 bounds only an *incomplete* head; one that arrives whole in a
        # single read is checked here, request line included.
        head_size = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if head_size > front.limits.max_header_bytes:
            raise Refused(header_fields_too_large(), path)  # only its surface is used
        self.path = path
        headers: Headers = tuple(event.headers)
        length = content_length(headers)
        method = self.method = event.method.decode("ascii", "replace")
        front.check_head(
            method, path, headers,
            body_follows=length != 0 and (length is not None or has_header(headers, b"transfer-encoding")),
        )  # fmt: skip
        if self.h11.client_is_waiting_for_100_continue:
            self.queue(h11.InformationalResponse(status_code=100, headers=[]))
            self.write_out()
        body = await front.read_body(self._body_piece, path)
        return IncomingRequest(
            method=method, path=path, query=query, headers=headers, body=body, client=self.peer
        )

    async def _body_piece(self) -> bytes | None:
        event = await self._next_event()
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
        raise _Gone()

    def _send_refusal(self, refused: Refused) -> None:
        """An answer of the transport itself; the connection closes after."""
        self.closed = True
        status, headers, body = self.server.front.refusal(refused, self.path)
        if self.reader is not None:
            try:
                self.out += _write_head(self, status, headers)
                if self.body_left is not None and len(body) > self.body_left:
                    # A refusal's body after a HEAD: h11 refuses to send it
                    # and the answer is dropped; the same here, as on the
                    # h11 path and the anyio server.
                    raise h11.LocalProtocolError("Too much data for declared Content-Length")
                self.out += body
            except h11.LocalProtocolError:
                self.out.clear()
            self.write_out()
            return
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = h11.Response(
            status_code=status, headers=list(headers), reason=reason_phrase(status)
        )
        try:
            self.queue(response)
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
        conn = self.conn
        if conn.reader is not None:
            conn.out += _write_head(conn, status, headers)
            conn.chunked = conn.body_left is None
            return
        head = conn.h11.send(
            h11.Response(status_code=status, headers=list(headers), reason=reason_phrase(status))
        )
        assert head is not None
        conn.out += head
        # h11 chose the framing (it adds transfer-encoding: chunked itself
        # when there is no length and the client speaks HTTP/1.1); the
        # answer to a HEAD says chunked but has no body at all.
        conn.chunked = conn.method != "HEAD" and _CHUNKED in head.lower()

    def send_body(self, data: bytes) -> None:
        conn = self.conn
        if conn.chunked:
            # A chunked body's pieces are framed here, not by h11.send: the
            # same bytes for a fraction of the cost per stream chunk.  h11's
            # state is untouched by body pieces (SEND_BODY stays SEND_BODY)
            # and a chunked writer checks no length; an empty piece would
            # end the body, so it is skipped, as h11 does.
            if data:
                out = conn.out
                out += b"%x\r\n" % len(data)
                out += data
                out += b"\r\n"
        elif conn.reader is not None:
            left = conn.body_left
            assert left is not None
            if len(data) > left:
                raise h11.LocalProtocolError("Too much data for declared Content-Length")
            conn.body_left = left - len(data)
            conn.out += data
        else:
            conn.queue(h11.Data(data=data))

    def end_response(self, *, keep_alive: bool) -> None:
        conn = self.conn
        if conn.reader is not None:
            if conn.chunked:
                conn.out += b"0\r\n\r\n"
            elif conn.body_left:
                raise h11.LocalProtocolError("Too little data for declared Content-Length")
            conn.chunked = False
            conn.ended = True
            if not keep_alive:
                conn.closed = True
        else:
            conn.chunked = False
            conn.queue(h11.EndOfMessage())
            if not keep_alive:
                conn.closed = True
        # The response is whole: it leaves now, not after the bookkeeping
        # that follows it in this turn of the loop (the limits' commit, the
        # usage record, metrics, the access line), which the client need
        # not wait for.
        conn.write_out()

    async def flush(self) -> None:
        conn = self.conn
        if not conn.write_paused and not conn.lost:
            conn.schedule_write()  # the common case, without a second coroutine
            return
        try:
            await conn.flush()
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
            await conn._wait(math.inf)


_CHUNKED = b"\r\ntransfer-encoding: chunked\r\n"


def _write_head(conn: _ClientProtocol, status: int, headers: Headers) -> bytes:
    """The response head h11 would write after a request read by httptools;
    sets the body's framing and whether the connection stays open."""
    head, length, keep_alive = response_head(
        status,
        reason_phrase(status),
        list(headers),
        head_request=conn.method == "HEAD",
        keep_alive=conn.keep_alive,
    )
    conn.body_left = length
    if not keep_alive:
        conn.keep_alive = False
    return head


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_TimedOut())
