"""The upstream client: streaming requests to backends, with timeouts.

It executes one ``SendUpstream`` action and reports what happens as results
(``UpstreamResponseStarted``, ``UpstreamChunkReceived``, ``UpstreamClosed``,
``UpstreamFailed``) to a callback.  Library exceptions are mapped to the
core's typed errors in one place, :func:`map_upstream_exception`, as
httpcore's own ``map_exceptions`` does.

Timeouts per backend: connect, first byte (the response head), idle (between
body chunks) and total.  Connections come from :mod:`sansio_gateway.adapters.upstream_pool`.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from sansio_gateway.actions import (
    Result,
    SendUpstream,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
    chunk_received,
)
from sansio_gateway.config import BackendConfig
from sansio_gateway.errors import GatewayError, UpstreamError, UpstreamTimeout

from .upstream_pool import ConnectionLost, ConnectTimeout, Origin, Pool, PooledResponse

__all__ = ["TRANSPORT_ERRORS", "UpstreamClient", "map_upstream_exception", "timeout_phase"]

Deliver = Callable[[Result], Awaitable[bool]]

# After the Exchange is done (Ollama's `done` line arrived), the rest of the
# body is usually just the chunked terminator.  Reading it keeps the
# connection in the pool; a backend that keeps talking is cut off.
DRAIN_SECONDS = 0.5
DRAIN_BYTES = 1 << 20

TRANSPORT_ERRORS = (
    TimeoutError,
    ConnectionLost,
    OSError,
    ssl.SSLError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


def timeout_phase(backend: BackendConfig, *, total_expired: bool, phase: str) -> str:
    """Which of the request's clocks a transport failure ran out, for its message."""
    if total_expired:
        return f"total timeout of {backend.total_timeout:g}s"
    if phase == "connecting":
        return "waiting for the first byte"
    return f"no data for {backend.idle_timeout:g}s"


def map_upstream_exception(exc: BaseException, backend: str, *, phase: str = "") -> GatewayError:
    """The one place where transport exceptions become the core's errors."""
    if isinstance(exc, ConnectTimeout):
        # A connect failure: retryable, and it counts against the breaker.
        return UpstreamTimeout(
            f"timed out connecting to backend {backend!r}", code="upstream_unreachable"
        )
    if isinstance(exc, TimeoutError):
        what = f" ({phase})" if phase else ""
        return UpstreamTimeout(f"backend {backend!r} timed out{what}")
    if isinstance(exc, ConnectionLost):
        return UpstreamError(f"connection to backend {backend!r} was lost: {exc}")
    if isinstance(exc, ssl.SSLError):
        return UpstreamError(f"TLS with backend {backend!r} failed: {exc.reason or exc}")
    if isinstance(exc, OSError):
        return UpstreamError(
            f"could not connect to backend {backend!r}: {exc.strerror or exc}",
            code="upstream_unreachable",
        )
    return UpstreamError(f"backend {backend!r} failed: {type(exc).__name__}")


async def _drain(chunks: AsyncIterator[bytes]) -> bool:
    """Read the rest of a body briefly; True if it ended."""
    seen = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        async for chunk in chunks:
            seen += len(chunk)
            if seen > DRAIN_BYTES:
                return False
        return True
    return False


class UpstreamClient:
    def __init__(self, *, keepalive_expiry: float = 30.0) -> None:
        self.pool = Pool(keepalive_expiry=keepalive_expiry)

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def retire(self, origins: set[Origin]) -> None:
        """A reload removed every backend at ``origins`` (``Pool.retire``)."""
        await self.pool.retire(origins)

    async def get(
        self, url: str, headers: list[tuple[bytes, bytes]], *, within: float
    ) -> tuple[int, bytes]:
        """A small whole GET (discovery, probes), done ``within`` seconds;
        raises the transport errors."""
        with anyio.fail_after(within):
            response = await self.pool.start(
                "GET", url, headers, b"", connect_timeout=within, first_byte_timeout=within
            )
            try:
                body = b"".join([chunk async for chunk in response.body()])
            finally:
                await response.release()
        return response.status, body

    async def request(self, action: SendUpstream, backend: BackendConfig, deliver: Deliver) -> None:
        """Run ``action``; report every fact through ``deliver``.

        ``deliver`` returns False when the Exchange wants no more (it is
        done, or cancelled the upstream); the rest of the body is then
        drained briefly so the connection can be reused, or dropped.
        """
        phase = "connecting"
        try:
            with anyio.fail_after(backend.total_timeout) as total:
                response = await self.pool.start(
                    action.method,
                    action.url,
                    list(action.headers),
                    action.body,
                    connect_timeout=backend.connect_timeout,
                    first_byte_timeout=backend.first_byte_timeout,
                )
                phase = "reading"
                try:
                    await self._read(response, backend, deliver)
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.release()
        except GatewayError as err:
            await deliver(UpstreamFailed(error=err))
        except TRANSPORT_ERRORS as exc:
            what = timeout_phase(backend, total_expired=total.cancel_called, phase=phase)
            error = map_upstream_exception(exc, backend.name, phase=what)
            await deliver(UpstreamFailed(error=error))

    async def _read(
        self, response: PooledResponse, backend: BackendConfig, deliver: Deliver
    ) -> None:
        head = UpstreamResponseStarted(status=response.status, headers=tuple(response.headers))
        if not await deliver(head):
            return
        chunks = response.body()
        try:
            # One scope for the whole body, its deadline moved per chunk: a
            # new fail_after per chunk costs more than the chunk's own work.
            with anyio.CancelScope() as idle:
                while True:
                    idle.deadline = anyio.current_time() + backend.idle_timeout
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    idle.deadline = math.inf  # a slow client is not an idle backend
                    if chunk and not await deliver(chunk_received(chunk)):
                        await _drain(chunks)
                        return
            if idle.cancelled_caught:
                raise TimeoutError("idle")
        finally:
            # Close the generator here, in this task: trio refuses to
            # finalize async generators from the garbage collector.
            with anyio.CancelScope(shield=True):
                await chunks.aclose()  # type: ignore[attr-defined]
        await deliver(UpstreamClosed())
