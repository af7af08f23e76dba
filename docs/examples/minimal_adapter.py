"""A minimal adapter: the gateway's core driven by a hand-written asyncio loop.

Everything the gateway decides -- routing, validation, translation, errors,
usage -- happens in the core.  This file only moves bytes: it parses HTTP
just enough (no keep-alive, no chunked request bodies), executes the actions
the Exchange returns, and reports what happened back to it::

    actions = exchange.start(request, now)
    ...execute each action; some produce a result...
    actions = exchange.handle(result, now)

Run it in front of an Ollama server::

    python docs/examples/minimal_adapter.py http://127.0.0.1:11434 --port 8081

then point an OpenAI client at http://127.0.0.1:8081/v1.  Each request
prints one ``usage`` line.  ``docs/embedding.md`` walks through this file
(the ``--8<--`` comments mark the parts it shows); ``adapters/`` holds the
production versions of each piece.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import asdict
from http import HTTPStatus
from urllib.parse import urlsplit

from sansio_gateway import (
    Action,
    AssetLoaded,
    CatalogueRefreshed,
    CheckLimits,
    ClientDisconnected,
    CollectMetrics,
    CollectOverview,
    CommitLimits,
    CountBackendAttempt,
    EndResponse,
    Exchange,
    ExchangeState,
    Gateway,
    Headers,
    IncomingRequest,
    LimitsDecided,
    LoadAsset,
    MemoryLimitStore,
    MetricsCollected,
    OverviewCollected,
    OverviewSnapshot,
    QueryUsage,
    RecordBackendOutcome,
    RecordUsage,
    RefreshCatalogue,
    Result,
    SendBody,
    SendUpstream,
    StartResponse,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamError,
    UpstreamFailed,
    UpstreamResponseStarted,
    UsageQueried,
    default_config,
)

MAX_HEAD = 64 * 1024  # every buffer has a limit
MAX_BODY = 16 * 1024 * 1024


# ---- a tiny HTTP/1.1 client, for the backend -------------------------------------


async def http_request(
    method: str, url: str, headers: Headers, body: bytes
) -> tuple[int, Headers, AsyncGenerator[bytes, None]]:
    """Send one request (``Connection: close``); returns status, headers and body chunks."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    head = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1"]
    head += [f"host: {parts.netloc}", f"content-length: {len(body)}", "connection: close"]
    head += [f"{k.decode()}: {v.decode()}" for k, v in headers if k != b"content-length"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    status, response_headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    return status, response_headers, read_body(reader, writer, response_headers)


async def read_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: Headers
) -> AsyncGenerator[bytes, None]:
    """The body as it arrives: de-chunked, else up to EOF (we asked for close)."""
    try:
        if (b"transfer-encoding", b"chunked") in headers:
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                yield (await reader.readexactly(size + 2))[:-2]
        else:
            while chunk := await reader.read(65536):
                yield chunk
    finally:
        writer.close()


def parse_head(raw: bytes) -> tuple[int, Headers]:
    """Status (or method and path) line and lower-cased headers of an HTTP head."""
    first, *lines = raw.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower().encode(), value.strip().encode("latin-1")))
    status = int(first.split()[1]) if first.startswith("HTTP/") else 0
    return status, tuple(headers)


# --8<-- [start:errors]
UPSTREAM_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


def upstream_failed(exc: Exception) -> UpstreamFailed:
    """Map a transport exception to the core's typed error (cf. adapters/upstream.py)."""
    return UpstreamFailed(error=UpstreamError(f"backend failed: {type(exc).__name__}: {exc}"))


async def drained(writer: asyncio.StreamWriter) -> ClientDisconnected | None:
    """Wait for the client to take the bytes; report it if it has gone away."""
    try:
        await writer.drain()
    except ConnectionError:
        # The core answers with CancelUpstream and a RecordUsage: usage is never lost.
        return ClientDisconnected()
    return None
    # --8<-- [end:errors]


# ---- the adapter ---------------------------------------------------------------------


