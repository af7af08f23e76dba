"""A bounded soak: mixed load for a few minutes while the gateway's memory is watched.

    .venv/bin/python -m benchmarks.soak [--minutes 3] [--concurrency 16] [--sample-every 5]
        [--only chat] [--pinned]

What it does:

* starts the emulated Ollama (``python -m tests.emulators.ollama --fast``,
  32-piece answers) and the gateway (``python -m sansio_gateway.adapters.cli serve``, a
  SQLite usage ledger in a temporary directory, access log on) as
  subprocesses, as users run it: an API key, memory-store limits that
  never deny (so every request goes through admission and leaves a
  committed id behind, the state issue 13 bounds), nothing pinned unless
  ``--pinned`` (the gateway on CPU 0, the rest on CPU 1);
* drives a closed-loop mixed load over raw keep-alive sockets (as
  ``benchmarks/loadgen.py`` does): whole and streamed chat on ``/v1``,
  streamed chat on ``/api``, unknown models (404), and clients that hang
  up right after the response head of a stream (``--only chat`` keeps
  just the whole answers, the highest request rate); every connection is
  also recycled now and then;
* samples the gateway's RSS (``/proc/PID/status`` VmRSS) and open file
  descriptors every few seconds and prints a row per sample;
* at the end prints the totals per kind, the RSS growth rate after the
  warm-up (least-squares slope, MiB per minute), RSS at minutes 1, 5 and
  10 (those the run reaches), the mean request rate, checks ``/metrics``
  against the requests sent, and stops the gateway with SIGTERM.

A leak shows as a steady positive slope (and fds that keep growing); a
healthy gateway levels off after the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sansio_gateway.auth import hash_key

from .loadgen import build_request

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MODEL = "llama3.2:1b"
MESSAGES = [{"role": "user", "content": "Tell me a story."}]

# kind -> share of the requests
MIX = {
    "chat": 0.45,  # /v1/chat/completions, whole answer
    "stream": 0.25,  # /v1/chat/completions, SSE
    "ollama_stream": 0.10,  # /api/chat, NDJSON
    "not_found": 0.10,  # unknown model: 404
    "abort": 0.10,  # stream, client hangs up after the response head
}
EXPECTED_STATUS = {"chat": 200, "stream": 200, "ollama_stream": 200, "not_found": 404, "abort": 200}
RECYCLE_EVERY = 200  # requests per connection before a fresh one
KEY = "sk-soak"


# ---- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    url: str
    lines: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid


def _pin(cpu: int, pinned: bool) -> list[str]:
    if pinned and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


@contextmanager
def _process(cmd: list[str], marker: str) -> Iterator[Proc]:
    """Start ``cmd``, wait for the line announcing its URL, then keep
    draining its output (counting lines, keeping error lines) so it never
    blocks on a full pipe."""
    popen = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert popen.stdout is not None
    stdout = popen.stdout
    try:
        url = ""
        while not url:
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"{cmd} exited with {popen.poll()} before listening")
            if marker in line:
                url = line.split(marker, 1)[1].split()[0]
        proc = Proc(popen=popen, url=url)

        def drain() -> None:
            for line in stdout:
                proc.lines += 1
                bad = line.startswith(("ERROR", "CRITICAL", "WARNING", "Traceback"))
                if bad and len(proc.errors) < 50:
                    proc.errors.append(line.rstrip())

        threading.Thread(target=drain, daemon=True).start()
        yield proc
    finally:
        if popen.poll() is None:
            popen.terminate()
        try:
            popen.wait(30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def _split(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port.rstrip("/"))


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---- load -----------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    wrong: Counter[str] = field(default_factory=Counter)  # unexpected status or broken framing
    connections: int = 0


def _requests(host: str, port: int) -> dict[str, bytes]:
    def body(model: str, stream: bool) -> bytes:
        return json.dumps({"model": model, "messages": MESSAGES, "stream": stream}).encode()

    chat = "/v1/chat/completions"
    auth = {"authorization": f"Bearer {KEY}"}
    return {
        "chat": build_request(host, port, chat, body(MODEL, False), auth),
        "stream": build_request(host, port, chat, body(MODEL, True), auth),
        "ollama_stream": build_request(host, port, "/api/chat", body(MODEL, True), auth),
        "not_found": build_request(host, port, chat, body("no-such-model:1b", False), auth),
        "abort": build_request(host, port, chat, body(MODEL, True), auth),
    }


async def _read_response(reader: asyncio.StreamReader, *, head_only: bool) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if head_only:
        return status
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        start = lower.index(b"content-length:") + len(b"content-length:")
        await reader.readexactly(int(lower[start : lower.index(b"\r\n", start)]))
    return status


async def _worker(
    host: str, port: int, requests: dict[str, bytes], tally: Tally, deadline: float, seed: int,
    mix: dict[str, float],
) -> None:  # fmt: skip
    rng = random.Random(seed)
    kinds, weights = list(mix), list(mix.values())
    writer: asyncio.StreamWriter | None = None
    used = 0
    while time.monotonic() < deadline:
        if writer is None or used >= RECYCLE_EVERY:
            if writer is not None:
                writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            tally.connections += 1
            used = 0
        kind = rng.choices(kinds, weights)[0]
        tally.sent[kind] += 1
        used += 1
        try:
            writer.write(requests[kind])
            status = await asyncio.wait_for(
                _read_response(reader, head_only=kind == "abort"), timeout=30
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            tally.wrong[kind] += 1
            writer.close()
            writer = None
            continue
        (tally.ok if status == EXPECTED_STATUS[kind] else tally.wrong)[kind] += 1
        if kind == "abort":  # hang up mid-stream; the next request gets a new connection
            writer.transport.abort()
            writer = None
    if writer is not None:
        writer.close()


# ---- sampling and the report ----------------------------------------------------------------


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    n = len(points)
    if n < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (y - mean_y) for t, y in points)
    return 60 * cov / var if var else float("nan")


async def _sample(
    pid: int, tally: Tally, started: float, deadline: float, every: float
) -> list[tuple[float, float, int, int]]:
    samples: list[tuple[float, float, int, int]] = []
    print(f"{'t (s)':>7} {'RSS MiB':>9} {'fds':>5} {'requests':>9} {'req/s':>7} {'wrong':>6}")
    last_t, last_n = 0.0, 0
    while True:
        t = time.monotonic() - started
        n = sum(tally.sent.values())
        row = (t, _rss_mib(pid), _fds(pid), n)
        samples.append(row)
        rate = (n - last_n) / (t - last_t) if t > last_t else 0.0
        print(
            f"{t:7.1f} {row[1]:9.1f} {row[2]:5d} {n:9d} {rate:7.0f} {sum(tally.wrong.values()):6d}",
            flush=True,
        )
        last_t, last_n = t, n
        if time.monotonic() >= deadline:
            return samples
        await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))


def _metrics_total(host: str, port: int) -> tuple[float, float]:
    """gateway_requests_total summed, and the in-flight gauge, from /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
    total = in_flight = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_requests_total":
                total += sample.value
            elif sample.name == "gateway_requests_in_flight":
                in_flight += sample.value
    return total, in_flight


