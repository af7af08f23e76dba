"""Decision latency and connections of the Redis limit store under bursts.

    .venv/bin/python -m benchmarks.limit_store_pool [--requests N] [--pool 4,16,64]
    .venv/bin/python -m benchmarks.limit_store_pool --loaded   # p99.9 under 4 gateways' load

For a redis-server and a 3-primary Cluster started here on free ports, and
each pool size: ``c`` concurrent callers (1, 64, 512) admit and commit
through :class:`RedisLimitStore` (warmed first).  Reports the admit latency
(p50/p99, including any wait for a pooled connection), round trips per
admit (EVALSHA replies read / admits) and the connections the server saw.

``--loaded``: four processes, each with its own warmed store at c=64, run at
once against one redis-server; the round trip of each EVALSHA alone (the
``decision_timeout`` budget) is timed, and its p99/p99.9/max reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import redis
from sansio_gateway.adapters.limit_stores import RedisLimitStore

from sansio_gateway.config import LimitsConfig
from sansio_gateway.limits import Costs, build_specs
from tests.redis_servers import redis_cluster, redis_server

SPECS = build_specs(
    LimitsConfig(requests_per_minute=10**7, tokens_per_minute=10**9, concurrent_requests=10**5),
    "bench",
    "m",
)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def _run(store: RedisLimitStore, n: int, c: int, users: int = 64) -> list[float]:
    latencies: list[float] = []
    next_i = 0

    async def caller() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            user = f"u{i % users}"
            t0 = time.perf_counter()
            await store.admit(user, SPECS, Costs(tokens=10), f"r{i}")
            latencies.append(time.perf_counter() - t0)
            await store.commit(user, SPECS, f"r{i}", 10, 10)

    await asyncio.gather(*(caller() for _ in range(c)))
    return latencies


def _connections(ports: list[int]) -> int:
    total = 0
    for port in ports:
        with redis.Redis(port=port) as r:
            total += int(r.info("stats")["total_connections_received"])
    return total


async def _one(url: str, ports: list[int], pool: int, n: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for c in (1, 64, 512):
        store = RedisLimitStore.from_url(url, pool_size=pool, connect_timeout=5.0)
        before = _connections(ports)
        await store.warm()
        await _run(store, min(n, 500), c)  # settle
        trips = store.round_trips
        lat = await _run(store, n, c)
        after = _connections(ports)
        rows.append({
            "pool": pool, "c": c, "p50_ms": round(statistics.median(lat) * 1000, 3),
            "p99_ms": round(_pct(lat, 0.99) * 1000, 3),
            "round_trips_per_admit": round((store.round_trips - trips) / (2 * n), 3),
            "connections_opened": after - before,
        })  # fmt: skip
        await store.aclose()
    return rows


def bench_pools(n: int, pools: list[int]) -> None:
    print("kind     pool    c   p50 ms   p99 ms  trips/call  connections")
    with redis_server() as server:
        for pool in pools:
            for row in asyncio.run(_one(server.url, [server.port], pool, n)):
                _print("redis", row)
    with redis_cluster() as ports:
        url = f"redis+cluster://127.0.0.1:{ports[0]}"
        for pool in pools:
            for row in asyncio.run(_one(url, ports, pool, n)):
                _print("cluster", row)


def _print(kind: str, row: dict[str, object]) -> None:
    print(
        f"{kind:8} {row['pool']:4} {row['c']:4} {row['p50_ms']:8} {row['p99_ms']:8}"
        f" {row['round_trips_per_admit']:10} {row['connections_opened']:12}",
        flush=True,
    )


class _TimedStore(RedisLimitStore):
    """Times the round trip alone (what ``decision_timeout`` bounds)."""

    trips: list[float]

    async def _evalsha_standalone(self, script, keys, args):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return await super()._evalsha_standalone(script, keys, args)
        finally:
            self.trips.append(time.perf_counter() - t0)


async def _loaded_worker(url: str, seconds: float) -> list[float]:
    store = _TimedStore.from_url(url, pool_size=16, connect_timeout=5.0)
    assert isinstance(store, _TimedStore)
    store.trips = []
    await store.warm()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await _run(store, 2000, 64)
    await store.aclose()
    return store.trips


def bench_loaded(seconds: float) -> None:
    with redis_server() as server:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.limit_store_pool",
                    "--worker",
                    server.url,
                    "--seconds",
                    str(seconds),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        trips: list[float] = []
        for proc in procs:
            out, _ = proc.communicate()
            trips += json.loads(out)
    ms = [t * 1000 for t in trips]
    print(
        f"4 processes x c=64 for {seconds:g}s: {len(ms)} EVALSHA round trips;"
        f" p50 {statistics.median(ms):.2f} ms, p99 {_pct(ms, 0.99):.2f} ms,"
        f" p99.9 {_pct(ms, 0.999):.2f} ms, max {max(ms):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--pool", default="4,16,64")
    parser.add_argument("--loaded", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(_loaded_worker(args.worker, args.seconds))))
    elif args.loaded:
        bench_loaded(args.seconds)
    else:
        bench_pools(args.requests, [int(p) for p in args.pool.split(",")])


if __name__ == "__main__":
    main()
