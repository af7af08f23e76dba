"""The fast upstream client for asyncio: backend connections as ``asyncio.Protocol``.

The same contract as :class:`~sansio_gateway.adapters.upstream.UpstreamClient`
(it stays for trio and the ASGI app): one ``SendUpstream`` in, its facts
out through ``deliver``, the same timeouts (connect, first byte, idle,
total) and the same error mapping (:func:`map_upstream_exception`).  What
changes is the cost per chunk (docs/architecture.md, "The fast transport"):

- bytes arrive by callback; the reader wakes once per read, not per chunk,
  and hands what that read parsed to the Exchange as one chunk before it
  waits again (one pass through the Exchange, one write to the client);
- responses are parsed by httptools when it is installed (the ``fast``
  extra, :mod:`sansio_gateway.adapters.fast_http`), by h11 otherwise;
- the first-byte and idle timeouts are one timer per connection that is
  re-armed only when it fires early, not a cancel scope per chunk;
- when the reader stops (a slow client), bytes pile up to a high-water mark
  and then the backend's socket is paused (``pause_reading``).

Pooling is per origin, LIFO, as in :mod:`sansio_gateway.adapters.upstream_pool`:
a connection the backend closed while idle has told us so by callback, so
taking one needs no poll.  A request is never re-sent by the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import ssl
from dataclasses import dataclass, field
from typing import cast

import anyio
import h11

from sansio_gateway.actions import (
    SendUpstream,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
    chunk_received,
)
from sansio_gateway.config import BackendConfig
from sansio_gateway.errors import GatewayError
from sansio_gateway.http import Headers

from .fast_http import HTTPTOOLS, ParsedResponse, request_bytes
from .upstream import (
    DRAIN_BYTES,
    DRAIN_SECONDS,
    TRANSPORT_ERRORS,
    Deliver,
    map_upstream_exception,
    timeout_phase,
)
from .upstream_pool import ConnectionLost, ConnectTimeout, Origin, origin_of

__all__ = ["FastUpstreamClient"]

# Past this many unread bytes from a backend its socket is paused until the
# gateway catches up (a slow client): memory per stream stays bounded.
HIGH_WATER = 256 * 1024


class _Timeout(TimeoutError):
    pass


class _BackendProtocol(asyncio.Protocol):
    """One backend connection: buffers what arrives, wakes one reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: FastUpstreamClient) -> None:
        self.loop = loop
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(h11.CLIENT)
        self.parsed: ParsedResponse | None = None  # the response httptools reads, if it does
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.eof = False
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = math.inf  # of the current wait (first byte or idle)
        self.timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer.append(data)
        self.buffered += len(data)
        if self.buffered >= HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.owner.pauses += 1
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def usable(self) -> bool:
        # Bytes or EOF while idle: closed by the backend, or out of step.
        return not self.eof and not self.buffer and self.transport is not None

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    # ---- reading with a deadline -------------------------------------------

    def _arm(self) -> None:
        if self.deadline == math.inf:
            return
        if self.timer is None or self.timer.when() > self.deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(self.deadline, self._fire)

    def _fire(self) -> None:
        self.timer = None
        if self.loop.time() >= self.deadline:
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(_Timeout())
        else:
            self._arm()  # the deadline moved on since: wait for the new one

    async def read(self) -> bytes:
        """What arrived since the last read; b"" once the backend closed.
        Raises TimeoutError past ``deadline``."""
        while not self.buffer:
            if self.eof:
                return b""
            if self.loop.time() >= self.deadline:
                raise _Timeout()
            self._arm()
            waiter = self.waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        data = self.buffer[0] if len(self.buffer) == 1 else b"".join(self.buffer)
        self.buffer.clear()
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def parsed_head(self) -> tuple[int, Headers]:
        """httptools' read of the response head (status, headers)."""
        parsed = self.parsed
        assert parsed is not None
        while not parsed.head_done:
            data = await self.read()
            if data:
                parsed.feed(data)
            else:
                parsed.feed_eof()
        return parsed.status, tuple(parsed.headers)

    async def next_event(self) -> h11.Event:
        h = self.h11
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                raise ConnectionLost(f"the backend broke the HTTP exchange: {exc}") from None
            if event is h11.NEED_DATA:
                # b"" tells h11 the peer closed: it ends a close-delimited
                # body, and makes an incomplete message an error.
                h.receive_data(await self.read())
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise ConnectionLost("the backend closed the connection")
            assert not isinstance(event, type)
            return event


