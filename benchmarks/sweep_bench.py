"""The memory store's idle sweep at a million committed ids (issue 17, item 6).

    .venv/bin/python -m benchmarks.sweep_bench [--users 1000] [--ids-per-user 1000]

* **Full sweep**: builds a :class:`MemoryLimitStore` holding ``users x
  ids-per-user`` committed ids (all still live, so no state is idle and the
  sweep has to examine every one), then times ``store.sweep(now)`` -- a whole
  pass at once -- and ``is_idle`` on the largest state.  Medians of 5.
* **On the event loop**: drives admit + commit pairs through the async
  :class:`MemoryStore` on an asyncio loop (1 ms of clock a request) with a
  sweep pass due every 100 ms of clock, i.e. every 100 requests (the default
  is every 60 s or when the states double), then without any sweep, while a
  ticker task measures the loop's lag (how late a 1 ms sleep wakes up).
  Reports each pair's time (p50 / p99 / max) and the loop lag (p99 / max).
  A pass is spread over the operations (``sweep_batch`` states each), so no
  call should stand out.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time

from sansio_gateway.adapters.limit_stores import MemoryStore

from sansio_gateway.limits import Costs, LimitSpecs, LimitState, MemoryLimitStore, commit, is_idle

NOW = 1_764_000_000_000_000
TTL = 31 * 60 * 1_000_000
SPECS = LimitSpecs(lease_ttl_us=TTL, tokens_per_day=10**12, concurrent_requests=10**6)


def build(users: int, per_user: int) -> tuple[MemoryLimitStore, int]:
    """A store whose states hold ``per_user`` live committed ids each."""
    store = MemoryLimitStore(sweep_interval_us=10**15, min_sweep_size=10**9)
    now = NOW
    for u in range(users):
        state = LimitState()
        for i in range(per_user):
            now += 1
            state = commit(SPECS, state, now, f"u{u}-r{i}", 0, 0)
        store._states[f"user{u}"] = state
    return store, now


def median_time(fn: object, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def on_the_loop(
    store: MemoryLimitStore, now: int, ops: int, sweeping: bool
) -> tuple[list[float], float, float]:
    """(each admit+commit pair's time, max loop lag, p99 loop lag), in seconds."""
    # a pass due every 100 ms of clock, 1 ms a request (or never: the baseline)
    store._sweep_interval_us = 100_000 if sweeping else 10**15
    store._idle_grace_us = 0
    async_store = MemoryStore(store, clock=lambda: now)
    lags: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t0 - 0.001)

    tick = asyncio.create_task(ticker())
    pairs = []
    # each run its own user, ids and stretch of clock (no run repeats another's ids)
    user, base = ("sweep", now + 1_000 * ops + 1) if sweeping else ("base", now)
    for i in range(ops):
        t = base + 1_000 * i
        t0 = time.perf_counter()
        await async_store.admit(user, SPECS, Costs(tokens=10), f"{user}{i}", now_us=t)
        await async_store.commit(user, SPECS, f"{user}{i}", 10, 5, now_us=t + 1)
        pairs.append(time.perf_counter() - t0)
        await asyncio.sleep(0)  # a server yields between requests
    running = False
    await tick
    lags.sort()
    return sorted(pairs), lags[-1], lags[int(0.99 * (len(lags) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--ids-per-user", type=int, default=1000)
    parser.add_argument("--ops", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')} {platform.python_version()} {platform.machine()}")
    t0 = time.perf_counter()
    store, now = build(args.users, args.ids_per_user)
    total = args.users * args.ids_per_user
    print(
        f"built {args.users} states x {args.ids_per_user} ids = {total:,} committed ids "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    biggest = store.state("user0")
    t_idle = median_time(lambda: is_idle(biggest, now))
    print(
        f"  is_idle, one state of {args.ids_per_user:,} ids  {t_idle * 1e6:10.1f} us (median of 5)"
    )
    # past the grace, so every state is examined (none is idle: its ids live on)
    t_sweep = median_time(lambda: store.sweep(now + store._idle_grace_us + 1))
    print(
        f"  full sweep, {len(store):,} states / {total:,} ids  {t_sweep * 1e3:10.2f} ms (median of 5)"
    )
    for sweeping in (False, True):
        pairs, lag_max, lag_p99 = asyncio.run(on_the_loop(store, now, args.ops, sweeping))
        what = "a sweep pass every 100 requests" if sweeping else "no sweep (baseline)"
        p50, p99 = pairs[len(pairs) // 2], pairs[int(0.99 * (len(pairs) - 1))]
        print(f"  on the loop, {args.ops:,} admit+commit pairs, {what}:")
        print(
            f"    admit+commit pair p50 / p99 / max  {p50 * 1e6:.0f} us / {p99 * 1e6:.0f} us"
            f" / {pairs[-1] * 1e3:.2f} ms"
        )
        print(f"    loop lag p99 / max         {lag_p99 * 1e3:8.2f} ms / {lag_max * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
