"""A lean Ollama-like backend for many paced streams (benchmarks/many_streams.py).

It answers ``GET /api/tags`` and ``POST /api/chat`` (streamed NDJSON), one
HTTP chunk per line as Ollama sends it, one token every ``1/rate`` seconds;
each token's text is ``t<monotonic ns>``, the moment it was written.
Thousands of streams are paced by one timer that ticks every millisecond
and writes the lines that are due, rather than one sleeping task per
stream, so the backend's own cost stays far below the gateway's it is
there to measure.  (The full emulator, ``sansio_gateway.adapters.emulator``
or ``tests/emulators``, models much more of Ollama and costs more per
request.)

    python -m benchmarks.paced_backend --port 0 --rate 20 --tokens 100

prints ``paced backend on http://127.0.0.1:PORT`` when it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import signal
import time
from typing import cast

MODEL = "bench:latest"
TAGS = json.dumps(
    {"models": [{"name": MODEL, "model": MODEL, "modified_at": "2026-01-01T00:00:00Z",
                 "size": 1, "digest": "0" * 64, "details": {"family": "bench"}}]}
).encode()  # fmt: skip


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _line() -> bytes:
    # The token is the time it was written (CLOCK_MONOTONIC, shared by every
    # process on the machine), so the client measures each token's transit
    # through the gateway rather than gaps that include the backend's own
    # lateness.
    return (
        b'{"model":"bench:latest","created_at":"2026-01-01T00:00:00Z",'
        b'"message":{"role":"assistant","content":"t%d "},"done":false}\n' % time.monotonic_ns()
    )


FINAL = (
    b'{"model":"bench:latest","created_at":"2026-01-01T00:00:00Z",'
    b'"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
    b'"total_duration":1,"load_duration":1,"prompt_eval_count":8,'
    b'"prompt_eval_duration":1,"eval_count":%d,"eval_duration":1}\n'
)


class Pacer:
    """One timer for every stream: a heap of (due time, seq, stream)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.heap: list[tuple[float, int, _Stream]] = []
        self.seq = itertools.count()
        self.handle: asyncio.TimerHandle | None = None

    def schedule(self, stream: _Stream, due: float) -> None:
        heapq.heappush(self.heap, (due, next(self.seq), stream))
        if self.handle is None:
            self.handle = self.loop.call_at(due, self.tick)

    def tick(self) -> None:
        self.handle = None
        now = self.loop.time()
        while self.heap and self.heap[0][0] <= now + 0.0005:
            due, _, stream = heapq.heappop(self.heap)
            if stream.step():
                heapq.heappush(self.heap, (due + self.interval, next(self.seq), stream))
        if self.heap:
            self.handle = self.loop.call_at(max(self.heap[0][0], now + 0.001), self.tick)


class _Stream:
    def __init__(self, transport: asyncio.Transport, tokens: int) -> None:
        self.transport = transport
        self.sent = 0
        self.tokens = tokens

    def step(self) -> bool:
        """Write the next line; False once the stream is complete."""
        if self.transport.is_closing():
            return False
        if self.sent < self.tokens:
            self.transport.write(_chunk(_line()))
            self.sent += 1
            return True
        self.transport.write(_chunk(FINAL % self.tokens) + b"0\r\n\r\n")
        return False


class Backend(asyncio.Protocol):
    pacer: Pacer
    tokens: int

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            if b"content-length:" in head:
                start = head.index(b"content-length:") + 15
                stop = head.find(b"\r\n", start)
                length = int(head[start : stop if stop > 0 else None])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.respond(head.split(b" ", 2)[1])

    def respond(self, path: bytes) -> None:
        if path == b"/api/tags":
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(TAGS), TAGS)
            )
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        self.pacer.schedule(_Stream(self.transport, self.tokens), self.pacer.loop.time())


async def serve(host: str, port: int, rate: float, tokens: int) -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(loop, 1.0 / rate)
    protocol = type("PacedBackend", (Backend,), {"pacer": pacer, "tokens": tokens})
    server = await loop.create_server(protocol, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"paced backend on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second per stream")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per stream")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.host, args.port, args.rate, args.tokens))


if __name__ == "__main__":
    main()
