"""A closed-loop HTTP/1.1 keep-alive load generator on raw asyncio sockets.

Each of ``concurrency`` connections sends one request, reads the whole
response, records its latency (and, for streams, the time to the first SSE
or NDJSON event), and sends the next, until ``duration`` seconds pass or
``max_requests`` are done.  Raw sockets rather than an HTTP client library,
so the generator's own cost stays far below the server's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    label: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def pct(self, values: list[float], p: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    def row(self) -> dict[str, float | int | str]:
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.pct(self.latencies, 50), 3),
            "p95_ms": round(self.pct(self.latencies, 95), 3),
            "p99_ms": round(self.pct(self.latencies, 99), 3),
            "ttft_p50_ms": round(self.pct(self.ttfts, 50), 3) if self.ttfts else "",
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 3) if self.latencies else "",
        }


def build_request(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {host}:{port}",
        "content-type: application/json",
        f"content-length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, float | None]:
    """Read one response; returns (status, time of first body byte)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    lower = head.lower()
    first_body: float | None = None
    if b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(size + 2)
            if first_body is None:
                first_body = time.perf_counter()
    else:
        start = lower.index(b"content-length:") + len(b"content-length:")
        length = int(lower[start : lower.index(b"\r\n", start)])
        await reader.readexactly(length)
        first_body = time.perf_counter()
    return status, first_body


async def _worker(
    host: str, port: int, request: bytes, result: LoadResult, deadline: float, budget: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            try:
                status, first = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            t1 = time.perf_counter()
            if status != 200:
                result.errors += 1
                continue
            result.requests += 1
            result.latencies.append(t1 - t0)
            if first is not None:
                result.ttfts.append(first - t0)
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    request: bytes,
    *,
    label: str,
    concurrency: int,
    duration: float,
    max_requests: int = 10**9,
    warmup: int = 20,
) -> LoadResult:
    warm = LoadResult(label, concurrency)
    await asyncio.gather(
        *[
            _worker(host, port, request, warm, time.perf_counter() + 5, [warmup // concurrency + 1])
            for _ in range(min(concurrency, 8))
        ]
    )
    result = LoadResult(label, concurrency)
    budget = [max_requests]
    start = time.perf_counter()
    deadline = start + duration
    await asyncio.gather(
        *[_worker(host, port, request, result, deadline, budget) for _ in range(concurrency)]
    )
    result.elapsed = time.perf_counter() - start
    return result