# --8<-- [start:gateway]
class MinimalAdapter:
    """Serves one client connection per request with one Exchange each."""

    def __init__(self, ollama_url: str) -> None:
        self.gateway = Gateway(default_config({"OLLAMA_HOST": ollama_url}))
        self.limits = MemoryLimitStore()  # only consulted if the config sets limits

    async def discover(self) -> None:
        """List the backend's models so the core can route to them."""
        for backend in self.gateway.config.backends:
            url = backend.url + self.gateway.discovery_path(backend.name)
            status, _, chunks = await http_request("GET", url, (), b"")
            body = b"".join([chunk async for chunk in chunks])
            if status != 200:
                self.gateway.record_discovery_failure(backend.name, f"HTTP {status}", time.time())
                continue
            models = self.gateway.parse_discovery(backend.name, body)
            self.gateway.record_discovery(backend.name, models, time.time())

    # --8<-- [end:gateway]
    # --8<-- [start:request]
    async def handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await self.read_request(reader)
            exchange = self.gateway.exchange(uuid.uuid4().hex)
            await self.execute(exchange, exchange.start(request, time.time()), writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass  # a broken or oversized request, or a client gone: just hang up
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> IncomingRequest:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        _, headers = parse_head(head)
        length = int(dict(headers).get(b"content-length", b"0"))
        if length > MAX_BODY:
            raise ValueError("request body too large")
        body = await reader.readexactly(length) if length else b""
        path, _, query = target.partition("?")
        return IncomingRequest(method=method, path=path, query=query, headers=headers, body=body)

    # --8<-- [end:request]
    # --8<-- [start:execute]
    async def execute(
        self, exchange: Exchange, actions: list[Action], writer: asyncio.StreamWriter
    ) -> None:
        """Do what each action asks; feed any result back and do what that asks."""
        # Writes to the shared Gateway first, before any await: the Exchange
        # decided on a preview of exactly the state they produce.
        for action in actions:
            if isinstance(action, (CountBackendAttempt, RecordBackendOutcome, RefreshCatalogue)):
                self.gateway.apply_write(action, time.time())
        for action in actions:
            result = await self.perform(exchange, action, writer)
            if result is not None:
                await self.execute(exchange, exchange.handle(result, time.time()), writer)

    async def perform(
        self, exchange: Exchange, action: Action, writer: asyncio.StreamWriter
    ) -> Result | None:
        now = time.time()
        match action:
            case StartResponse(status=status, headers=headers):
                lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "connection: close"]
                lines += [f"{k.decode()}: {v.decode()}" for k, v in headers]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            case SendBody(data=data):
                writer.write(data)  # no content-length on streams: the close ends it
                return await drained(writer)
            case EndResponse():
                return await drained(writer)
            case SendUpstream():
                await self.proxy(exchange, action, writer)
            case RecordUsage(record=record, ledger=True):
                print("usage", json.dumps(asdict(record)), flush=True)
            case RecordUsage():
                pass  # a token count: nothing used, no ledger row (docs/rate-limiting.md)
            case CheckLimits():
                decision = self.limits.admit(
                    action.key, action.specs, int(now * 1e6), action.costs, action.request_id
                )
                return LimitsDecided(decision=decision)
            case CommitLimits():
                self.limits.commit(
                    action.key, action.specs, int(now * 1e6), action.request_id,
                    action.estimate, action.actual,
                )  # fmt: skip
            case RefreshCatalogue():
                await self.discover()
                return CatalogueRefreshed()
            case QueryUsage():
                return UsageQueried(rows=[])  # this adapter keeps no ledger
            case CollectMetrics():
                return MetricsCollected(body=b"", content_type=b"text/plain")
            case LoadAsset():
                return AssetLoaded(body=None)  # no status page files here: /ui answers 500
            case CollectOverview():  # /admin/overview: the core's figures, no traffic kept
                return OverviewCollected(snapshot=OverviewSnapshot.empty(now))
            case CountBackendAttempt() | RecordBackendOutcome():
                pass  # applied as the list arrived (execute)
            case _:  # CancelUpstream: proxy() stops reading once the Exchange is done
                pass
        return None

    # --8<-- [end:execute]
    # --8<-- [start:proxy]
    async def proxy(
        self, exchange: Exchange, call: SendUpstream, writer: asyncio.StreamWriter
    ) -> None:
        """Run one upstream call, reporting each fact to the Exchange as it happens."""
        await asyncio.sleep(call.delay)  # a retry's backoff, decided by the core
        try:
            status, headers, chunks = await http_request(
                call.method, call.url, call.headers, call.body
            )
        except UPSTREAM_ERRORS as exc:
            await self.report(exchange, upstream_failed(exc), writer)
            return
        try:
            started = UpstreamResponseStarted(status=status, headers=headers)
            await self.report(exchange, started, writer)
            # Once the Exchange is done (Ollama's done line), nothing more is wanted.
            while exchange.state is not ExchangeState.DONE:
                try:
                    chunk = await anext(chunks, None)
                except UPSTREAM_ERRORS as exc:
                    await self.report(exchange, upstream_failed(exc), writer)
                    return
                if chunk is None:
                    await self.report(exchange, UpstreamClosed(), writer)
                    break
                await self.report(exchange, UpstreamChunkReceived(data=chunk), writer)
        finally:
            await chunks.aclose()  # closes the backend connection

    async def report(
        self, exchange: Exchange, result: Result, writer: asyncio.StreamWriter
    ) -> None:
        await self.execute(exchange, exchange.handle(result, time.time()), writer)
        # --8<-- [end:proxy]


async def serve(ollama_url: str, host: str, port: int, requests: int | None) -> None:
    adapter = MinimalAdapter(ollama_url)
    await adapter.discover()
    served = asyncio.Event()
    count = 0

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        await adapter.handle_client(reader, writer)
        count += 1
        if requests is not None and count >= requests:
            served.set()

    server = await asyncio.start_server(on_connection, host, port, limit=MAX_HEAD)
    bound = server.sockets[0].getsockname()
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    async with server:
        await served.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ollama_url", help="e.g. http://127.0.0.1:11434")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--requests", type=int, help="exit after serving this many")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.ollama_url, args.host, args.port, args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
