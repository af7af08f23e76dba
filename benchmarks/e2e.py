"""End-to-end benchmark: emulated Ollama, the gateway, and a load generator.

    .venv/bin/python -m benchmarks.e2e [--duration 5] [--rounds 3] [--tokens 20]

Starts a fast emulated Ollama (pinned to CPU 1 with the load generator) and
the gateway (pinned to CPU 0), then measures non-stream and stream chat
completions at concurrency 1, 16 and 64, directly against the emulator's
OpenAI-shaped equivalent (its native /api/chat) and through the gateway's
/v1/chat/completions.  Targets are interleaved in rounds and the median
round is reported.  Prints a Markdown table; ``--json FILE`` saves rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sansio_gateway.auth import hash_key

from .loadgen import LoadResult, build_request, run_load

ROOT = Path(__file__).resolve().parents[1]
BENCH_KEY = "sk-bench-key"
# As a real deployment runs: API keys and memory-store limits on (set high
# enough that the benchmark itself is never limited).
BENCH_CONFIG = """
[[backends]]
name = "emu"
kind = "ollama"
url = "{emu_url}"

[[auth.keys]]
id = "bench"
user = "bench"
sha256 = "{digest}"

[limits]
requests_per_minute = 100000000
tokens_per_minute = 100000000
concurrent_requests = 100000
"""
PY = sys.executable


def _pin(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


@contextmanager
def _process(
    cmd: list[str], marker: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    url = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{cmd[0]} exited: {proc.poll()}")
        if marker in line:
            url = line.strip().split(marker, 1)[1].split()[0]
            break
    try:
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


AUTH = {"authorization": f"Bearer {BENCH_KEY}"}


def _split(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--json", help="write the result rows here")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    emu_cmd = [
        *_pin(1),
        PY,
        "-m",
        "tests.emulators.ollama",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--fast",
        "--tokens",
        str(args.tokens),
    ]
    with _process(emu_cmd, "listening on ") as (emu, emu_url):
        cfg = Path(tempfile.mkdtemp()) / "bench.toml"
        cfg.write_text(BENCH_CONFIG.format(emu_url=emu_url, digest=hash_key(BENCH_KEY)))
        gw_cmd = [
            *_pin(0),
            PY,
            "-m",
            "adapters.cli",
            "--log-level",
            "WARNING",
            "serve",
            "--config",
            str(cfg),
            "--port",
            "0",
        ]
        with _process(gw_cmd, "listening on ") as (gw, gw_url):
            rows = asyncio.run(_measure(args, levels, emu_url, gw_url, gw.pid, emu.pid))
    _report(rows, args)


async def _measure(
    args: argparse.Namespace,
    levels: list[int],
    emu_url: str,
    gw_url: str,
    gw_pid: int,
    emu_pid: int,
) -> list[dict[str, object]]:
    ehost, eport = _split(emu_url)
    ghost, gport = _split(gw_url)
    messages = [{"role": "user", "content": "Say hello in twenty words."}]
    model = "llama3.2:1b"
    targets = {
        ("direct", False): (
            ehost,
            eport,
            build_request(
                ehost,
                eport,
                "/api/chat",
                json.dumps({"model": model, "messages": messages, "stream": False}).encode(),
            ),
        ),
        ("direct", True): (
            ehost,
            eport,
            build_request(
                ehost,
                eport,
                "/api/chat",
                json.dumps({"model": model, "messages": messages, "stream": True}).encode(),
            ),
        ),
        ("gateway", False): (
            ghost,
            gport,
            build_request(
                ghost,
                gport,
                "/v1/chat/completions",
                json.dumps({"model": model, "messages": messages}).encode(),
                AUTH,
            ),
        ),
        ("gateway", True): (
            ghost,
            gport,
            build_request(
                ghost,
                gport,
                "/v1/chat/completions",
                json.dumps({"model": model, "messages": messages, "stream": True}).encode(),
                AUTH,
            ),
        ),
    }
    results: dict[tuple[str, bool, int], list[LoadResult]] = {}
    cpu: dict[tuple[str, bool, int], list[float]] = {}
    for _ in range(args.rounds):
        for c in levels:
            for (name, stream), (host, port, request) in targets.items():
                gw0, emu0 = _cpu_seconds(gw_pid), _cpu_seconds(emu_pid)
                r = await run_load(
                    host, port, request, label=name, concurrency=c, duration=args.duration
                )
                gw1, emu1 = _cpu_seconds(gw_pid), _cpu_seconds(emu_pid)
                results.setdefault((name, stream, c), []).append(r)
                cpu.setdefault((name, stream, c), []).append(
                    100 * ((gw1 - gw0) if name == "gateway" else (emu1 - emu0)) / r.elapsed
                )
    rows = []
    for (name, stream, c), runs in results.items():
        median = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
        row = median.row()
        row.update(
            mode="stream" if stream else "non-stream",
            target=name,
            cpu_pct=round(statistics.median(cpu[(name, stream, c)]), 1),
        )
        rows.append(row)
    rows.append({"gateway_rss_mib": round(_rss_mib(gw_pid), 1)})
    return rows


def _report(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    print(f"# e2e chat benchmark -- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"
    )
    print(
        f"duration {args.duration}s x {args.rounds} rounds (median round), {args.tokens}-token answers\n"
    )
    print(
        "| mode | concurrency | target | req/s | p50 ms | p95 ms | p99 ms | TTFT p50 ms | CPU % | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_key = {}
    for row in rows:
        if "target" not in row:
            continue
        by_key[(row["mode"], row["concurrency"], row["target"])] = row
        print(
            f"| {row['mode']} | {row['concurrency']} | {row['target']} | {row['rps']} | {row['p50_ms']} |"
            f" {row['p95_ms']} | {row['p99_ms']} | {row['ttft_p50_ms']} | {row['cpu_pct']} | {row['errors']} |"
        )
    print()
    for (mode, c, target), row in sorted(by_key.items()):
        if target == "gateway" and (mode, c, "direct") in by_key:
            direct = by_key[(mode, c, "direct")]
            added = float(row["p50_ms"]) - float(direct["p50_ms"])  # type: ignore[arg-type]
            print(
                f"{mode} c={c}: gateway/direct throughput {float(row['rps']) / float(direct['rps']):.2f},"  # type: ignore[arg-type]
                f" added p50 latency {added:.3f} ms"
            )
    for row in rows:
        if "gateway_rss_mib" in row:
            print(f"gateway RSS after run: {row['gateway_rss_mib']} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
