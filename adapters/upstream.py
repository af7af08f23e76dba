"""The upstream client: httpcore's connection pool, streaming, with timeouts.

It executes one ``SendUpstream`` action and reports what happens as results
(``UpstreamResponseStarted``, ``UpstreamChunkReceived``, ``UpstreamClosed``,
``UpstreamFailed``) to a callback.  Library exceptions are mapped to the
core's typed errors in one place, :func:`map_upstream_exception`, as
httpcore's own ``map_exceptions`` does.

Timeouts per backend: connect (httpcore's connect timeout), first byte
(head of the response), idle (between body chunks) and total.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import httpcore

from sansio_gateway.actions import (
    Result,
    SendUpstream,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
)
from sansio_gateway.config import BackendConfig
from sansio_gateway.errors import GatewayError, UpstreamError, UpstreamTimeout

__all__ = ["UpstreamClient", "map_upstream_exception"]

Deliver = Callable[[Result], Awaitable[bool]]


def map_upstream_exception(exc: BaseException, backend: str) -> GatewayError:
    if isinstance(exc, TimeoutError | httpcore.TimeoutException):
        if isinstance(exc, httpcore.ConnectTimeout):
            return UpstreamTimeout(f"timed out connecting to backend {backend!r}")
        return UpstreamTimeout(f"backend {backend!r} timed out")
    if isinstance(exc, httpcore.ConnectError | OSError):
        return UpstreamError(
            f"could not connect to backend {backend!r}: {exc or type(exc).__name__}",
            code="upstream_unreachable",
        )
    if isinstance(exc, httpcore.RemoteProtocolError | httpcore.ReadError | httpcore.WriteError):
        return UpstreamError(f"connection to backend {backend!r} was lost")
    if isinstance(exc, httpcore.UnsupportedProtocol | httpcore.LocalProtocolError):
        return UpstreamError(f"cannot talk to backend {backend!r}: {exc}")
    return UpstreamError(f"backend {backend!r} failed: {type(exc).__name__}")


# After the Exchange is done (Ollama's `done` line arrived), the rest of the
# body is usually just the chunked terminator.  Reading it keeps the
# connection in the pool; a backend that keeps talking is cut off.
DRAIN_SECONDS = 0.5
DRAIN_BYTES = 1 << 20


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    seen = 0
    with anyio.move_on_after(DRAIN_SECONDS):
        async for chunk in chunks:
            seen += len(chunk)
            if seen > DRAIN_BYTES:
                return


class UpstreamClient:
    def __init__(self, *, max_connections: int = 512, keepalive_expiry: float = 30.0) -> None:
        self.pool = httpcore.AsyncConnectionPool(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
        )

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def request(self, action: SendUpstream, backend: BackendConfig, deliver: Deliver) -> None:
        """Run ``action``; report every fact through ``deliver``.

        ``deliver`` returns False when the Exchange wants no more (it is
        done, or cancelled the upstream); the request is then abandoned and
        its connection discarded by httpcore.
        """
        try:
            with anyio.fail_after(backend.total_timeout):
                await self._request(action, backend, deliver)
        except GatewayError as err:
            await deliver(UpstreamFailed(error=err))
        except (
            TimeoutError,
            httpcore.TimeoutException,
            httpcore.NetworkError,
            OSError,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
        ) as exc:
            await deliver(UpstreamFailed(error=map_upstream_exception(exc, backend.name)))

    async def _request(
        self, action: SendUpstream, backend: BackendConfig, deliver: Deliver
    ) -> None:
        extensions = {
            "timeout": {
                "connect": backend.connect_timeout,
                "read": backend.first_byte_timeout,
                "write": backend.connect_timeout,
                "pool": backend.connect_timeout,
            }
        }
        with anyio.fail_after(backend.connect_timeout + backend.first_byte_timeout):
            stream_cm = self.pool.stream(
                action.method,
                action.url,
                headers=list(action.headers),
                content=action.body,
                extensions=extensions,
            )
            response = await stream_cm.__aenter__()
        try:
            await self._read(response, backend, deliver)
        finally:
            with anyio.CancelScope(shield=True):
                await stream_cm.__aexit__(None, None, None)

    async def _read(
        self, response: httpcore.Response, backend: BackendConfig, deliver: Deliver
    ) -> None:
        headers = tuple((k.lower(), v) for k, v in response.headers)
        if not await deliver(UpstreamResponseStarted(status=response.status, headers=headers)):
            return
        chunks = response.aiter_stream()
        try:
            while True:
                with anyio.fail_after(backend.idle_timeout):
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                if chunk and not await deliver(UpstreamChunkReceived(data=chunk)):
                    await _drain(chunks)
                    return
        finally:
            # Close the generator here, in this task: trio refuses to
            # finalize async generators from the garbage collector.
            with anyio.CancelScope(shield=True):
                await chunks.aclose()  # type: ignore[attr-defined]
        await deliver(UpstreamClosed())
