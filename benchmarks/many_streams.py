"""Many concurrent paced streams through one gateway process.

    .venv/bin/python -m benchmarks.many_streams [--streams 1000 5000 10000] [--rate 20]
        [--hold 10] [--ramp 2000] [--out docs/many_streams.json]

For each N: a lean paced backend (benchmarks/paced_backend.py: one HTTP chunk
per NDJSON line, one token every 1/rate s) and one gateway process
(``serve``, asyncio, API keys, memory-store limits that never deny, the
SQLite ledger, the JSON access log going to a file: as users run it; nothing
pinned).  N streamed chat requests are opened at ``--ramp`` per second and
held ``--hold`` seconds once all are open; each stream lasts long enough to
span the ramp and the hold.

Reported per N:
* the added inter-token delay: at the client, each gap between two tokens of
  a stream minus the backend's pacing interval, p50 and p99 (tokens the
  gateway coalesces into one read count as arriving together);
* errors (a stream that did not answer 200 or ended early);
* the gateway's RSS and RSS per stream, CPU (cores busy) and open file
  descriptors, sampled while all N streams are open.

The client runs in this process on raw asyncio protocols (uvloop when
installed) and reads only what it must (chunk boundaries, ``data:`` events),
so it costs far less than the gateway.  On a 2-core machine the backend,
the gateway and the client share the cores: the figures say what one
gateway process sustains there, not what it would with cores to spare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sansio_gateway.auth import hash_key

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
KEY = "sk-bench-streams"
CONFIG = """
[server]
# The default (500) protects a small deployment; here it must admit all N.
max_connections = {max_connections}

[[backends]]
name = "paced"
kind = "ollama"
url = "{backend}"

[[auth.keys]]
id = "bench"
user = "bench"
sha256 = "{digest}"

[limits]
requests_per_minute = 100000000
tokens_per_minute = 1000000000
concurrent_requests = 1000000

[store]
usage = "sqlite:///{tmp}/usage.db"
"""


def _raise_fd_limit(want: int) -> int:
    """Raise this process's open-file limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        want = hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextmanager
