"""Rate limits through a real gateway: Redis commands per request, and the latency Redis adds.

    .venv/bin/python -m benchmarks.limits_e2e [--requests 500] [--duration 3] [--rounds 3]

Starts a redis-server on a free port, the fast emulated Ollama
(``python -m tests.emulators.ollama --fast``) and one gateway process per
configuration, all with the same four limits configured (requests and tokens
per minute, tokens per day, concurrent requests; set high enough that nothing
is refused):

* ``memory``        ``[store] url = "memory://"``;
* ``redis``         ``[store] url = "redis://..."``, usage ledger in memory;
* ``redis+ledger``  limits and the usage ledger both on Redis.

Then:

1. **Commands per request.**  ``INFO commandstats`` before and after N
   sequential requests (after the commits and ledger flushes have landed):
   EVALSHA calls per request (the round trips: 1 admit + 1 commit is the
   target) and every command Redis ran, those inside the scripts included.
2. **Added latency.**  p50/p99 of non-stream chat completions at
   concurrency 1 and 16 (``benchmarks/loadgen.py``, keep-alive, closed
   loop), the targets interleaved in rounds; the median round (by rps) is
   reported, and the difference Redis makes against the memory store.

The gateway is pinned to CPU 0; the emulator, Redis and the load generator
share CPU 1 (when the machine has two CPUs and ``taskset``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from sansio_gateway.auth import hash_key

from .loadgen import LoadResult, build_request, run_load

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
KEY = "sk-bench-limits"
MODEL = "llama3.2:1b"
BODY = (
    b'{"model": "llama3.2:1b", "max_tokens": 64,'
    b' "messages": [{"role": "user", "content": "Say hello"}]}'
)
CONFIG = """
[[backends]]
name = "emu"
kind = "ollama"
url = "{emu}"

[[auth.keys]]
id = "bench"
user = "bench"
sha256 = "{digest}"

[limits]
requests_per_minute = 100000000
tokens_per_minute = 100000000
tokens_per_day = 100000000000
concurrent_requests = 100000

