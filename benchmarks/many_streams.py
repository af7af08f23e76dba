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
* each token's transit, from the moment the backend wrote it (the token's
  text is that time) to its arrival at the client, p50 and p99, through the
  gateway and, as the baseline, straight to the backend with the same N;
  the added delay is the difference;
* errors (a stream that did not answer 200 or ended early), and the access
  log's requests by status;
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
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

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
    """One streamed request; records each token's transit time: when it
    arrived here minus when the backend wrote it (the token's text)."""

    def __init__(self, run: Run, request: bytes) -> None:
        self.run = run
        self.request = request
        self.head_done = False
        self.status = 0
        self.tokens = 0
        self.finished = False
        self.buffer = b""
        self.length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        data = self.buffer + data
        if self.head_done and self.status != 200:
            self._error_body(data)
            return
        if not self.head_done:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            self.status = int(data.split(b" ", 2)[1])
            self.head_done = True
            data = data[end + 4 :]
            if self.status != 200:
                length = LENGTH.search(data[:end])
                self.length = int(length.group(1)) if length else 0
                self._error_body(data[end + 4 :])
                return
        # Whole lines only (an NDJSON line or an SSE event never spans two
        # HTTP chunks, but a TCP read may end inside one).
        cut = data.rfind(b"\n") + 1
        data, self.buffer = data[:cut], data[cut:]
        at = data.find(TOKEN)
        while at >= 0:
            start = at + len(TOKEN)
            stop = data.index(b" ", start)
            if self.run.holding:
                self.run.transits.append((now - int(data[start:stop])) / 1e6)
            self.tokens += 1
            at = data.find(TOKEN, stop)
        if b"data: [DONE]" in data or b'"done":true' in data:
            self.finished = True
            self.transport.close()

    def _error_body(self, data: bytes) -> None:
        """Read an error's body: the first one says why (of the harness's own
        conditions as much as of the gateway)."""
        self.buffer = data
        if len(data) < self.length:
            return
        if not self.run.first_error:
            self.run.first_error = f"{self.status} " + data[:300].decode(errors="replace")
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.open -= 1
        if not (self.finished and self.status == 200):
            self.run.errors += 1
        if self.run.open == 0:
            self.run.all_closed.set()


TOKEN = b'"content":"t'
LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")


class Run:
    def __init__(self) -> None:
        self.transits: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.open = 0
        self.holding = False
        self.all_closed = asyncio.Event()


def _request(host: str, port: int, tokens: int, *, direct: bool) -> bytes:
    """A streamed chat request: OpenAI's through the gateway, Ollama's
    straight to the backend (the baseline)."""
    messages = [{"role": "user", "content": "Count slowly."}]
    if direct:
        path, auth = "/api/chat", ""
        body = json.dumps({"model": "bench:latest", "stream": True, "messages": messages})
    else:
        path, auth = "/v1/chat/completions", f"authorization: Bearer {KEY}\r\n"
        body = json.dumps(
            {"model": "bench:latest", "stream": True, "max_tokens": tokens + 10,
             "messages": messages}
        )  # fmt: skip
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n{auth}"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n{body}"
    ).encode()


async def _drive(
    host: str, port: int, n: int, ramp: float, hold: float, request: bytes, tokens: int,
    pid: int,
) -> dict[str, Any]:  # fmt: skip
    loop = asyncio.get_running_loop()
    run = Run()
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
    cpu0, _, _ = _proc_stat(pid)
    t0 = time.perf_counter()
    samples = []
    while time.perf_counter() - t0 < hold:
        await asyncio.sleep(1.0)
        samples.append(_proc_stat(pid))
    cpu1 = _proc_stat(pid)[0]
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


def _outcomes(log: Path) -> dict[str, int]:
    """The access log's requests by status (and client disconnects)."""
    counts: dict[str, int] = {}
    for line in log.open():
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError, KeyError):
            entry = json.loads(line)
            name = str(entry["status"]) + (" gone" if entry["client_disconnected"] else "")
            counts[name] = counts.get(name, 0) + 1
    return counts


def measure(n: int, rate: float, ramp: float, hold: float, tmp: Path) -> dict[str, Any]:
    tokens = int(rate * (n / ramp + hold + 3))
    backend_cmd = [PY, "-m", "benchmarks.paced_backend", "--rate", str(rate),
                   "--tokens", str(tokens)]  # fmt: skip
    with _process(backend_cmd, "paced backend on ") as (backend_proc, backend):
        # The baseline: the same N streams straight to the backend, so that
        # what the harness itself adds (client, backend, kernel, a shared
        # machine) is not charged to the gateway.
        host, port = backend.removeprefix("http://").rsplit(":", 1)
        request = _request(host, int(port), tokens, direct=True)
        direct = asyncio.run(
            _drive(host, int(port), n, ramp, hold, request, tokens, backend_proc.pid)
        )
        cfg = tmp / f"gateway-{n}.toml"
        cfg.write_text(
            CONFIG.format(backend=backend, digest=hash_key(KEY), tmp=tmp, max_connections=n + 100)
        )
        log_path = tmp / f"access-{n}.log"
        cmd = [PY, "-m", "sansio_gateway.adapters.cli", "serve", "--config", str(cfg),
               "--port", "0"]  # fmt: skip
        with log_path.open("w") as log, _process(cmd, "listening on ", log) as (gateway, url):
            host, port = url.removeprefix("http://").rsplit(":", 1)
            request = _request(host, int(port), tokens, direct=False)
            result = asyncio.run(
                _drive(host, int(port), n, ramp, hold, request, tokens, gateway.pid)
            )
    run: Run = result["run"]
    base: Run = direct["run"]
    p50, p99 = _pct(run.transits, 50), _pct(run.transits, 99)
    b50, b99 = _pct(base.transits, 50), _pct(base.transits, 99)
    return {
        "streams": n,
        "rate_tokens_per_s": rate,
        "tokens_per_stream": tokens,
        "errors": run.errors,
        "transit_p50_ms": round(p50, 2),
        "transit_p99_ms": round(p99, 2),
        "direct_transit_p50_ms": round(b50, 2),
        "direct_transit_p99_ms": round(b99, 2),
        "direct_errors": base.errors,
        "added_p50_ms": round(max(0.0, p50 - b50), 2),
        "added_p99_ms": round(max(0.0, p99 - b99), 2),
        "tokens_measured": len(run.transits),
        "tokens_expected": int(n * rate * hold),
        "rss_mib": round(result["rss_mib"], 1),
        "rss_per_stream_kib": round(result["rss_mib"] * 1024 / n, 1),
        "cpu_cores": round(result["cores"], 2),
        "open_fds": result["fds"],
        "ramp_s": round(result["ramp_s"], 1),
        "outcomes": _outcomes(log_path),
        "first_error": run.first_error,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s per stream")
    parser.add_argument("--ramp", type=float, default=2000.0, help="new streams per second")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds with all N open")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the configs and access logs")
    args = parser.parse_args()
    limit = _raise_fd_limit(2 * max(args.streams) + 1024)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    rows = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="many-streams-")
            print(f"configs and access logs in {tmp}", flush=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
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