@functools.lru_cache(maxsize=1024)
def _split_url(url: str) -> tuple[Origin, str, bytes]:
    """The origin, the request target and the Host header of ``url``: the
    same few URLs (a backend's base and its routes) come back every request."""
    origin, target = origin_of(url)
    host = origin.host if origin.port in (80, 443) else f"{origin.host}:{origin.port}"
    return origin, target, host.encode("ascii")


@dataclass(eq=False)
class FastUpstreamClient:
    max_idle_per_origin: int = 256
    keepalive_expiry: float = 30.0
    _idle: dict[Origin, list[_BackendProtocol]] = field(default_factory=dict)
    _retired: set[Origin] = field(default_factory=set)
    _ssl: ssl.SSLContext | None = None
    closed: bool = False
    # httptools reads responses when installed (adapters/fast_http.py); h11
    # otherwise, and always for discovery GETs and HEAD requests.
    use_httptools: bool = HTTPTOOLS
    pauses: int = 0  # how often a slow client paused a backend's socket
    # The connections reading a response now (for tests and diagnostics).
    busy: set[_BackendProtocol] = field(default_factory=set)

    async def aclose(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    # ---- connections ------------------------------------------------------

    async def _connect(self, origin: Origin, connect_timeout: float) -> _BackendProtocol:
        loop = asyncio.get_running_loop()
        context = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _BackendProtocol(loop, self),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                ),
                connect_timeout,
            )
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {connect_timeout:g}s") from None
        return protocol

    async def retire(self, origins: set[Origin]) -> None:
        """As ``Pool.retire``: a reload removed every backend at ``origins``."""
        self._retired |= origins
        for origin in origins:
            for conn in self._idle.pop(origin, []):
                conn.close()

    async def _take(self, origin: Origin, connect_timeout: float) -> _BackendProtocol:
        self._retired.discard(origin)
        idle = self._idle.get(origin)
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                conn = idle.pop()  # LIFO: the warmest connection first
                if now - conn.idle_since < self.keepalive_expiry and conn.usable:
                    return conn
                conn.close()
        return await self._connect(origin, connect_timeout)

    def _release(self, origin: Origin, conn: _BackendProtocol, *, reusable: bool) -> None:
        conn.deadline = math.inf
        h = conn.h11
        parsed, conn.parsed = conn.parsed, None
        if parsed is not None:
            # h11 never saw this exchange: it is still IDLE for the next one.
            reusable = reusable and parsed.complete and parsed.keep_alive and not parsed.extra
            parsed.close()
        elif reusable and h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
        else:
            reusable = False
        if reusable and not self.closed and conn.usable and origin not in self._retired:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.max_idle_per_origin:
                conn.idle_since = conn.loop.time()
                idle.append(conn)
                return
        conn.close()

    async def _start(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        connect_timeout: float,
        first_byte_timeout: float,
        parsed: bool = False,
    ) -> tuple[Origin, _BackendProtocol, int, Headers]:
        """Send a request and read the response head (status, headers); the
        caller releases the connection (``_release``).  ``parsed``: httptools
        reads the response (``conn.parsed``), else h11."""
        origin, target, host = _split_url(url)
        all_headers = [(b"host", host), *headers]
        if body or method not in ("GET", "HEAD"):
            all_headers.append((b"content-length", str(len(body)).encode()))
        conn = await self._take(origin, connect_timeout)
        try:
            if parsed:
                data = request_bytes(method, target, all_headers, body)
                conn.parsed = ParsedResponse()
            else:
                h = conn.h11
                request = h11.Request(method=method, target=target, headers=all_headers)
                data = (h.send(request) or b"") + (h.send(h11.Data(data=body)) if body else b"")
                data += h.send(h11.EndOfMessage()) or b""
            if conn.eof or conn.transport is None or conn.transport.is_closing():
                raise ConnectionLost("the backend closed the connection")
            conn.transport.write(data)
            # The first-byte clock starts once the connection is there.
            conn.deadline = conn.loop.time() + first_byte_timeout
            if conn.parsed is not None:
                return origin, conn, *await conn.parsed_head()
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.Response):
                    return origin, conn, event.status_code, tuple(event.headers)
                if not isinstance(event, h11.InformationalResponse):
                    raise ConnectionLost(f"unexpected {type(event).__name__} before the response")
        except BaseException:
            # Never re-sent here: whether to try again is the Exchange's
            # retry policy's call, within its budget.
            conn.close()
            raise

    # ---- the client's interface ---------------------------------------------

    async def get(
        self, url: str, headers: list[tuple[bytes, bytes]], *, within: float
    ) -> tuple[int, bytes]:
        """A small whole GET (discovery, probes), done ``within`` seconds."""
        with anyio.fail_after(within):
            origin, conn, status, _ = await self._start(
                "GET", url, headers, b"", connect_timeout=within, first_byte_timeout=within
            )
            done = False
            try:
                parts: list[bytes] = []
                while True:
                    event = await conn.next_event()
                    if isinstance(event, h11.Data):
                        parts.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        done = True
                        break
                    else:
                        raise ConnectionLost(f"unexpected {type(event).__name__} in the body")
            finally:
                self._release(origin, conn, reusable=done)
        return status, b"".join(parts)

    async def request(self, action: SendUpstream, backend: BackendConfig, deliver: Deliver) -> None:
        """Run ``action``; report every fact through ``deliver`` (as
        :meth:`UpstreamClient.request <sansio_gateway.adapters.upstream.UpstreamClient.request>`)."""
        phase = "connecting"
        try:
            # One timeout per request for the total, never one per chunk;
            # asyncio's own (this client runs on asyncio only) costs a third
            # of anyio.fail_after.
            async with asyncio.timeout(backend.total_timeout) as total:
                origin, conn, status, headers = await self._start(
                    action.method,
                    action.url,
                    list(action.headers),
                    action.body,
                    connect_timeout=backend.connect_timeout,
                    first_byte_timeout=backend.first_byte_timeout,
                    parsed=self.use_httptools and action.method != "HEAD",
                )
                phase = "reading"
                done = False
                self.busy.add(conn)
                try:
                    done = await self._read(conn, status, headers, backend, deliver)
                finally:
                    self.busy.discard(conn)
                    self._release(origin, conn, reusable=done)
        except GatewayError as err:
            await deliver(UpstreamFailed(error=err))
        except TRANSPORT_ERRORS as exc:
            what = timeout_phase(backend, total_expired=total.expired(), phase=phase)
            error = map_upstream_exception(exc, backend.name, phase=what)
            await deliver(UpstreamFailed(error=error))

    async def _read(
        self,
        conn: _BackendProtocol,
        status: int,
        headers: Headers,
        backend: BackendConfig,
        deliver: Deliver,
    ) -> bool:
        """Relay the body; True if it ended cleanly (the connection is reusable)."""
        if not await deliver(UpstreamResponseStarted(status=status, headers=headers)):
            return False
        if conn.parsed is not None:
            return await self._relay_parsed(conn, conn.parsed, backend, deliver)
        try:
            return await self._relay(conn, backend, deliver)
        except h11.RemoteProtocolError as exc:
            raise ConnectionLost(f"the backend broke the HTTP exchange: {exc}") from None

    async def _relay(
        self, conn: _BackendProtocol, backend: BackendConfig, deliver: Deliver
    ) -> bool:
        loop = conn.loop
        h = conn.h11
        idle_timeout = backend.idle_timeout
        pending: list[bytes] = []  # the body pieces of one read, delivered as one chunk
        while True:
            event = h.next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    pending.append(bytes(event.data))
                continue
            if pending:
                more = await deliver(chunk_received(b"".join(pending)))
                pending.clear()
                if not more:
                    # Done early; the end may be parsed already (the same read).
                    if isinstance(event, h11.EndOfMessage):
                        return True
                    return await self._drain(conn)
            if event is h11.NEED_DATA:
                # A slow client is not an idle backend: the idle clock runs
                # only while we wait on the backend.
                conn.deadline = loop.time() + idle_timeout
                data = await conn.read()
                conn.deadline = math.inf
                h.receive_data(data)
                continue
            if isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionLost("the backend closed the connection")
            else:
                raise ConnectionLost(f"unexpected {type(event).__name__} in the response body")
        await deliver(UpstreamClosed())
        return True

    async def _relay_parsed(
        self,
        conn: _BackendProtocol,
        parsed: ParsedResponse,
        backend: BackendConfig,
        deliver: Deliver,
    ) -> bool:
        """:meth:`_relay` with httptools: what one read parsed goes out as one chunk."""
        loop = conn.loop
        idle_timeout = backend.idle_timeout
        # Only an event stream is worth cutting: a whole answer waits for its end.
        first = any(
            n == b"content-type" and (b"event-stream" in v.lower() or b"ndjson" in v.lower())
            for n, v in parsed.headers
        )
        while True:
            data = parsed.take_body()
            if first and data:
                first = False
                # A fast backend's first read may hold many lines: the first
                # goes out alone, before the rest is translated (the client's
                # first token waits for one line's work, not the read's).
                # The core's decoders read any cut of a stream the same way.
                cut = data.find(b"\n") + 1
                if 0 < cut < len(data):
                    if not await deliver(chunk_received(data[:cut])):
                        return await self._drain_parsed(conn, parsed)
                    await asyncio.sleep(0)  # lets the queued write leave
                    data = data[cut:]
            if data and not await deliver(chunk_received(data)):
                return await self._drain_parsed(conn, parsed)
            if parsed.complete:
                break
            conn.deadline = loop.time() + idle_timeout  # as in _relay
            data = await conn.read()
            conn.deadline = math.inf
            if data:
                parsed.feed(data)
            else:
                parsed.feed_eof()
        await deliver(UpstreamClosed())
        return True

    async def _drain_parsed(self, conn: _BackendProtocol, parsed: ParsedResponse) -> bool:
        """:meth:`_drain` with httptools."""
        seen = 0
        conn.deadline = conn.loop.time() + DRAIN_SECONDS
        with contextlib.suppress(*TRANSPORT_ERRORS):
            while not parsed.complete:
                data = await conn.read()
                if not data:
                    return False
                parsed.feed(data)
                seen += len(parsed.take_body())
                if seen > DRAIN_BYTES:
                    return False
            return True
        return False

    async def _drain(self, conn: _BackendProtocol) -> bool:
        """After the Exchange is done the rest is usually just the chunked
        terminator: reading it keeps the connection; a talker is cut off."""
        seen = 0
        conn.deadline = conn.loop.time() + DRAIN_SECONDS
        with contextlib.suppress(*TRANSPORT_ERRORS):
            while True:
                event = await conn.next_event()
                if isinstance(event, h11.EndOfMessage):
                    return True
                if not isinstance(event, h11.Data):
                    return False
                seen += len(event.data)
                if seen > DRAIN_BYTES:
                    return False
        return False
