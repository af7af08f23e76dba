"""Rate-limiter figures: the pure core's decision rate, and Redis's cost per request.

    .venv/bin/python -m benchmarks.limits_bench [--requests N] [--users U]

* **Memory store** (the pure core on a dict): admits per second on the
  allow path, on the deny path, and admit + commit pairs per second.
* **Redis store** against a redis-server this script starts on a free port:
  round trips and Redis commands (including those the Lua script runs) per
  admitted + committed request, and the latency of one admit (sequential,
  then with 32 concurrent callers).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import redis
from sansio_gateway.adapters.limit_stores import RedisLimitStore

from sansio_gateway.config import LimitsConfig, LimitValues
from sansio_gateway.limits import Costs, MemoryLimitStore, build_specs

NOW = 1_764_000_000_000_000
LIMITS = LimitsConfig(
    requests_per_minute=600_000,
    tokens_per_minute=100_000_000,
    tokens_per_day=10**12,
    concurrent_requests=1000,
    models={"gpt-4o-mini": LimitValues(requests_per_minute=300_000)},
)


def _rate(label: str, n: int, fn: Callable[[int], object]) -> None:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    elapsed = time.perf_counter() - t0
    print(f"  {label:<34} {n / elapsed:>12,.0f} /s   ({elapsed / n * 1e6:.2f} us each)")


def bench_memory(n: int, users: int) -> None:
    print(f"memory store (pure core), {users} users, 3 rate limits + day quota + concurrency:")
    specs = {u: build_specs(LIMITS, f"user{u}", "gpt-4o-mini") for u in range(users)}
    store = MemoryLimitStore()

    def admit_commit(i: int) -> None:
        u = i % users
        now = NOW + i * 10
        store.admit(f"user{u}", specs[u], now, Costs(tokens=500), f"r{i}")
        store.commit(f"user{u}", specs[u], now + 5, f"r{i}", 500, 300)

    _rate("admit + commit pairs", n, admit_commit)
    peeked = MemoryLimitStore()
    _rate(
        "peek (headers only)",
        n,
        lambda i: peeked.peek(f"user{i % users}", specs[i % users], NOW + i),
    )
    tight = build_specs(LimitsConfig(requests_per_minute=6), "t", "m")
    deny = MemoryLimitStore()
    deny.admit("t", tight, NOW, Costs(tokens=1), "first")
    _rate("admit, denied", n, lambda i: deny.admit("t", tight, NOW, Costs(tokens=1), f"d{i}"))
    print(f"  states held after {n:,} pairs          {len(store):>12,}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _total_calls(port: int) -> tuple[int, int, float]:
    """Commands run (all, and EVALSHA) and the server's microseconds per EVALSHA."""
    with redis.Redis(port=port) as c:
        stats = c.info("commandstats")
    total = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
    evalsha = stats.get("cmdstat_evalsha", {})
    return total, int(evalsha.get("calls", 0)), float(evalsha.get("usec_per_call", 0.0))


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * len(ordered)))] * 1e6


async def _redis_figures(port: int, n: int, users: int) -> None:
    store = RedisLimitStore.from_url(f"redis://127.0.0.1:{port}/0")
    specs = {u: build_specs(LIMITS, f"user{u}", "gpt-4o-mini") for u in range(users)}
    await store.admit("warm", specs[0], Costs(tokens=1), "warm")
    total0, evalsha0, _ = _total_calls(port)
    latencies = []
    for i in range(n):
        u = i % users
        t0 = time.perf_counter()
        await store.admit(f"user{u}", specs[u], Costs(tokens=500), f"r{i}")
        latencies.append(time.perf_counter() - t0)
        await store.commit(f"user{u}", specs[u], f"r{i}", 500, 300)
    total1, evalsha1, server_us = _total_calls(port)
    print(f"redis store (redis-server on :{port}), {n} admitted + committed requests:")
    print(f"  round trips per request            {(evalsha1 - evalsha0) / n:>8.2f}  (EVALSHA)")
    print(
        f"  redis commands per request         {(total1 - total0) / n:>8.2f}  (incl. inside the scripts)"
    )
    print(f"  server time per script call        {server_us:>8.1f} us (commandstats usec_per_call)")
    print(
        f"  admit latency, sequential          p50 {_pct(latencies, 50):.0f} us"
        f"  p99 {_pct(latencies, 99):.0f} us  mean {statistics.fmean(latencies) * 1e6:.0f} us"
    )

    async def caller(k: int, out: list[float]) -> None:
        for i in range(k, n, 32):
            u = i % users
            t0 = time.perf_counter()
            await store.admit(f"user{u}", specs[u], Costs(tokens=500), f"c{i}")
            out.append(time.perf_counter() - t0)

    concurrent: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(caller(k, concurrent) for k in range(32)))
    elapsed = time.perf_counter() - t0
    print(
        f"  admit latency, 32 concurrent       p50 {_pct(concurrent, 50):.0f} us"
        f"  p99 {_pct(concurrent, 99):.0f} us  ({n / elapsed:,.0f} admits/s from one process)"
    )
    await store.aclose()


def bench_redis(n: int, users: int) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis store: skipped (redis-server not installed)")
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        proc = subprocess.Popen([*args, "--dir", workdir], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:  # poll until it answers
                try:
                    with redis.Redis(port=port, socket_connect_timeout=0.2) as c:
                        c.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
            asyncio.run(_redis_figures(port, n, users))
        finally:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=100)
    args = parser.parse_args()
    bench_memory(args.requests * 5, args.users)
    bench_redis(args.requests, args.users)


if __name__ == "__main__":
    main()
