"""End-to-end benchmark: direct vs the gateway vs LiteLLM's proxy, one command.

    .venv/bin/python -m benchmarks.e2e [--pinned] [--duration 4] [--rounds 3] [--out docs/benchmarks]

What it does:

* starts the emulated Ollama (``sansio-gateway emulate --fast``, 20-token
  answers), which sends a stream as Ollama does: each NDJSON line its own
  HTTP chunk;
* starts the gateway as a deployment runs it: API keys, memory-store limits
  on (high enough never to deny), the SQLite usage ledger, and the JSON
  access log going to a file;
* if ``LITELLM_VENV`` points at a virtualenv with ``litellm[proxy]``, starts
  LiteLLM's proxy on the same backend (one worker, a master key,
  ``LITELLM_LOCAL_MODEL_COST_MAP=True`` so it never goes online); otherwise
  LiteLLM is skipped and said so;
* by default nothing is pinned and nothing is paused: every process shares
  the machine, as a user runs them (issue 13's conditions).  ``--pinned``
  is the second mode: the backend and this harness on CPU 1, the server
  under test alone on CPU 0, the other server stopped while one is measured;
* adds a relay target (a uvloop process that only moves bytes: the floor
  one more hop costs on this machine) unless ``--no-relay``;
* measures non-stream and stream chat at concurrency 1, 16 and 64, the
  targets interleaved within each round, and reports the median round:
  req/s, p50/p95/p99 latency, time to first token, CPU% of the server under
  test, its RSS, and the ratios gateway/LiteLLM and gateway/direct;
* measures time from process start to the first successful answer, and the
  gateway's throughput with ``--workers 2`` on both cores;
* writes ``<out>.json`` and a PNG plot ``<out>.png`` (matplotlib, if installed).

The load generator is benchmarks/loadgen.py (closed loop, keep-alive, raw
asyncio sockets), not wrk: streams need per-event timing for TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sansio_gateway.auth import hash_key

from .loadgen import LoadResult, build_request, run_load

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
KEY = "sk-bench-key"
MODEL = "llama3.2:1b"
MESSAGES = [{"role": "user", "content": "Say hello in twenty words."}]
AUTH = {"authorization": f"Bearer {KEY}"}
GATEWAY_CONFIG = """
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
concurrent_requests = 100000

[store]
usage = "sqlite:///{tmp}/usage.db"
"""
LITELLM_CONFIG = """
model_list:
  - model_name: {model}
    litellm_params:
      model: ollama_chat/{model}
      api_base: {emu}
general_settings:
  master_key: {key}
litellm_settings:
  telemetry: false