async def _soak(args: argparse.Namespace, gateway: Proc) -> int:
    host, port = _split(gateway.url)
    requests = _requests(host, port)
    tally = Tally()
    started = time.monotonic()
    deadline = started + args.minutes * 60
    sampler = asyncio.create_task(_sample(gateway.pid, tally, started, deadline, args.sample_every))
    mix = {args.only: 1.0} if args.only else MIX
    await asyncio.gather(
        *[
            _worker(host, port, requests, tally, deadline, seed, mix)
            for seed in range(args.concurrency)
        ]
    )
    samples = await sampler
    elapsed = time.monotonic() - started

    warm = [(t, rss) for t, rss, _, _ in samples if t >= args.warmup]
    slope = slope_per_minute(warm)
    sent = sum(tally.sent.values())
    print()
    print(f"{'kind':<14} {'sent':>8} {'ok':>8} {'wrong':>6}")
    for kind in MIX:
        print(f"{kind:<14} {tally.sent[kind]:8d} {tally.ok[kind]:8d} {tally.wrong[kind]:6d}")
    print(f"{'all':<14} {sent:8d} {sum(tally.ok.values()):8d} {sum(tally.wrong.values()):6d}")
    print(f"connections opened: {tally.connections}")
    print()
    first, last = samples[0], samples[-1]
    print(
        f"RSS: start {first[1]:.1f} MiB, end {last[1]:.1f} MiB, peak {max(s[1] for s in samples):.1f} MiB"
    )
    if warm:
        print(
            f"RSS after the {args.warmup:.0f} s warm-up: {warm[0][1]:.1f} -> {warm[-1][1]:.1f} MiB"
        )
    print(
        f"RSS growth rate after warm-up: {slope:+.3f} MiB/min (least squares, {len(warm)} samples)"
    )
    for minute in (1, 5, 10):
        at = [row for row in samples if row[0] >= minute * 60]
        if at:
            print(f"RSS at {minute:2d} min: {at[0][1]:.1f} MiB")
    print(f"mean rate: {sent / elapsed:.0f} req/s over {elapsed:.0f} s")
    print(f"open fds: start {first[2]}, end {last[2]}")

    # Let the last hung-up streams settle, then compare with /metrics.
    total, in_flight = 0.0, 0.0
    for _ in range(50):
        total, in_flight = _metrics_total(host, port)
        if in_flight <= 1 and total >= sent:
            break
        await asyncio.sleep(0.1)  # polling another process; there is no event to wait on
    print(f"/metrics: gateway_requests_total {total:.0f} (sent {sent}), in flight {in_flight:.0f}")
    print(f"gateway log lines: {gateway.lines}, warning or error lines: {len(gateway.errors)}")
    for line in gateway.errors[:10]:
        print("  " + line)
    return 0 if not tally.wrong and in_flight <= 1 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds left out of the slope")
    parser.add_argument("--tokens", type=int, default=32, help="pieces per emulated answer")
    parser.add_argument("--only", choices=list(MIX), help="one kind of request instead of the mix")
    parser.add_argument("--pinned", action="store_true", help="gateway on CPU 0, the rest on CPU 1")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        emulator_cmd = [*_pin(1, args.pinned), PY, "-m", "tests.emulators.ollama", "--fast", "--port", "0",
                        "--tokens", str(args.tokens)]  # fmt: skip
        with _process(emulator_cmd, "listening on ") as emulator:
            config = Path(tmp) / "gateway.toml"
            config.write_text(
                f'[[backends]]\nname = "emu"\nkind = "ollama"\nurl = "{emulator.url}"\n'
                f'[[auth.keys]]\nid = "soak"\nuser = "soak"\nsha256 = "{hash_key(KEY)}"\n'
                "[limits]\nrequests_per_minute = 100000000\ntokens_per_minute = 1000000000\n"
                "concurrent_requests = 100000\n"
                f'[store]\nurl = "memory://"\nusage = "sqlite:///{tmp}/usage.db"\n'
            )
            gateway_cmd = [*_pin(0, args.pinned), PY, "-m", "sansio_gateway.adapters.cli", "serve", "--config", str(config),
                           "--port", "0"]  # fmt: skip
            with _process(gateway_cmd, "listening on ") as gateway:
                print(
                    f"soak: {args.minutes:g} min, concurrency {args.concurrency}, gateway pid"
                    f" {gateway.pid} at {gateway.url}, emulator at {emulator.url}"
                )
                code = asyncio.run(_soak(args, gateway))
                gateway.popen.send_signal(signal.SIGTERM)
                try:
                    exit_code = gateway.popen.wait(60)
                except subprocess.TimeoutExpired:
                    exit_code = None
                print(f"gateway exit after SIGTERM: {exit_code}")
                if exit_code != 0:
                    code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
