"""The HTTP/1.1 server: anyio + h11, driving one Exchange per request.

A shell in the sans-IO sense: it reads bytes, feeds h11, and drives the
shared :class:`~sansio_gateway.adapters.front.TransportFront` (body cap,
timeouts, early refusal, refusals' rendering, the executor that runs the
Exchange's actions) as its contract says; responses go out through an h11
channel.  What is left here is h11's own: the head size, framing facts,
keep-alive, pipelining, a lingering close, and noticing that a client went
away (the channel's ``wait_disconnected`` reads the socket while a request
waits on its backend).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
import anyio.abc
import h11

from sansio_gateway.http import Headers, IncomingRequest
from sansio_gateway.transport import (
    content_length,
    has_header,
    header_fields_too_large,
    malformed_request,
    too_many_connections,
)

from .executor import ClientGone
from .front import Refused, ServerLimits, TransportFront, reason_phrase

__all__ = ["GatewayServer", "ServerLimits"]

log = logging.getLogger("sansio_gateway.server")

READ_SIZE = 65536
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20
REFUSING_LINGER_MAX = 64  # refused connections closed gracefully at once


class _ClientGone(Exception):
    """The client connection is unusable (closed or reset)."""


@dataclass
class _Connection:
    stream: anyio.abc.ByteStream
    h11: h11.Connection
    peer: str | None = None
    closed: bool = False
    eof: bool = False
    out: bytearray = field(default_factory=bytearray)
    path: str = ""  # of the request being read, once its head is in


@dataclass
class GatewayServer:
    """The h11 transport of a :class:`~sansio_gateway.adapters.front.TransportFront`."""

    front: TransportFront
    draining: bool = False
    _idle_scopes: set[anyio.CancelScope] = field(default_factory=set)
    connections: int = 0  # open client connections being served
    _refusing: int = 0  # connections past max_connections, being answered 503

    @property
    def limits(self) -> ServerLimits:
        return self.front.limits

    # ---- graceful shutdown ----------------------------------------------

    def begin_drain(self) -> None:
        """Stop reading new requests: idle keep-alive connections close now,
        busy ones after their current response."""
        self.draining = True
        for scope in list(self._idle_scopes):
            scope.cancel()

    async def wait_quiet(self) -> None:
        """Return once no request is being served."""
        await self.front.wait_idle()

    def abort_in_flight(self) -> int:
        """End every request still waiting on a backend; returns how many."""
        return self.front.abort_in_flight()

    @property
    def active(self) -> int:
        return self.front.active

    # ---- connection loop -------------------------------------------------

    async def handle_connection(self, stream: anyio.abc.ByteStream) -> None:
        conn = _Connection(
            stream=stream,
            h11=h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes),
        )
        if self.connections >= self.limits.max_connections:
            await self._refuse_connection(conn)
            return
        self.connections += 1
        try:
            await self._handle(conn)
        finally:
            self.connections -= 1

    async def _refuse_connection(self, conn: _Connection) -> None:
        """Past ``max_connections``: a 503 without reading the request (h11
        cannot answer before a request head, so the bytes are written
        directly), then the usual lingering close."""
        conn.out += self.front.raw_refusal(too_many_connections())
        self._refusing += 1
        try:
            with anyio.move_on_after(LINGER_SECONDS):
                await self._flush(conn)
        except _ClientGone:
            pass
        finally:
            with anyio.CancelScope(shield=True):
                # A lingering close lets the client read the 503, but a flood
                # must not hold a descriptor per refused connection for long:
                # past a few dozen at once they are closed at once.
                if self._refusing <= REFUSING_LINGER_MAX:
                    await self._linger(conn)
                await conn.stream.aclose()
            self._refusing -= 1

    async def _handle(self, conn: _Connection) -> None:
        stream = conn.stream
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
            await self._send_refusal(
                conn, Refused(malformed_request(exc.error_status_hint, str(exc)), "")
            )
            return None
        except Refused as refused:
            # A refusal without a path is rendered for the surface of the
            # path, when the head got that far.
            await self._send_refusal(conn, refused)
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
        with self.front.reading():
            request = await self._read_head_and_body(conn)
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
            # Only its surface is used, never echoed.
            raise Refused(header_fields_too_large(), path)
        conn.path = path
        headers: Headers = tuple(event.headers)
        length = content_length(headers)
        method = event.method.decode("ascii", "replace")
        self.front.check_head(
            method, path, headers,
            body_follows=length != 0 and (length is not None or has_header(headers, b"transfer-encoding")),
        )  # fmt: skip
        if conn.h11.client_is_waiting_for_100_continue:
            await self._send(conn, h11.InformationalResponse(status_code=100, headers=[]))
        body = await self.front.read_body(lambda: self._body_piece(conn), path)
        return IncomingRequest(
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            client=conn.peer,
        )

    async def _body_piece(self, conn: _Connection) -> bytes | None:
        event = await self._next_event(conn)
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            return None
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

    async def _send_refusal(self, conn: _Connection, refused: Refused) -> None:
        """An answer of the transport itself; the connection closes after."""
        status, headers, body = self.front.refusal(refused, conn.path)
        if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            conn.closed = True
            return
        response = h11.Response(
            status_code=status, headers=list(headers), reason=reason_phrase(status)
        )
        try:
            self._queue(conn, response)
            self._queue(conn, h11.Data(data=body))
            self._queue(conn, h11.EndOfMessage())
            await self._flush(conn)
        except (_ClientGone, h11.LocalProtocolError):
            pass
        conn.closed = True

    # ---- serving one request -------------------------------------------

    async def _serve(self, conn: _Connection, request: IncomingRequest) -> None:
        served = await self.front.serve(request, _H11Channel(self, conn))
        if served.client_gone or self.draining:
            conn.closed = True


class _H11Channel:
    """The executor's view of one h11 connection (adapters/executor.py)."""

    def __init__(self, server: GatewayServer, conn: _Connection) -> None:
        self.server = server
        self.conn = conn

    def start_response(self, status: int, headers: Headers) -> None:
        response = h11.Response(
            status_code=status, headers=list(headers), reason=reason_phrase(status)
        )
        self.server._queue(self.conn, response)

    def send_body(self, data: bytes) -> None:
        self.server._queue(self.conn, h11.Data(data=data))

    def end_response(self, *, keep_alive: bool) -> None:
        self.server._queue(self.conn, h11.EndOfMessage())
        if not keep_alive:
            self.conn.closed = True

    async def flush(self) -> None:
        try:
            await self.server._flush(self.conn)
        except _ClientGone:
            raise ClientGone() from None

    async def wait_disconnected(self) -> None:
        """Read the client socket while the request waits on its backend:
        EOF means the client left.  Bytes that arrive meanwhile (a pipelined
        request) go to h11, which keeps them for the next cycle -- up to one
        request's worth; past that, reading stops (memory stays bounded) and
        the connection closes after this answer."""
        conn = self.conn
        limits = self.server.limits
        bound = limits.max_body_bytes + limits.max_header_bytes
        while not conn.eof:
            try:
                await self.server._receive_into(conn)
            except _ClientGone:
                return
            if len(conn.h11.trailing_data[0]) > bound:
                conn.closed = True
                await anyio.sleep_forever()
