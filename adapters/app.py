"""``sansio-gateway serve``: the wiring (``wiring.py``) behind a TCP listener.

``GatewayApp.serve`` runs until cancelled.  It reports the bound address
through anyio's ``task_status`` (so tests can bind port 0 and learn the
port), then serves connections -- on asyncio with the fast transport
(``fast_server.py``, asyncio.Protocol), on trio or when
``server.transport = "anyio"`` with the anyio one (``server.py``) --
while the wiring's services (discovery as health probe, the ledger's
writer, the limit store's upkeep) run alongside.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import anyio
import anyio.abc

from sansio_gateway.config import GatewayConfig

from .fast_server import FastGatewayServer
from .ledger import UsageLedger
from .server import GatewayServer
from .upstream import UpstreamClient
from .wiring import ConfigSource, Wiring
from .workers import signal_supervisor

__all__ = ["GatewayApp"]


class GatewayApp(Wiring):
    def __init__(
        self,
        config: GatewayConfig,
        *,
        ledger: UsageLedger | None = None,
        worker_count: int = 1,
        reuse_port: bool = False,
        clock: Callable[[], float] = time.time,
        worker_index: int = 0,
        source: ConfigSource | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        fast = config.server.runtime == "asyncio" and config.server.transport == "fast"
        super().__init__(
            config,
            ledger=ledger,
            worker_count=worker_count,
            clock=clock,
            worker_index=worker_index,
            fast=fast,
            source=source,
        )
        # Under `serve --workers N`: the parent, which forwards a SIGHUP to every worker.
        self.supervisor_pid = supervisor_pid
        self.fast = fast
        self.reuse_port = reuse_port
        self.server: GatewayServer | FastGatewayServer = (
            FastGatewayServer(front=self.front) if fast else GatewayServer(front=self.front)
        )
        self._accepting: anyio.CancelScope | None = None
        self._listener: asyncio.Server | None = None
        self._drained = anyio.Event()

    async def serve(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        host = host or self.config.server.host
        port = self.config.server.port if port is None else port
        if self.fast and not _on_asyncio():
            # Run under trio although the config names asyncio (tests pick
            # the event loop themselves): trio has only the anyio transport.
            self.fast = False
            self.executor.upstream = self.upstream = UpstreamClient()
            self.server = GatewayServer(front=self.front)
        await self.start()
        if isinstance(self.server, FastGatewayServer):
            await self._serve_fast(self.server, host, port, task_status)
            return
        listener = await anyio.create_tcp_listener(
            local_host=host, local_port=port, reuse_port=self.reuse_port
        )
        bound = listener.extra(anyio.abc.SocketAttribute.local_address)
        address = (str(bound[0]), int(bound[1]))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.run_services)
                # Connections live in their own task group, so closing the
                # listener (shutdown) does not cancel requests in flight.
                async with anyio.create_task_group() as connections:
                    with anyio.CancelScope() as self._accepting:
                        task_status.started(address)
                        await listener.serve(self.server.handle_connection, task_group=connections)
                    await self._drained.wait()
                    connections.cancel_scope.cancel()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
                await self.aclose()

    async def _serve_fast(
        self,
        server: FastGatewayServer,
        host: str,
        port: int,
        task_status: anyio.abc.TaskStatus[tuple[str, int]],
    ) -> None:
        """The asyncio.Protocol transport: the loop accepts and calls back,
        no task per accept (docs/architecture.md, "The fast transport")."""
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            server.protocol, host, port, reuse_port=self.reuse_port or None, backlog=65535
        )
        self._listener = listener
        bound = listener.sockets[0].getsockname()
        address = (str(bound[0]), int(bound[1]))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.run_services)
                task_status.started(address)
                await self._drained.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                listener.close()
                await server.close_all()
                await self.aclose()

    def tell_workers(self) -> bool:
        """``POST /admin/reload`` under ``--workers``: a SIGHUP to the parent
        makes it forward one to every worker (this one reloads again and
        finds nothing changed).  Only while the parent that started this
        worker is alive: never signal whatever process inherited its pid."""
        return self.supervisor_pid is not None and signal_supervisor(self.supervisor_pid)

    async def shutdown(self, grace: float | None = None) -> int:
        """Graceful shutdown: stop accepting, give requests in flight up to
        ``grace`` seconds (``server.shutdown_grace``) to finish, then end the
        rest with an error (an in-band error event for streams).  Their usage
        is recorded either way; ``serve`` then flushes the ledger and returns.
        Returns the number of requests that had to be cut short."""
        grace = self.config.server.shutdown_grace if grace is None else grace
        if self._accepting is not None:
            self._accepting.cancel()
        if self._listener is not None:
            self._listener.close()
        self.server.begin_drain()
        with anyio.move_on_after(grace):
            await self.server.wait_quiet()
        cut = self.server.abort_in_flight()
        with anyio.move_on_after(5):
            await self.server.wait_quiet()
        self._drained.set()
        return cut


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
