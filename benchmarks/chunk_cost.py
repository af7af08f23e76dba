"""Gateway CPU per stream chunk, on both asyncio transports.

    .venv/bin/python -m benchmarks.chunk_cost [--transports fast anyio]
        [--concurrency 1 64] [--seconds 8] [--tokens 20] [--out FILE]

A local backend (in a child process) answers ``POST /api/chat`` as Ollama
does: each NDJSON line its own HTTP chunk, written in its own turn of the
event loop (so each reaches the gateway as its own read unless the gateway
falls behind), ``--tokens`` lines and the ``done`` line per stream, as fast
as it can.  One gateway process per transport (``serve``, asyncio, API keys,
memory-store limits that never deny, the SQLite ledger, the JSON access log
going to a file: as users run it; nothing pinned) serves
``/v1/chat/completions`` streams to a closed-loop client in this process at
each concurrency.

Reported per transport and concurrency:
* ``us_per_chunk``: the gateway's process CPU time (user + system, from
  /proc) over the run, divided by the stream chunks it relayed (the
  backend's lines, ``done`` line included);
* streams/s, and TTFT p50 (request sent to first body chunk read) and the
  whole stream's p50, at the client.

The backend, the client and the gateway share the machine's cores: streams/s
says what this machine sustains; µs per chunk is the gateway's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from benchmarks.many_streams import CONFIG, KEY, PY, _pct, _proc_stat, _process
from sansio_gateway.auth import hash_key

LINE = (
    b'{"model":"bench:latest","created_at":"2026-01-01T00:00:00Z",'
    b'"message":{"role":"assistant","content":"tok%d "},"done":false}\n'
)
FINAL = (
    b'{"model":"bench:latest","created_at":"2026-01-01T00:00:00Z",'
    b'"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
    b'"total_duration":1,"load_duration":1,"prompt_eval_count":8,'
    b'"prompt_eval_duration":1,"eval_count":%d,"eval_duration":1}\n'
)
WHOLE = (
    b'{"model":"bench:latest","created_at":"2026-01-01T00:00:00Z",'
    b'"message":{"role":"assistant","content":"a whole answer"},"done":true,'
    b'"done_reason":"stop","total_duration":1,"load_duration":1,"prompt_eval_count":8,'
    b'"prompt_eval_duration":1,"eval_count":%d,"eval_duration":1}'
)
TAGS = json.dumps(
    {"models": [{"name": "bench:latest", "model": "bench:latest",
                 "modified_at": "2026-01-01T00:00:00Z", "size": 1, "digest": "0" * 64,
                 "details": {"family": "bench"}}]}
).encode()  # fmt: skip


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# ---- the backend (child process) ----------------------------------------------------


class _Backend(asyncio.Protocol):
    tokens = 20
    pace = 0.0  # seconds between lines; 0: one per turn of the loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            if b"content-length:" in head:
                start = head.index(b"content-length:") + 15
                stop = head.find(b"\r\n", start)
                length = int(head[start : stop if stop > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if head.split(b" ", 2)[1] == b"/api/tags":
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(TAGS), TAGS)
                )
                continue
            if b'"stream":false' in body:  # one JSON answer (benchmarks/critical_path.py)
                answer = WHOLE % self.tokens
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                continue
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            self.loop.call_soon(self._line, 0)

    def _line(self, i: int) -> None:
        # One line per turn of the loop: each leaves in its own write.
        if self.transport.is_closing():
            return
        if i < self.tokens:
            self.transport.write(_chunk(LINE % i))
            if self.pace:
                self.loop.call_later(self.pace, self._line, i + 1)
            else:
                self.loop.call_soon(self._line, i + 1)
        else:
            self.transport.write(_chunk(FINAL % self.tokens) + b"0\r\n\r\n")


async def _serve_backend(tokens: int, pace: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    protocol = type("Backend", (_Backend,), {"tokens": tokens, "pace": pace})
    server = await loop.create_server(protocol, "127.0.0.1", 0, backlog=4096)
    print(f"chunk backend on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


# ---- the floor: a relay that only moves bytes (child process) ---------------------------


class _RelayUpstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)


class _Relay(asyncio.Protocol):
    """Each client connection gets one backend connection; bytes pass both
    ways untouched.  What it costs per chunk is the floor every relay pays
    on this machine: the socket reads and writes, the loop, the wake-ups."""

    backend: tuple[str, int] = ("127.0.0.1", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.early: list[bytes] = []
        self.upstream: asyncio.Transport | None = None
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(
            lambda: _RelayUpstream(self.transport), *self.backend
        )
        self.upstream = cast(asyncio.Transport, upstream)
        for data in self.early:
            self.upstream.write(data)

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def _serve_relay(backend: str) -> None:
    host, port = backend.removeprefix("http://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    protocol = type("Relay", (_Relay,), {"backend": (host, int(port))})
    server = await loop.create_server(protocol, "127.0.0.1", 0, backlog=4096)
    print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


# ---- the client ------------------------------------------------------------------------------


async def _stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[float, float, int]:
    """One streamed request on a kept-alive connection: (ttft, total, chunks)."""
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    ttft = 0.0
    chunks = 0
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        await reader.readexactly(size + 2)
        if not ttft:
            ttft = time.perf_counter() - started
        chunks += 1
    return ttft, time.perf_counter() - started, chunks


async def _drive(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(
        {"model": "bench:latest", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\nauthorization: Bearer %s\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (host.encode(), KEY.encode(), len(body), body)
    )
    ttfts: list[float] = []
    totals: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                try:
                    ttft, total, _ = await _stream(reader, writer, request)
                except (RuntimeError, OSError, asyncio.IncompleteReadError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                ttfts.append(ttft)
                totals.append(total)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"streams": len(totals), "errors": errors, "elapsed": elapsed,
            "ttfts": ttfts, "totals": totals}  # fmt: skip


def measure(
    transport: str,
    levels: list[int],
    seconds: float,
    tokens: int,
    tmp: Path,
    profile: Path | None = None,
    uvloop: bool = True,
    pace_ms: float = 0.0,
) -> list[dict[str, Any]]:
    rows = []
    backend_cmd = [PY, "-m", "benchmarks.chunk_cost", "--backend", "--tokens", str(tokens),
                   "--pace-ms", str(pace_ms)]  # fmt: skip
    with _process(backend_cmd, "chunk backend on ") as (_, backend):
        cfg = tmp / f"gateway-{transport}.toml"
        text = CONFIG.format(backend=backend, digest=hash_key(KEY), tmp=tmp, max_connections=500)
        if not uvloop:
            text = text.replace("[server]\n", "[server]\nuvloop = false\n", 1)
        cfg.write_text(text)
        log_path = tmp / f"access-{transport}.log"
        cmd = [PY, "-m", "sansio_gateway.adapters.cli", "serve", "--config", str(cfg),
               "--port", "0", "--transport", transport]  # fmt: skip
        if transport == "relay":
            cmd = [PY, "-m", "benchmarks.chunk_cost", "--relay", backend]
        if profile is not None:
            # cProfile writes its stats when serve returns (SIGTERM drains and exits).
            out = profile / f"gateway-{transport}.prof"
            cmd[1:3] = ["-m", "cProfile", "-o", str(out), "-m", "sansio_gateway.adapters.cli"]
        with log_path.open("w") as log, _process(cmd, "listening on ", log) as (gateway, url):
            asyncio.run(_drive(url, 4, 1.0))  # warm up: pools, caches, the ledger's table
            for c in levels:
                cpu_before = _proc_stat(gateway.pid)[0]
                run = asyncio.run(_drive(url, c, seconds))
                cpu = _proc_stat(gateway.pid)[0] - cpu_before
                chunks = run["streams"] * (tokens + 1)
                rows.append({
                    "transport": transport,
                    "concurrency": c,
                    "us_per_chunk": round(cpu / chunks * 1e6, 1) if chunks else None,
                    "streams_per_s": round(run["streams"] / run["elapsed"], 1),
                    "ttft_p50_ms": round(_pct(run["ttfts"], 50) * 1000, 2),
                    "total_p50_ms": round(statistics.median(run["totals"]) * 1000, 2),
                    "gateway_cpu_cores": round(cpu / run["elapsed"], 2),
                    "errors": run["errors"],
                })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--transports", nargs="+", default=["fast", "anyio"],
        help="fast, anyio, or relay: a uvloop proxy that only moves bytes (the floor)",
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--tokens", type=int, default=20, help="NDJSON lines per stream")
    parser.add_argument(
        "--pace-ms", type=float, default=0.0,
        help="the backend waits this long between lines (each then reaches the gateway as"
        " its own read, as a real model's tokens do); 0: as fast as it can",
    )  # fmt: skip
    parser.add_argument(
        "--no-uvloop", action="store_true",
        help="serve on asyncio's own loop even when uvloop is installed",
    )  # fmt: skip
    parser.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay", metavar="BACKEND_URL", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="run each gateway under cProfile; its stats go to DIR/gateway-TRANSPORT.prof",
    )  # fmt: skip
    args = parser.parse_args()
    if args.backend:
        asyncio.run(_serve_backend(args.tokens, args.pace_ms / 1000))
        return
    if args.relay:
        import uvloop

        uvloop.run(_serve_relay(args.relay))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for transport in args.transports:
            rows += measure(
                transport, args.concurrency, args.seconds, args.tokens, Path(tmp), args.profile,
                uvloop=not args.no_uvloop, pace_ms=args.pace_ms,
            )  # fmt: skip
    print(f"{platform.node()} {platform.machine()} Python {sys.version.split()[0]}")
    print(f"{'transport':>9} {'c':>3} {'µs/chunk':>9} {'streams/s':>10} {'TTFT p50':>9}"
          f" {'total p50':>10} {'cores':>6} {'errors':>6}")  # fmt: skip
    for r in rows:
        print(f"{r['transport']:>9} {r['concurrency']:>3} {r['us_per_chunk']:>9} "
              f"{r['streams_per_s']:>10} {r['ttft_p50_ms']:>7}ms {r['total_p50_ms']:>8}ms "
              f"{r['gateway_cpu_cores']:>6} {r['errors']:>6}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
