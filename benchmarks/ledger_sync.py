"""Cost of ``synchronous = FULL`` for the SQLite usage ledger.

    python -m benchmarks.ledger_sync [--batches 200] [--repeats 5] [--dir /var/tmp]

Commits batches as the ledger does (one transaction per flush, every 50 ms
in production) with synchronous NORMAL and FULL, batch sizes 1 (a quiet
gateway: one record per flush) and 100 (a busy one), and prints the median
time per commit.  Run it on the disk the ledger will live on: the cost is
that disk's fsync.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sansio_gateway.adapters.ledger import SQLiteLedger

from sansio_gateway.actions import UsageRecord


def _records(start: int, n: int) -> list[UsageRecord]:
    return [
        UsageRecord(
            request_id=f"r{start + i}",
            time=1_795_651_200.0 + i,
            key_id="k",
            user="u",
            model="m",
            resolved_model="m",
            backend="b",
            surface="openai",
            route="chat.completions",
            prompt_tokens=10,
            completion_tokens=5,
            status=200,
            latency=0.1,
            ttft=None,
            outcome="ok",
            usage_reported=True,
        )
        for i in range(n)
    ]


def per_commit_ms(directory: Path, mode: str, batch: int, batches: int) -> float:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        ledger = SQLiteLedger(Path(tmp) / "u.db", synchronous=mode)  # type: ignore[arg-type]
        data = [_records(b * batch, batch) for b in range(batches)]
        started = time.perf_counter()
        for rows in data:
            ledger._write(rows)
        elapsed = time.perf_counter() - started
        ledger.close_sync()
    return elapsed / batches * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    print(f"{'batch':>5} {'normal ms/commit':>17} {'full ms/commit':>15} {'full/normal':>11}")
    for batch in (1, 100):
        medians = {}
        for mode in ("normal", "full"):
            runs = [
                per_commit_ms(Path(args.dir), mode, batch, args.batches)
                for _ in range(args.repeats)
            ]
            medians[mode] = statistics.median(runs)
        ratio = medians["full"] / medians["normal"]
        print(f"{batch:>5} {medians['normal']:>17.3f} {medians['full']:>15.3f} {ratio:>11.1f}")


if __name__ == "__main__":
    main()
