"""The ASGI adapter: the same Exchange, driven from any ASGI server or framework.

Theory of operation: :func:`create_app` wires a gateway exactly as
``sansio-gateway serve`` does (:class:`~sansio_gateway.adapters.wiring.Wiring`: the
Gateway, upstream pool, limit store, usage ledger, metrics and the shared
transport front) and returns a :class:`GatewayASGI` callable.  Per HTTP
request it drives the front as its contract says
(``adapters/front.py``): the head is judged before the body is read (no
key: 401, so an unauthenticated body is never read), the body is read
under ``server.max_body_bytes`` and ``server.read_timeout``, and the
request goes to the shared executor with an
ASGI :class:`~sansio_gateway.adapters.executor.ResponseChannel`: ``StartResponse`` becomes
``http.response.start``, the ``SendBody`` of each batch of actions one
``http.response.body`` with ``more_body``, and ``EndResponse`` clears
``more_body`` on the last one (a whole answer is two messages; each stream
chunk one).  While the backend answers, the channel awaits
``http.disconnect`` from ``receive``; the executor then reports
``ClientDisconnected``, so the upstream is cancelled and the usage still
recorded.  A request the server cancels is accounted for the same way.

``POST /admin/reload`` (an admin key) reads the config file again, as
``SIGHUP`` does for ``serve`` (a signal belongs to the server hosting the
app); an app made from a config object has no file to read and answers 409.

The ``lifespan`` protocol starts discovery, the ledger's writer and the
backend probes, and at shutdown ends what is still in flight and flushes
the ledger.  Frameworks that do not forward lifespan to mounted apps
(Starlette's ``Mount``) take :meth:`GatewayASGI.lifespan` as theirs.

Mounted under a prefix, the app routes on the path below ``root_path``
(``/llm/v1/models`` -> ``/v1/models``), however the server or framework
fills ``path``: ASGI servers now include ``root_path`` in ``path``, older
ones and some frameworks do not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from sansio_gateway.auth import anonymous_bind_problem
from sansio_gateway.config import GatewayConfig
from sansio_gateway.http import Headers, IncomingRequest
from sansio_gateway.transport import content_length, no_api_keys

from .executor import ClientGone
from .front import Refused, TransportFront
from .ledger import UsageLedger
from .wiring import ConfigSource, Wiring

__all__ = ["CONFIG_ENV", "GatewayASGI", "create_app", "route_path"]

log = logging.getLogger("sansio_gateway.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# `uvicorn --factory sansio_gateway.adapters.asgi:create_app` calls create_app() with no
# arguments; the config file then comes from this variable.
CONFIG_ENV = "SANSIO_GATEWAY_CONFIG"


def create_app(
    config: GatewayConfig | str | os.PathLike[str] | None = None,
    *,
    ledger: UsageLedger | None = None,
    allow_anonymous: bool = False,
    worker_count: int = 1,
) -> GatewayASGI:
    """An ASGI app serving ``config``: a parsed config, a TOML file path, or
    None for ``$SANSIO_GATEWAY_CONFIG`` (else the no-config defaults).

    ``allow_anonymous`` is ``serve --allow-anonymous``: without API keys the
    app answers only requests that reached it on a loopback address.
    ``worker_count`` is how many processes share a memory limit store (each
    enforces 1/N of every limit), as ``serve --workers N`` does.
    """
    source = None
    if not isinstance(config, GatewayConfig):
        path = os.fspath(config) if config is not None else os.environ.get(CONFIG_ENV)
        # POST /admin/reload reads it again; the server's address is judged
        # per request (_open_to_the_network), so no bind host here.
        source = ConfigSource(path, allow_anonymous=allow_anonymous)
        config = source.load()
    return GatewayASGI(
        config,
        ledger=ledger,
        allow_anonymous=allow_anonymous,
        worker_count=worker_count,
        source=source,
    )


class GatewayASGI:
    """The gateway as an ASGI 3 application (``http`` and ``lifespan`` scopes)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        ledger: UsageLedger | None = None,
        allow_anonymous: bool = False,
        worker_count: int = 1,
        clock: Callable[[], float] = time.time,
        source: ConfigSource | None = None,
    ) -> None:
        # The wiring `serve` uses, without its TCP listener.  `source`: the
        # file POST /admin/reload reads again (None: the config was an object).
        self.app = Wiring(
            config, ledger=ledger, worker_count=worker_count, clock=clock, source=source
        )
        self.front: TransportFront = self.app.front
        self.allow_anonymous = allow_anonymous
        self._started = False
        self._closed = False
        self._lazy_start: anyio.Event | None = None
        # Per server address, for the Gateway that judged it: a reload may
        # remove every key, and the answer then changes.
        self._unsafe_hosts: dict[str, str | None] = {}
        self._unsafe_judged_by: object = None

    @property
    def config(self) -> GatewayConfig:
        return self.app.config

    @property
    def ledger(self) -> UsageLedger:
        return self.app.ledger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan_protocol(receive, send)
        elif kind == "websocket":
            # Closing before accepting is the ASGI way to refuse (HTTP 403).
            await send({"type": "websocket.close", "code": 1008})

    # ---- lifespan ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        """Startup and shutdown as an async context manager, for frameworks:
        ``Starlette(routes=[Mount("/llm", app=gw)], lifespan=gw.lifespan)``."""
        await self.app.start()
        self._started = True
        if self.app.gateway.authenticator.open and not self.allow_anonymous:
            log.warning("no API keys configured: only loopback clients will be served")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.app.run_services)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """End what is still in flight, then flush the ledger and close pools.

        The lifespan shutdown calls it; call it yourself when no lifespan runs.
        """
        if self._closed:
            return
        self._closed = True
        cut = self.front.abort_in_flight()
        with anyio.CancelScope(shield=True):
            if cut:
                log.warning("shutdown: %d requests in flight were cut short", cut)
                # Their usage is recorded as they end; the ledger must still be open.
                with anyio.move_on_after(5):
                    await self.front.wait_idle()
            await self.app.aclose()

    async def _lifespan_protocol(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        started = False
        try:
            async with self.lifespan():
                started = True
                await send({"type": "lifespan.startup.complete"})
                await receive()  # lifespan.shutdown
        except Exception as exc:
            phase = "shutdown" if started else "startup"
            log.exception("lifespan %s failed", phase)
            await send({"type": f"lifespan.{phase}.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _ensure_started(self) -> None:
        """Without lifespan (a framework that drops it), discover on first use."""
        if self._started:
            return
        if self._lazy_start is not None:
            await self._lazy_start.wait()
            return
        self._lazy_start = anyio.Event()
        log.warning(
            "the ASGI lifespan did not run: backends are discovered now, but there are"
            " no health probes and the usage ledger is not flushed; pass"
            " lifespan=app.lifespan to the framework that mounts the gateway"
        )
        try:
            await self.app.discover_all()
        finally:
            self._started = True
            self._lazy_start.set()

    # ---- http --------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = _ASGIChannel(receive, send)
        path = route_path(scope)
        problem = self._open_to_the_network(scope)
        if problem is not None:
            await channel.send_refusal(*self.front.refusal(Refused(no_api_keys(problem), path)))
            return
        await self._ensure_started()
        try:
            request = await self._read_request(scope, receive, path)
        except Refused as refused:
            await channel.send_refusal(*self.front.refusal(refused, path))
            return
        except ClientGone:
            return
        await self.front.serve(request, channel)

    def _open_to_the_network(self, scope: Scope) -> str | None:
        """serve's loopback rule, per server address: an open gateway (no keys)
        answers only on loopback unless ``allow_anonymous``."""
        if self.allow_anonymous:
            return None
        server = scope.get("server")
        if not server or server[1] is None:
            return None  # a unix socket: only local processes reach it
        host = str(server[0])
        if self._unsafe_judged_by is not self.app.gateway:
            self._unsafe_hosts.clear()
            self._unsafe_judged_by = self.app.gateway
        if host not in self._unsafe_hosts:
            problem = anonymous_bind_problem(host, self.app.gateway.authenticator)
            if problem:
                log.error("%s (ASGI: pass allow_anonymous=True to create_app)", problem)
            self._unsafe_hosts[host] = problem
        return self._unsafe_hosts[host]

    async def _read_request(self, scope: Scope, receive: Receive, path: str) -> IncomingRequest:
        headers: Headers = tuple((bytes(k), bytes(v)) for k, v in scope["headers"])
        method = str(scope["method"])
        with self.front.reading(path):
            # Without a content-length a body may still come (chunked, HTTP/2).
            self.front.check_head(method, path, headers, body_follows=content_length(headers) != 0)
            body = await self.front.read_body(_BodyReader(receive), path)
        client = scope.get("client")
        return IncomingRequest(
            method=method,
            path=path,
            query=bytes(scope.get("query_string", b"")).decode("latin-1"),
            headers=headers,
            body=body,
            client=str(client[0]) if client else None,
        )


class _BodyReader:
    """The pieces of an ASGI request body, then None (the front's ``receive``)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._ended = False

    async def __call__(self) -> bytes | None:
        if self._ended:
            return None
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        self._ended = not message.get("more_body", False)
        return bytes(message.get("body", b""))


def route_path(scope: Scope) -> str:
    """The path the gateway routes on: ``path`` below ``root_path``.

    Servers following the current ASGI spec put ``root_path`` inside
    ``path``; others do not, so the prefix is removed only when present
    (as Starlette's ``get_route_path`` does).
    """
    path = str(scope["path"])
    root = str(scope.get("root_path") or "").rstrip("/")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


class _ASGIChannel:
    """A ResponseChannel over ASGI ``send`` / ``receive``."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._queued: list[Message] = []

    def start_response(self, status: int, headers: Headers) -> None:
        self._queued.append({"type": "http.response.start", "status": status, "headers": headers})

    def send_body(self, data: bytes) -> None:
        last = self._queued[-1] if self._queued else None
        if last is not None and last["type"] == "http.response.body":
            last["body"] += data  # pieces of one batch go out as one message
        else:
            self._queued.append({"type": "http.response.body", "body": data, "more_body": True})

    def end_response(self, *, keep_alive: bool) -> None:
        # ASGI cannot ask for the connection to close; the server decides.
        # The end rides on the last body message when there is one.
        last = self._queued[-1] if self._queued else None
        if last is not None and last["type"] == "http.response.body":
            last["more_body"] = False
        else:
            self._queued.append({"type": "http.response.body", "body": b"", "more_body": False})

    async def flush(self) -> None:
        queued, self._queued = self._queued, []
        for message in queued:
            await self._emit(message)

    async def _emit(self, message: Message) -> None:
        # ASGI 2.4 says a send to a closed connection raises an OSError
        # subclass, but servers differ (uvicorn drops it silently, hypercorn
        # may raise its own error).  Our messages are well-formed by
        # construction (the Exchange's invariants), so a failing send means
        # the client is unusable.
        try:
            await self._send(message)
        except Exception as exc:
            log.debug("ASGI send failed (%s); the client is gone", type(exc).__name__)
            raise ClientGone() from None

    async def wait_disconnected(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return

    async def send_refusal(self, status: int, headers: Headers, body: bytes) -> None:
        """An answer of the transport itself (adapters/front.py), written at once."""
        self.start_response(status, headers)
        self.send_body(body)
        self.end_response(keep_alive=False)
        with contextlib.suppress(ClientGone):
            await self.flush()