"""


PINNED = False  # set by --pinned


def _pin(cpu: int) -> list[str]:
    if PINNED and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu)]
    return []


@contextmanager
def _process(
    cmd: list[str],
    marker: str | None,
    env: dict[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``cmd`` (in ``cwd``, by default this checkout); with a ``marker``,
    wait for the line announcing its URL."""
    proc = subprocess.Popen(
        cmd, cwd=cwd or ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.stdout is not None
    url = ""
    try:
        deadline = time.monotonic() + 120
        while marker is not None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{cmd} exited with {proc.poll()}")
            if marker in line:
                url = line.strip().split(marker, 1)[1].split()[0]
                break
        # The rest of its output (the access log) goes to a file, as in a
        # deployment; an unread pipe would fill and stall the process.
        out = proc.stdout
        with tempfile.NamedTemporaryFile("w", prefix="sgw-bench-", suffix=".log") as log:

            def drain() -> None:
                with contextlib.suppress(ValueError):  # the file closes first at exit
                    log.writelines(out)

            threading.Thread(target=drain, daemon=True).start()
            yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _split(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host.replace("0.0.0.0", "127.0.0.1"), int(port.rstrip("/"))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (LiteLLM forks a worker)."""
    total = _cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(_tree_cpu(int(c)) for c in children)


def _tree(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(p for c in children for p in _tree(int(c)))]


def _pause_others(targets: list[Target], measured: Target | None) -> None:
    """Stop every server under test but the one being measured (SIGSTOP),
    so that one's idle timers and background tasks (LiteLLM has several)
    do not steal the pinned core from the other; resume the measured one.
    Only in ``--pinned`` mode: unpinned, every process runs all the time."""
    if not PINNED:
        return
    for target in targets:
        if target.name == "direct":
            continue  # the backend serves every target
        sig = signal.SIGCONT if measured is None or target is measured else signal.SIGSTOP
        for pid in _tree(target.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _chat_body(stream: bool, native: bool) -> bytes:
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "stream": stream}
    return json.dumps(body).encode()


async def _wait_first_answer(host: str, port: int, path: str, headers: dict[str, str]) -> None:
    request = build_request(host, port, path, _chat_body(False, False), headers)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            result = await run_load(host, port, request, label="probe", concurrency=1,
                                    duration=0.2, max_requests=1, warmup=0)  # fmt: skip
            if result.requests:
                return
        except OSError:
            pass
        await asyncio.sleep(0.02)  # polling a process that is starting; there is no event
    raise RuntimeError(f"no answer from {host}:{port}")


class Target:
    def __init__(self, name: str, url: str, pid: int, path: str, headers: dict[str, str]) -> None:
        self.name, self.pid, self.path, self.headers = name, pid, path, headers
        self.host, self.port = _split(url)

    def request(self, stream: bool) -> bytes:
        native = self.path.startswith("/api/")
        return build_request(
            self.host, self.port, self.path, _chat_body(stream, native), self.headers
        )


async def _measure(
    targets: list[Target], levels: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    runs: dict[tuple[str, str, int], list[tuple[LoadResult, float]]] = {}
    for _ in range(args.rounds):
        for c in levels:
            for stream in (False, True):
                for target in targets:  # interleaved: every target sees the same noise
                    _pause_others(targets, target)
                    cpu0 = _tree_cpu(target.pid)
                    r = await run_load(target.host, target.port, target.request(stream),
                                       label=target.name, concurrency=c, duration=args.duration)  # fmt: skip
                    cpu = 100 * (_tree_cpu(target.pid) - cpu0) / r.elapsed
                    mode = "stream" if stream else "non-stream"
                    runs.setdefault((target.name, mode, c), []).append((r, cpu))
    _pause_others(targets, None)
    rows = []
    for (name, mode, _level), results in runs.items():
        ordered = sorted(results, key=lambda rc: rc[0].rps)
        median, _cpu = ordered[len(ordered) // 2]
        row = median.row()
        row.update(
            target=name, mode=mode, cpu_pct=round(statistics.median(x[1] for x in results), 1)
        )
        rows.append(row)
    return rows


def _startup_seconds(cmd: list[str], url_marker: str, path: str, headers: dict[str, str],
                     env: dict[str, str] | None = None) -> float:  # fmt: skip
    start = time.perf_counter()
    with _process(cmd, url_marker, env) as (_proc, url):
        host, port = _split(url)
        asyncio.run(_wait_first_answer(host, port, path, headers))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--no-workers", action="store_true", help="skip the --workers 2 run")
    parser.add_argument(
        "--no-relay", action="store_true",
        help="skip the relay target (a byte-moving proxy: the floor of one more hop)",
    )  # fmt: skip
    parser.add_argument(
        "--pinned", action="store_true", help="pin the server under test alone to CPU 0"
    )
    args = parser.parse_args()
    global PINNED
    PINNED = args.pinned
    levels = [int(c) for c in args.concurrency.split(",")]
    if PINNED and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the load generator shares CPU 1 with the backend
    tmp = Path(tempfile.mkdtemp(prefix="sgw-bench-"))
    litellm_venv = os.environ.get("LITELLM_VENV")
    report: dict[str, Any] = {"machine": _machine(), "args": vars(args)}

    # --fast caches rendered answers; streams still go one chunk per line.
    emu_cmd = [*_pin(1), PY, "-m", "sansio_gateway.adapters.cli", "emulate", "--port", "0",
               "--fast", "--tokens", "20"]  # fmt: skip
    with _process(emu_cmd, "listening on ") as (emu, emu_url):
        cfg = tmp / "gateway.toml"
        cfg.write_text(GATEWAY_CONFIG.format(emu=emu_url, digest=hash_key(KEY), tmp=tmp))
        # INFO: the JSON access log is on, one line a request, as users run it
        # (_process sends the gateway's stdout to a file once it is up).
        gw_cmd = [*_pin(0), PY, "-m", "sansio_gateway.adapters.cli", "--log-level", "INFO", "serve",
                  "--config", str(cfg), "--port", "0"]  # fmt: skip
        report["startup_s"] = {
            "gateway": round(
                _startup_seconds(gw_cmd, "listening on ", "/v1/chat/completions", AUTH), 3
            )
        }
        with contextlib.ExitStack() as stack:
            gw, gw_url = stack.enter_context(_process(gw_cmd, "listening on "))
            targets = [
                Target("direct", emu_url, emu.pid, "/api/chat", {}),
                Target("gateway", gw_url, gw.pid, "/v1/chat/completions", AUTH),
            ]
            if not args.no_relay:
                # The floor of any proxy here: one more hop through a uvloop
                # process that only moves bytes (benchmarks/chunk_cost.py).
                relay_cmd = [*_pin(0), PY, "-m", "benchmarks.chunk_cost", "--relay", emu_url]
                relay, relay_url = stack.enter_context(_process(relay_cmd, "listening on "))
                targets.append(Target("relay", relay_url, relay.pid, "/api/chat", {}))
            if litellm_venv:
                lcfg = tmp / "litellm.yaml"
                lcfg.write_text(LITELLM_CONFIG.format(model=MODEL, emu=emu_url, key=KEY))
                port = _free_port()
                lcmd = [*_pin(0), str(Path(litellm_venv) / "bin" / "litellm"), "--config", str(lcfg),
                        "--port", str(port), "--num_workers", "1"]  # fmt: skip
                lenv = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
                start = time.perf_counter()
                lproc, _ = stack.enter_context(_process(lcmd, None, lenv))
                asyncio.run(_wait_first_answer("127.0.0.1", port, "/v1/chat/completions", AUTH))
                report["startup_s"]["litellm"] = round(time.perf_counter() - start, 3)
                targets.append(Target("litellm", f"http://127.0.0.1:{port}", lproc.pid,
                                      "/v1/chat/completions", AUTH))  # fmt: skip
            else:
                print(
                    "LiteLLM: skipped (set LITELLM_VENV to a venv with litellm[proxy])",
                    file=sys.stderr,
                )
            for t in targets:  # warm every target before measuring
                asyncio.run(_wait_first_answer(t.host, t.port, t.path, t.headers))
            rows = asyncio.run(_measure(targets, levels, args))
            report["rss_mib"] = {
                t.name: round(_rss_mib(t.pid), 1) for t in targets if t.name != "direct"
            }
        report["rows"] = rows
        if not args.no_workers:
            report["workers"] = _workers_scaling(emu_url, tmp, args)
    _write(report, Path(args.out))
    _print(report)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _workers_scaling(emu_url: str, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    """Non-stream throughput at c=64 with one worker on one core vs two workers
    on two cores (the load generator then shares the cores)."""
    out = {}
    cfg = tmp / "gateway.toml"
    for workers in (1, 2):
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        port = _free_port()
        cmd = [PY, "-m", "sansio_gateway.adapters.cli", "--log-level", "WARNING", "serve", "--config", str(cfg),
               "--port", str(port), "--workers", str(workers)]  # fmt: skip
        with _process(cmd, None):
            asyncio.run(_wait_first_answer("127.0.0.1", port, "/v1/chat/completions", AUTH))
            target = Target("gateway", f"http://127.0.0.1:{port}", 0, "/v1/chat/completions", AUTH)
            results = [asyncio.run(run_load(target.host, target.port, target.request(False),
                                            label="w", concurrency=64, duration=args.duration))
                       for _ in range(args.rounds)]  # fmt: skip
        out[f"workers_{workers}_rps"] = round(statistics.median(r.rps for r in results), 1)
    out["ratio"] = round(out["workers_2_rps"] / out["workers_1_rps"], 2)
    return out


def _machine() -> dict[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def _by(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["target"], r["mode"], r["concurrency"]): r for r in rows}


def _ratios(rows: list[dict[str, Any]]) -> list[str]:
    by = _by(rows)
    lines = []
    for (name, mode, c), row in sorted(by.items()):
        if name != "gateway":
            continue
        parts = [f"{mode} c={c}:"]
        direct = by.get(("direct", mode, c))
        litellm = by.get(("litellm", mode, c))
        if litellm and litellm["rps"]:
            parts.append(f"gateway/LiteLLM throughput {row['rps'] / litellm['rps']:.1f}x")
        if direct:
            parts.append(f"gateway/direct {row['rps'] / direct['rps']:.2f}")
            parts.append(f"added p50 {row['p50_ms'] - direct['p50_ms']:.3f} ms")
            if mode == "stream" and direct["ttft_p50_ms"] != "":
                parts.append(f"added TTFT {row['ttft_p50_ms'] - direct['ttft_p50_ms']:.3f} ms")
        relay = by.get(("relay", mode, c))
        if direct and relay:
            parts.append(f"(a byte relay adds p50 {relay['p50_ms'] - direct['p50_ms']:.3f} ms")
            if mode == "stream" and direct["ttft_p50_ms"] != "":
                parts.append(f"TTFT {relay['ttft_p50_ms'] - direct['ttft_p50_ms']:.3f} ms)")
            else:
                parts[-1] += ")"
        lines.append(" ".join(parts))
    return lines


def _print(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"# e2e chat benchmark, {m['date']}\n{m['cpu']}, Python {m['python']}, {m['os']}\n")
    print("| mode | c | target | req/s | p50 ms | p95 ms | p99 ms | TTFT p50 ms | CPU % | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(report["rows"], key=lambda r: (r["mode"], r["concurrency"], r["target"])):
        print(f"| {r['mode']} | {r['concurrency']} | {r['target']} | {r['rps']} | {r['p50_ms']} |"
              f" {r['p95_ms']} | {r['p99_ms']} | {r['ttft_p50_ms']} | {r['cpu_pct']} | {r['errors']} |")  # fmt: skip
    print()
    for line in _ratios(report["rows"]):
        print(line)
    print(f"\nstartup to first answer (s): {report['startup_s']}")
    print(f"RSS after the run (MiB): {report['rss_mib']}")
    if "workers" in report:
        print(f"--workers scaling (non-stream, c=64): {report['workers']}")


def _write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    by = _by(report["rows"])
    levels = sorted({r["concurrency"] for r in report["rows"]})
    for col, mode in enumerate(("non-stream", "stream")):
        for name in ("direct", "relay", "gateway", "litellm"):
            if (name, mode, levels[0]) not in by:
                continue
            axes[0][col].plot(
                levels, [by[(name, mode, c)]["rps"] for c in levels], marker="o", label=name
            )
            axes[1][col].plot(
                levels, [by[(name, mode, c)]["p99_ms"] for c in levels], marker="o", label=name
            )
        axes[0][col].set_title(f"{mode}: throughput (req/s)")
        axes[1][col].set_title(f"{mode}: p99 latency (ms)")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("concurrency")
            ax.legend()
    fig.suptitle(f"sansio-gateway e2e, {report['machine']['date']}")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=90)


if __name__ == "__main__":
    main()