def _process(
    cmd: list[str], marker: str, log: IO[str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``cmd`` and wait for the line holding its URL after ``marker``;
    the rest of its output goes to ``log`` (the access log, as in production)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        url = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{cmd[:4]} exited with {proc.poll()}")
            if marker in line:
                url = line.split(marker, 1)[1].split()[0].rstrip("/")
                break
        pump = None
        if log is not None:
            import threading

            out = proc.stdout

            def copy() -> None:
                for line in out:
                    log.write(line)

            pump = threading.Thread(target=copy, daemon=True)
            pump.start()
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _proc_stat(pid: int) -> tuple[float, float, int]:
    """(CPU seconds, RSS MiB, open fds) of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return cpu, rss, len(os.listdir(f"/proc/{pid}/fd"))


class StreamClient(asyncio.Protocol):
    """One streamed request; records the gap between consecutive tokens."""

    def __init__(self, run: Run, request: bytes) -> None:
        self.run = run
        self.request = request
        self.last: float | None = None
        self.head_done = False
        self.status = 0
        self.tokens = 0
        self.finished = False
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.head_done:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.buffer.split(b" ", 2)[1])
            self.head_done = True
            data, self.buffer = self.buffer[end + 4 :], b""
            if self.status != 200:
                self.transport.close()
                return
        # One SSE event per token; "[DONE]" and the usage chunk close the stream.
        events = data.count(b"data: ")
        if b"data: [DONE]" in data:
            self.finished = True
            events -= 1
        for _ in range(events):
            if self.last is not None and self.run.holding:
                self.run.gaps.append(now - self.last)
            self.last = now
        self.tokens += events
        if self.finished:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.open -= 1
        if not (self.finished and self.status == 200):
            self.run.errors += 1
        if self.run.open == 0:
            self.run.all_closed.set()


class Run:
    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.errors = 0
        self.open = 0
        self.holding = False
        self.all_closed = asyncio.Event()


def _request(host: str, port: int, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": "bench:latest",
            "stream": True,
            "max_tokens": tokens + 10,
            "messages": [{"role": "user", "content": "Count slowly."}],
        }
    ).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}:{port}\r\n"
        f"authorization: Bearer {KEY}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _drive(
    host: str, port: int, n: int, ramp: float, hold: float, tokens: int, gw_pid: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = Run()
    request = _request(host, port, tokens)
    started = time.perf_counter()
    for i in range(n):
        # Open at the ramp rate, so the listen backlog never overflows.
        delay = started + i / ramp - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        run.open += 1
        try:
            await loop.create_connection(lambda: StreamClient(run, request), host, port)
        except OSError:
            run.open -= 1
            run.errors += 1
    ramp_s = time.perf_counter() - started
    run.holding = True
    cpu0, _, _ = _proc_stat(gw_pid)
    t0 = time.perf_counter()
    samples = []
    while time.perf_counter() - t0 < hold:
        await asyncio.sleep(1.0)
        samples.append(_proc_stat(gw_pid))
    cpu1 = _proc_stat(gw_pid)[0]
    window = time.perf_counter() - t0
    run.holding = False
    await asyncio.wait_for(run.all_closed.wait(), timeout=tokens / 5 + 120)
    return {
        "run": run,
        "ramp_s": ramp_s,
        "cores": (cpu1 - cpu0) / window,
        "rss_mib": max(s[1] for s in samples),
        "fds": max(s[2] for s in samples),
    }


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def measure(n: int, rate: float, ramp: float, hold: float, tmp: Path) -> dict[str, Any]:
    tokens = int(rate * (n / ramp + hold + 3))
    backend_cmd = [PY, "-m", "benchmarks.paced_backend", "--rate", str(rate),
                   "--tokens", str(tokens)]  # fmt: skip
    with _process(backend_cmd, "paced backend on ") as (_, backend):
        cfg = tmp / f"gateway-{n}.toml"
        cfg.write_text(
            CONFIG.format(backend=backend, digest=hash_key(KEY), tmp=tmp, max_connections=n + 100)
        )
        log_path = tmp / f"access-{n}.log"
        with (
            log_path.open("w") as log,
            _process(
                [
                    PY,
                    "-m",
                    "sansio_gateway.adapters.cli",
                    "serve",
                    "--config",
                    str(cfg),
                    "--port",
                    "0",
                ],
                "listening on ",
                log,
            ) as (gateway, url),
        ):
            host, port = url.removeprefix("http://").rsplit(":", 1)
            result = asyncio.run(_drive(host, int(port), n, ramp, hold, tokens, gateway.pid))
    run: Run = result["run"]
    interval = 1.0 / rate
    added = [max(0.0, gap - interval) * 1000 for gap in run.gaps]
    return {
        "streams": n,
        "rate_tokens_per_s": rate,
        "tokens_per_stream": tokens,
        "errors": run.errors,
        "added_gap_p50_ms": round(_pct(added, 50), 2),
        "added_gap_p99_ms": round(_pct(added, 99), 2),
        "gaps_measured": len(run.gaps),
        "gap_mean_ms": round(statistics.fmean(run.gaps) * 1000, 2) if run.gaps else None,
        "rss_mib": round(result["rss_mib"], 1),
        "rss_per_stream_kib": round(result["rss_mib"] * 1024 / n, 1),
        "cpu_cores": round(result["cores"], 2),
        "open_fds": result["fds"],
        "ramp_s": round(result["ramp_s"], 1),
        "access_log_lines": sum(1 for _ in (tmp / f"access-{n}.log").open()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s per stream")
    parser.add_argument("--ramp", type=float, default=2000.0, help="new streams per second")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds with all N open")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    limit = _raise_fd_limit(2 * max(args.streams) + 1024)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.streams:
            row = measure(n, args.rate, args.ramp, args.hold, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "fd_limit": limit,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