[store]
url = "{store}"
on_error = "closed"
usage = "{usage}"
"""


def _pin(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


@contextlib.contextmanager
def _process(cmd: list[str], marker: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``cmd``; yield it and the URL on the line containing ``marker``."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    url = ""
    try:
        while not url:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{' '.join(cmd)} exited ({proc.poll()})")
            if marker in line:
                url = line.split(marker, 1)[1].split()[0]
        # keep draining, so a chatty process never blocks on its pipe
        threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _redis_server() -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        args = [*_pin(1), binary, "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", workdir]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:  # poll a process that is starting
                try:
                    with redis.Redis(port=port, socket_connect_timeout=0.2) as c:
                        c.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            yield port
        finally:
            proc.kill()
            proc.wait()


def _split(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


_IGNORED = ("info", "client|setinfo", "client", "hello")  # our own probes


def _commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return {k: v for k, v in out.items() if k not in _IGNORED}


def _settled(client: redis.Redis) -> dict[str, int]:
    """Commandstats once they stop moving (commits run after the response,
    the ledger flushes every 50 ms)."""
    last = _commandstats(client)
    stable_since = time.monotonic()
    deadline = stable_since + 30
    while time.monotonic() - stable_since < 0.3:
        if time.monotonic() > deadline:
            raise RuntimeError("Redis never went quiet")
        time.sleep(0.02)  # polling Redis's counters; nothing to wait on
        now = _commandstats(client)
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


async def _sequential(host: str, port: int, n: int) -> None:
    request = build_request(host, port, "/v1/chat/completions", BODY, AUTH)
    result = await run_load(host, port, request, label="count", concurrency=1,
                            duration=600, max_requests=n, warmup=0)  # fmt: skip
    if result.requests != n or result.errors:
        raise RuntimeError(f"{result.requests} answered, {result.errors} errors")


AUTH = {"authorization": f"Bearer {KEY}"}


def commands_per_request(redis_port: int, url: str, n: int) -> dict[str, float]:
    host, port = _split(url)
    asyncio.run(_sequential(host, port, 20))  # warm: connections, scripts loaded
    with redis.Redis(port=redis_port) as client:
        before = _settled(client)
        asyncio.run(_sequential(host, port, n))
        after = _settled(client)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {k: v / n for k, v in sorted(delta.items()) if v}


async def _latency_rounds(
    targets: dict[str, str], levels: list[int], rounds: int, duration: float
) -> dict[tuple[str, int], LoadResult]:
    runs: dict[tuple[str, int], list[LoadResult]] = {}
    for _ in range(rounds):
        for c in levels:
            for name, url in targets.items():  # interleaved: each sees the same noise
                host, port = _split(url)
                request = build_request(host, port, "/v1/chat/completions", BODY, AUTH)
                result = await run_load(
                    host, port, request, label=name, concurrency=c, duration=duration
                )
                if result.errors:
                    raise RuntimeError(f"{name}: {result.errors} errors at concurrency {c}")
                runs.setdefault((name, c), []).append(result)
    return {key: sorted(rs, key=lambda r: r.rps)[len(rs) // 2] for key, rs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=500, help="for the command counts")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per latency run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the load generator shares CPU 1 with the backend
    print(
        f"# limits_e2e on {platform.machine()} with {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    emu_cmd = [
        *_pin(1),
        PY,
        "-m",
        "tests.emulators.ollama",
        "--port",
        "0",
        "--fast",
        "--tokens",
        "20",
    ]
    with (
        tempfile.TemporaryDirectory(prefix="sgw-limits-") as tmp,
        _redis_server() as redis_port,
        _process(emu_cmd, "listening on ") as (_emu, emu_url),
        contextlib.ExitStack() as stack,
    ):
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        stores = {
            "memory": ("memory://", "memory://"),
            "redis": (redis_url, "memory://"),
            "redis+ledger": (redis_url, redis_url),
        }
        targets: dict[str, str] = {}
        for name, (store, usage) in stores.items():
            cfg = Path(tmp) / f"{name}.toml"
            cfg.write_text(
                CONFIG.format(emu=emu_url, digest=hash_key(KEY), store=store, usage=usage)
            )
            cmd = [*_pin(0), PY, "-m", "sansio_gateway.adapters.cli", "--log-level", "WARNING", "serve",
                   "--config", str(cfg), "--port", "0"]  # fmt: skip
            _proc, url = stack.enter_context(_process(cmd, "listening on "))
            targets[name] = url

        print(f"\n## Redis commands per request ({args.requests} sequential chat completions)\n")
        for name in ("redis", "redis+ledger"):
            per = commands_per_request(redis_port, targets[name], args.requests)
            total = sum(per.values())
            listing = ", ".join(f"{k} {v:.2f}" for k, v in per.items())
            print(f"- {name}: EVALSHA {per.get('evalsha', 0):.2f} per request,"
                  f" every command {total:.2f} ({listing})")  # fmt: skip
        print(
            "\n(limits: one EVALSHA round trip to admit, one to commit; the ledger adds one"
            " EVALSHA per record, pipelined: one round trip and one SADD per flush)"
        )

        print(
            f"\n## Latency, non-stream chat, median of {args.rounds} rounds of {args.duration:g} s\n"
        )
        results = asyncio.run(_latency_rounds(targets, levels, args.rounds, args.duration))
        print("| store | concurrency | rps | p50 ms | p99 ms | p50 added | p99 added |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        rows: list[dict[str, Any]] = []
        for c in levels:
            base = results[("memory", c)]
            b50, b99 = base.pct(base.latencies, 50), base.pct(base.latencies, 99)
            for name in targets:
                r = results[(name, c)]
                p50, p99 = r.pct(r.latencies, 50), r.pct(r.latencies, 99)
                added = "" if name == "memory" else f"{p50 - b50:+.3f} | {p99 - b99:+.3f}"
                print(f"| {name} | {c} | {r.rps:,.0f} | {p50:.3f} | {p99:.3f} | "
                      f"{added if added else '- | -'} |")  # fmt: skip
                rows.append({"store": name, "concurrency": c, "p50": p50, "p99": p99})
        mean_rps = statistics.fmean(results[(n, 1)].rps for n in targets)
        print(f"\n(mean rps at concurrency 1 across stores: {mean_rps:,.0f})")


if __name__ == "__main__":
    main()
