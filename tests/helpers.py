"""Shared test drivers.

* :class:`ExchangeDriver` runs an Exchange against scripted upstream results,
  with no sockets (cf. h11's ``ConnectionPair``), and collects what a client
  would receive.
* :func:`running_gateway` serves a real GatewayApp on a loopback port in a
  background thread (asyncio or trio), for integration tests.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio.from_thread
import orjson
from sansio_gateway.adapters.app import GatewayApp
from sansio_gateway.adapters.fast_server import FastGatewayServer
from sansio_gateway.adapters.fast_upstream import FastUpstreamClient
from sansio_gateway.adapters.ledger import MemoryLedger

from sansio_gateway.actions import (
    SHARED_WRITES,
    Action,
    CancelUpstream,
    CatalogueRefreshed,
    CheckLimits,
    CommitLimits,
    EndResponse,
    LimitsDecided,
    RecordUsage,
    RefreshCatalogue,
    Result,
    SendBody,
    SendUpstream,
    StartResponse,
    UsageRecord,
)
from sansio_gateway.config import GatewayConfig, parse_config
from sansio_gateway.exchange import Exchange
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import IncomingRequest
from sansio_gateway.limits import Decision, MemoryLimitStore

NOW = 1_764_000_000.0


def make_config(toml: str = "", **env: str) -> GatewayConfig:
    return parse_config(toml, source="test.toml", env=env)


@dataclass
class Collected:
    """What the client saw, plus what the core asked of the adapter."""

    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False
    keep_alive: bool = True
    upstream: list[SendUpstream] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    cancelled: bool = False
    actions: list[Action] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    commits: list[CommitLimits] = field(default_factory=list)

    def json(self) -> Any:
        return orjson.loads(self.body)

    def sse_payloads(self) -> list[Any]:
        out: list[Any] = []
        for block in self.body.split(b"\n\n"):
            if not block:
                continue
            assert block.startswith(b"data: "), block
            data = block[len(b"data: ") :]
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
        return out


class ExchangeDriver:
    def __init__(
        self,
        gateway: Gateway,
        *,
        request_id: str = "req1",
        limits: MemoryLimitStore | None = None,
    ) -> None:
        self.gateway = gateway
        self.exchange: Exchange = gateway.exchange(request_id)
        self.seen = Collected()
        self.limits = limits if limits is not None else MemoryLimitStore()
        self.now = NOW

    def _take(self, actions: list[Action]) -> list[Action]:
        seen = self.seen
        for action in actions:  # as the adapter would: shared writes first, before anything
            if isinstance(action, SHARED_WRITES):
                self.gateway.apply_write(action, self.now)
        for action in actions:
            seen.actions.append(action)
            if isinstance(action, StartResponse):
                assert seen.status is None, "two StartResponse actions"
                seen.status = action.status
                seen.headers = dict(action.headers)
            elif isinstance(action, SendBody):
                assert seen.status is not None and not seen.ended
                seen.body += action.data
            elif isinstance(action, EndResponse):
                assert not seen.ended, "two EndResponse actions"
                seen.ended = True
                seen.keep_alive = action.keep_alive
            elif isinstance(action, SendUpstream):
                seen.upstream.append(action)
            elif isinstance(action, RecordUsage):
                seen.usage.append(action.record)
            elif isinstance(action, CancelUpstream):
                seen.cancelled = True
            elif isinstance(action, CheckLimits):
                # As the adapter would: the store decides, with the driver's clock.
                decision = self.limits.admit(
                    action.key, action.specs, int(self.now * 1e6), action.costs, action.request_id
                )
                seen.decisions.append(decision)
                self.handle(LimitsDecided(decision=decision), self.now)
            elif isinstance(action, CommitLimits):
                seen.commits.append(action)
                self.limits.commit(
                    action.key, action.specs, int(self.now * 1e6), action.request_id,
                    action.estimate, action.actual,
                )  # fmt: skip
            elif isinstance(action, RefreshCatalogue):
                # As the adapter would: rediscover (nothing new here), then report.
                self.handle(CatalogueRefreshed())
        return actions

    def start(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] = b"",
        now: float = NOW,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> list[Action]:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        request = IncomingRequest(method=method, path=path, body=raw, headers=headers)
        self.now = now
        return self._take(self.exchange.start(request, now))

    def handle(self, result: Result, now: float | None = None) -> list[Action]:
        self.now = self.now + 1 if now is None else now
        return self._take(self.exchange.handle(result, self.now))


TEST_TRANSPORT = "SANSIO_GATEWAY_TEST_TRANSPORT"
# "h11": the fast upstream client reads responses with h11 even when
# httptools is installed (adapters/fast_http.py), for a whole suite.
TEST_PARSER = "SANSIO_GATEWAY_TEST_PARSER"


@dataclass
class RunningGateway:
    app: GatewayApp
    url: str
    ledger: MemoryLedger
    portal: Any = None  # anyio BlockingPortal running the app's event loop


@contextlib.contextmanager
def running_gateway(
    config: GatewayConfig,
    *,
    runtime: str = "asyncio",
    transport: str | None = None,
    parser: str | None = None,
    uvloop: bool = False,
) -> Iterator[RunningGateway]:
    """``transport`` (fast or anyio) matters on asyncio only; by default the
    config's, or TEST_TRANSPORT from the environment, which runs a whole
    suite on the other transport (docs/architecture.md, "The fast transport").
    ``parser`` ("h11", or TEST_PARSER) keeps httptools out of the fast
    upstream client and the fast server; ``uvloop`` runs the asyncio runtime on uvloop."""
    transport = transport or os.environ.get(TEST_TRANSPORT)
    if transport:
        server = config.server.model_copy(update={"transport": transport})
        config = config.model_copy(update={"server": server})
    ledger = MemoryLedger()
    app = GatewayApp(config, ledger=ledger)
    if (parser or os.environ.get(TEST_PARSER)) == "h11":
        if isinstance(app.upstream, FastUpstreamClient):
            app.upstream.use_httptools = False
        if isinstance(app.server, FastGatewayServer):
            app.server.use_httptools = False
    options = {"use_uvloop": True} if uvloop else {}
    with anyio.from_thread.start_blocking_portal(
        backend=runtime, backend_options=options
    ) as portal:
        future, (host, port) = portal.start_task(app.serve, "127.0.0.1", 0)
        try:
            yield RunningGateway(app=app, url=f"http://{host}:{port}", ledger=ledger, portal=portal)
        finally:
            portal.call(_noop)
            future.cancel()
            with contextlib.suppress(BaseException):
                future.result(timeout=10)


async def _noop() -> None:
    return None


def wait_for(predicate: Any, *, timeout: float = 10.0, what: Any = None) -> None:
    """Poll ``predicate`` until true (tests never sleep to wait)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            detail = f": {what()}" if what is not None else ""
            raise AssertionError(f"condition not met in time{detail}")
        time.sleep(0.002)


class OtlpCollector:
    """A loopback OTLP/HTTP receiver: records each export's path and headers."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        done = self.got = threading.Event()
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                done.set()

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpCollector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
