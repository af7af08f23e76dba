"""RSS of the memory limit store under sustained load (issue 13, item 4).

    .venv/bin/python -m benchmarks.memory_soak [--minutes 10] [--rate 1000] [--users 100]
    .venv/bin/python -m benchmarks.memory_soak --simulated --minutes 40

Drives the core limiter (:class:`MemoryLimitStore`: admit, then commit, per
request, with gateway-like 32-hex-digit request ids, three rate limits, a
day quota and a concurrency cap) at ``--rate`` requests per second spread
over ``--users`` users, and prints the process RSS after every minute
(and so after 1, 5 and 10).  Every committed id is remembered for the lease
lifetime (31 min), so without a bound RSS would grow for 31 minutes.

* real time (default): paced on the wall clock in 10 ms ticks; a run of
  ``--minutes`` takes that long.
* ``--simulated``: the same requests on a clock advanced 1/rate per
  request, as fast as the CPU allows (10 simulated minutes at 1,000 req/s
  take well under a minute), to see the long-run shape quickly.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from sansio_gateway.config import LimitsConfig
from sansio_gateway.limits import Costs, MemoryLimitStore, build_specs

LIMITS = LimitsConfig(
    requests_per_minute=10**6,
    tokens_per_minute=10**8,
    tokens_per_day=10**12,
    concurrent_requests=1_000,
)


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def ids_held(store: MemoryLimitStore) -> int:
    total = 0
    for state in store._states.values():
        done = state.done
        chunks = getattr(done, "_chunks", None)  # the unbounded store before issue 13
        total += sum(len(c) for _, c in chunks) if chunks is not None else len(done)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=int, default=1000, help="requests per second")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--simulated", action="store_true", help="simulated clock, full speed")
    args = parser.parse_args()
    store = MemoryLimitStore()
    specs = [build_specs(LIMITS, f"user{u}", "m") for u in range(args.users)]
    step_us = 1_000_000 / args.rate
    mode = "simulated clock" if args.simulated else "real time"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')} Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {args.rate} req/s over {args.users} users, {mode}"
    )
    print(f"start: RSS {rss_mib():.1f} MiB")
    start_wall = time.perf_counter()
    start_us = time.time_ns() // 1000
    total_us = int(args.minutes * 60_000_000)
    n, next_minute = 0, 1
    while True:
        if args.simulated:
            elapsed_us = int(n * step_us)
        else:
            elapsed_us = int((time.perf_counter() - start_wall) * 1e6)
            due = int(elapsed_us / step_us)
            if n >= due:  # ahead of the pace: wait for the next 10 ms tick
                time.sleep(0.01)
                continue
        if elapsed_us >= next_minute * 60_000_000:
            wall = time.perf_counter() - start_wall
            print(
                f"after {next_minute:3d} min: RSS {rss_mib():6.1f} MiB, "
                f"{n:>10,} requests ({n / wall:,.0f}/s of wall time), "
                f"{ids_held(store):>9,} committed ids held, {len(store)} states"
            )
            next_minute += 1
        if elapsed_us >= total_us:
            break
        now = start_us + elapsed_us
        u = n % args.users
        rid = os.urandom(16).hex()
        store.admit(f"user{u}", specs[u], now, Costs(tokens=300), rid)
        store.commit(f"user{u}", specs[u], now, rid, 300, 120)
        n += 1


if __name__ == "__main__":
    main()
