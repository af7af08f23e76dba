"""The transport front: what every HTTP transport does around the Exchange.

Theory of operation: a transport (the h11 server in ``server.py``, the ASGI
app in ``asgi.py``) owns its bytes or messages; the front owns everything
the transports have in common and executes it the same way for all of
them: the request-body cap, the head/body/idle/write timeouts, the early
refusal before a body is read, the rendering of the transport's own
errors, and the executor that runs each request's Exchange.  What each
situation answers (status, error, bytes) is decided by the core
(:mod:`sansio_gateway.transport`); the front only executes it.

The contract, for any transport (a future ``asyncio.Protocol`` transport
drives it exactly like these two):

1. **Idle.**  Between requests on a kept-alive connection, wait at most
   ``limits.keepalive_timeout`` for the first byte of the next one, then
   close without an answer (the ASGI server does this itself).
2. **Head.**  Once a request head is in, call :meth:`TransportFront.check_head`
   with ``body_follows`` -- whether the framing announces a body, which only
   the transport knows.  It raises :class:`Refused` when the head alone is
   to be answered (framing, no key, declared length past the cap).
3. **Body.**  Read it with :meth:`TransportFront.read_body`, giving a
   ``receive`` that returns the next piece, or None at the end of the body;
   past ``limits.max_body_bytes`` it raises :class:`Refused` (413).
4. **Deadline.**  Steps 2 and 3 run inside :meth:`TransportFront.reading`:
   a request that does not arrive whole within ``limits.read_timeout``
   raises :class:`Refused` (408).
5. **Refusals.**  A :class:`Refused` is answered with
   :meth:`TransportFront.refusal` (status, headers with ``content-length``
   and ``connection: close``, body), in the dialect of its path; the
   transport writes it and closes.  :meth:`TransportFront.raw_refusal` gives
   the same answer as HTTP/1.1 bytes, for a transport that must answer
   before any parser has seen a request (too many connections).
6. **Serve.**  Hand the whole :class:`~sansio_gateway.http.IncomingRequest`
   and a :class:`~sansio_gateway.adapters.executor.ResponseChannel` to
   :meth:`TransportFront.serve`; the channel's ``flush`` writes within
   ``limits.write_timeout`` or raises ``ClientGone``.
7. **Shutdown.**  :meth:`TransportFront.abort_in_flight` ends what waits on a
   backend, :meth:`TransportFront.wait_idle` waits for the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus

import anyio

from sansio_gateway.config import ServerConfig
from sansio_gateway.errors import GatewayError
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import Headers, IncomingRequest
from sansio_gateway.transport import (
    body_too_large,
    read_timed_out,
    refuse_head,
    render_refusal,
    shutting_down,
)

from .executor import ActionExecutor, ResponseChannel, Served

__all__ = ["Refused", "ServerLimits", "TransportFront", "reason_phrase"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    max_body_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    read_timeout: float = 30.0
    write_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 500

    @classmethod
    def from_config(cls, server: ServerConfig) -> ServerLimits:
        return cls(
            max_body_bytes=server.max_body_bytes,
            max_header_bytes=server.max_header_bytes,
            read_timeout=server.read_timeout,
            write_timeout=server.write_timeout,
            keepalive_timeout=server.keepalive_timeout,
            max_connections=server.max_connections,
        )


class Refused(Exception):
    """The transport answers this request itself, then closes the connection.

    ``path`` is the request's path when known (it picks the error's
    dialect); None leaves it to the transport, which may have read the head
    meanwhile.
    """

    def __init__(self, error: GatewayError, path: str | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.path = path


class TransportFront:
    """One per gateway, shared by its transports; see the module docstring."""

    def __init__(self, gateway: Gateway, executor: ActionExecutor, limits: ServerLimits) -> None:
        self.gateway = gateway
        self.executor = executor
        self.limits = limits

    # ---- reading a request -------------------------------------------------

    def check_head(self, method: str, path: str, headers: Headers, *, body_follows: bool) -> None:
        refusal = refuse_head(
            self.gateway.refuse_head, method, path, headers,
            body_follows=body_follows, max_body_bytes=self.limits.max_body_bytes,
        )  # fmt: skip
        if refusal is not None:
            raise Refused(refusal, path)

    async def read_body(self, receive: Callable[[], Awaitable[bytes | None]], path: str) -> bytes:
        parts: list[bytes] = []
        size = 0
        while (chunk := await receive()) is not None:
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise Refused(body_too_large(self.limits.max_body_bytes), path)
            parts.append(chunk)
        return b"".join(parts)

    @contextlib.contextmanager
    def reading(self, path: str | None = None) -> Iterator[None]:
        """The deadline of one request's head and body (slowloris protection)."""
        with anyio.move_on_after(self.limits.read_timeout) as scope:
            yield
        if scope.cancelled_caught:
            raise Refused(read_timed_out(), path)

    # ---- answering ---------------------------------------------------------

    def refusal(self, refused: Refused, path: str = "") -> tuple[int, Headers, bytes]:
        """The answer to ``refused``; ``path`` is used when it carries none."""
        where = refused.path if refused.path is not None else path
        status, headers, body = render_refusal(refused.error, where)
        self.executor.tracing.refused(refused.error, status)
        return status, headers, body

    def raw_refusal(self, error: GatewayError) -> bytes:
        """The answer to ``error`` as HTTP/1.1 bytes, before any request head."""
        status, headers, body = render_refusal(error, "")
        self.executor.tracing.refused(error, status)
        lines = [b"HTTP/1.1 %d %s" % (status, reason_phrase(status))]
        lines += [name + b": " + value for name, value in headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def serve(self, request: IncomingRequest, channel: ResponseChannel) -> Served:
        return await self.executor.serve(request, channel)

    # ---- shutdown ------------------------------------------------------------

    @property
    def active(self) -> int:
        """Requests being served."""
        return self.executor.active

    async def wait_idle(self) -> None:
        await self.executor.wait_idle()

    def abort_in_flight(self) -> int:
        """End every request still waiting on a backend (an in-band error
        event for streams); returns how many were ended."""
        return self.executor.abort_in_flight(shutting_down())


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""
