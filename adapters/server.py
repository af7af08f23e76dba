"""The HTTP/1.1 server: anyio + h11, driving one Exchange per request.

A shell in the sans-IO sense: it reads bytes, feeds h11, and hands each
whole request to the shared :class:`~sansio_gateway.adapters.executor.ActionExecutor`,
which runs the Exchange's actions and writes the response through an h11
channel.  The only decisions made here are transport ones: size limits on
heads and bodies, read and write timeouts, keep-alive, pipelining, a
lingering close, and noticing that a client went away (the channel's
``wait_disconnected`` reads the socket while a request waits on its
backend).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import anyio
import anyio.abc
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
from sansio_gateway.routes import surface_of

from .executor import ActionExecutor, ClientGone
from .ledger import UsageLedger
from .limit_stores import LimitStore, MemoryStore
from .metrics import GatewayMetrics
from .upstream import UpstreamClient

__all__ = ["GatewayServer", "ServerLimits"]

log = logging.getLogger("sansio_gateway.server")

READ_SIZE = 65536
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20
REFUSING_LINGER_MAX = 64  # refused connections closed gracefully at once


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    read_timeout: float = 30.0
    write_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 500


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
    executor: ActionExecutor = field(init=False)
    connections: int = 0  # open client connections being served
    _refusing: int = 0  # connections past max_connections, being answered 503

    # ---- graceful shutdown ----------------------------------------------

    def begin_drain(self) -> None:
        """Stop reading new requests: idle keep-alive connections close now,
        busy ones after their current response."""
        self.draining = True
        for scope in list(self._idle_scopes):
            scope.cancel()

    async def wait_quiet(self) -> None:
        """Return once no request is being served."""
        await self.executor.wait_idle()

    def abort_in_flight(self, error: GatewayError) -> int:
        """End every request still waiting on a backend with ``error`` (an
        in-band error event for streams); returns how many were ended."""
        return self.executor.abort_in_flight(error)

    @property
    def active(self) -> int:
        return self.executor.active

    limits: ServerLimits = field(default_factory=ServerLimits)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        # The action loop is shared with the ASGI adapter; this server only
        # moves bytes, enforces transport limits and notices disconnects.
        self.executor = ActionExecutor(
            gateway=self.gateway,
            upstream=self.upstream,
            ledger=self.ledger,
            metrics=self.metrics,
            limit_store=self.limit_store,
            refresh_catalogue=self.refresh_catalogue,
            clock=self.clock,
        )

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
        err = ServiceUnavailable(
            "The gateway has too many open connections; retry shortly.",
            code="too_many_connections",
            retry_after=1,
        )
        status, headers, body = error_response(Surface.GATEWAY, err)
        head = [f"HTTP/1.1 {status} {_reason(status).decode()}".encode()]
        head += [k + b": " + v for k, v in headers]
        head += [b"content-length: " + str(len(body)).encode(), b"connection: close"]
        conn.out += b"\r\n".join(head) + b"\r\n\r\n" + body
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
        if length != 0 and (length is not None or _has(event.headers, b"transfer-encoding")):
            # A body is coming: the core judges the head (auth) before a
            # byte of it is read.  No body, nothing to save: the Exchange
            # answers as usual.
            refusal = self.gateway.refuse_head(
                event.method.decode("ascii", "replace"), path, tuple(event.headers)
            )
            if refusal is not None:
                raise _HttpFailure(refusal, path=path)
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
        served = await self.executor.serve(request, _H11Channel(self, conn))
        if served.client_gone or self.draining:
            conn.closed = True


class _H11Channel:
    """The executor's view of one h11 connection (adapters/executor.py)."""

    def __init__(self, server: GatewayServer, conn: _Connection) -> None:
        self.server = server
        self.conn = conn

    def start_response(self, status: int, headers: Headers) -> None:
        response = h11.Response(status_code=status, headers=list(headers), reason=_reason(status))
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


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""
