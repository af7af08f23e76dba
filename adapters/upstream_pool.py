"""A lean HTTP/1.1 connection pool for backends: anyio streams + h11.

Why not httpcore's pool: profiling the gateway at 64 concurrent requests
showed httpcore 1.0's ``AsyncConnectionPool._assign_requests_to_connections``
scanning every connection for every request (O(connections x requests),
600k ``is_idle`` calls for 850 requests) plus a readability ``select`` per
pooled connection per request -- a third of the gateway's CPU.  A gateway
talks to a handful of origins, always HTTP/1.1, so a per-origin LIFO stack
of idle connections does the job in O(1).

A connection taken from the pool may have been closed by the backend while
idle (its keep-alive timeout): one non-blocking readability poll when it
is taken finds those (EOF is readable) and they are dropped.  A request is
never re-sent by the pool -- the backend may have read it -- so retrying
stays the Exchange's decision, within its budget.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11

__all__ = ["ConnectTimeout", "ConnectionLost", "Origin", "Pool", "PooledResponse", "origin_of"]

READ_SIZE = 65536


class ConnectionLost(Exception):
    """The backend closed or reset the connection mid-exchange."""


class ConnectTimeout(TimeoutError):
    """No connection within the connect timeout."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int


def origin_of(url: str) -> tuple[Origin, str]:
    """Split an absolute URL into its origin and the request target."""
    parts = urlsplit(url)
    scheme = parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Origin(scheme, parts.hostname or "", port), target


@dataclass(eq=False)
class _Connection:
    stream: anyio.abc.ByteStream
    h11: h11.Connection
    idle_since: float = 0.0
    reused: bool = False

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()


@dataclass(eq=False)
class PooledResponse:
    """A response being read; iterate ``body()``, then ``release()``."""

    status: int
    headers: list[tuple[bytes, bytes]]
    _pool: Pool
    _origin: Origin
    _conn: _Connection
    _done: bool = False

    async def body(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            event = _next_event(conn)
            if event is h11.NEED_DATA:
                await _receive(conn)
                continue
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
                return
            else:
                raise ConnectionLost(f"unexpected {type(event).__name__} in the response body")

    async def release(self) -> None:
        """Back to the pool if the exchange completed cleanly, else closed."""
        await self._pool._release(self._origin, self._conn, reusable=self._done)


def _readable(conn: _Connection) -> bool:
    """An idle pooled connection with something to read has been closed by
    the backend (EOF) or is out of step: either way, unusable.  One
    non-blocking poll, only when a connection is taken from the pool."""
    try:
        sock = conn.stream.extra(anyio.abc.SocketAttribute.raw_socket)
    except anyio.TypedAttributeLookupError:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


async def _receive(conn: _Connection) -> None:
    try:
        data = await conn.stream.receive(READ_SIZE)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        data = b""
    # b"" tells h11 the peer closed: it ends a close-delimited body, and
    # makes an incomplete message a RemoteProtocolError in next_event().
    conn.h11.receive_data(data)


def _next_event(conn: _Connection) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    try:
        event = conn.h11.next_event()
    except h11.RemoteProtocolError as exc:
        raise ConnectionLost(f"the backend broke the HTTP exchange: {exc}") from None
    if isinstance(event, h11.ConnectionClosed):
        raise ConnectionLost("the backend closed the connection")
    return event


@dataclass(eq=False)
class Pool:
    max_idle_per_origin: int = 256
    keepalive_expiry: float = 30.0
    _idle: dict[Origin, list[_Connection]] = field(default_factory=dict)
    _retired: set[Origin] = field(default_factory=set)
    _ssl: ssl.SSLContext | None = None
    closed: bool = False

    async def _connect(self, origin: Origin, connect_timeout: float) -> _Connection:
        try:
            return await self._open(origin, connect_timeout)
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {connect_timeout:g}s") from None

    async def _open(self, origin: Origin, connect_timeout: float) -> _Connection:
        with anyio.fail_after(connect_timeout):
            if origin.scheme == "https":
                if self._ssl is None:
                    self._ssl = ssl.create_default_context()
                stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                    origin.host, origin.port, ssl_context=self._ssl, tls_standard_compatible=False
                )
            else:
                stream = await anyio.connect_tcp(origin.host, origin.port)
        return _Connection(stream=stream, h11=h11.Connection(h11.CLIENT))

    async def retire(self, origins: set[Origin]) -> None:
        """A reload removed every backend at ``origins``: close their idle
        connections now, and those in use when they come back, rather than
        keep sockets to servers no request will reach again.  An origin a
        later request uses (a reload may add it back) is no longer retired."""
        self._retired |= origins
        for origin in origins:
            for conn in self._idle.pop(origin, []):
                await conn.aclose()

    async def _take(self, origin: Origin, connect_timeout: float) -> _Connection:
        self._retired.discard(origin)
        idle = self._idle.get(origin)
        now = anyio.current_time()
        while idle:
            conn = idle.pop()  # LIFO: the warmest connection first
            if now - conn.idle_since < self.keepalive_expiry and not _readable(conn):
                conn.reused = True
                return conn
            await conn.aclose()
        return await self._connect(origin, connect_timeout)

    async def _release(self, origin: Origin, conn: _Connection, *, reusable: bool) -> None:
        h = conn.h11
        if (
            reusable
            and not self.closed
            and origin not in self._retired
            and h.our_state is h11.DONE
            and h.their_state is h11.DONE
        ):
            h.start_next_cycle()
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.max_idle_per_origin:
                conn.idle_since = anyio.current_time()
                conn.reused = False
                idle.append(conn)
                return
        await conn.aclose()

    async def start(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        connect_timeout: float,
        first_byte_timeout: float,
    ) -> PooledResponse:
        """Send a request and read the response head, each phase within its
        own timeout (TimeoutError).  The caller must ``release()`` the
        response when done with it.
        """
        origin, target = origin_of(url)
        host = origin.host if origin.port in (80, 443) else f"{origin.host}:{origin.port}"
        all_headers = [(b"host", host.encode("ascii")), *headers]
        if body or method not in ("GET", "HEAD"):
            all_headers.append((b"content-length", str(len(body)).encode()))
        request = h11.Request(method=method, target=target, headers=all_headers)
        conn = await self._take(origin, connect_timeout)
        try:
            # The first-byte clock starts once the connection is there.
            with anyio.fail_after(first_byte_timeout):
                return await self._exchange_head(origin, conn, request, body)
        except BaseException:
            # Never re-sent here: a backend that read the request and then
            # failed must not get it twice.  Whether to try again is the
            # Exchange's retry policy's call, within its budget.
            await conn.aclose()
            raise

    async def _exchange_head(
        self, origin: Origin, conn: _Connection, request: h11.Request, body: bytes
    ) -> PooledResponse:
        h = conn.h11
        data = (h.send(request) or b"") + (h.send(h11.Data(data=body)) if body else b"")
        data += h.send(h11.EndOfMessage()) or b""
        try:
            await conn.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            raise ConnectionLost("the backend closed the connection") from None
        while True:
            event = _next_event(conn)
            if event is h11.NEED_DATA:
                await _receive(conn)
            elif isinstance(event, h11.Response):
                return PooledResponse(
                    status=event.status_code,
                    headers=[(k, v) for k, v in event.headers],
                    _pool=self,
                    _origin=origin,
                    _conn=conn,
                )
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:
                raise ConnectionLost(f"unexpected {type(event).__name__} before the response")

    async def aclose(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                await conn.aclose()
        self._idle.clear()
