"""What tracing costs a request: the gateway with ``[tracing]`` off, on, and before it existed.

    .venv/bin/python -m benchmarks.tracing_cost [--before-python DIR/.venv/bin/python]
                                                 [--rounds 5] [--duration 4] [--concurrency 1]

Starts the emulated Ollama (``emulate --fast``, 20-token answers) and up to
three gateways on it, configured as benchmarks/e2e.py configures one (keys,
memory-store limits that never deny, the SQLite ledger, the access log):

* ``off``: this checkout, no ``[tracing]`` section (the default);
* ``on``: this checkout with ``[tracing] enabled = true``, every trace
  sampled, exported over OTLP/HTTP (batched, as deployed) to a loopback
  collector run by this script that answers 200 and counts the spans;
* ``on, sample_ratio 0.1``: the same, one trace in ten recorded;
* ``before``: with ``--before-python``, a Python whose environment has the
  gateway as it was before tracing (e.g. a venv with ``pip install -e``
  of an earlier checkout; it runs from that checkout's directory).

Non-stream chat at each concurrency, the targets interleaved within each
round, the median round reported: req/s, p50/p99 latency, and the server's
CPU time per request (what tracing adds shows there first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import statistics
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sansio_gateway.auth import hash_key

from .e2e import AUTH, GATEWAY_CONFIG, KEY, PY, Target, _process, _tree_cpu, _wait_first_answer
from .loadgen import run_load

TRACING = """
[tracing]
enabled = true
exporter = "otlp"
endpoint = "{collector}"
sample_ratio = {ratio}
"""


class _Collector:
    """A loopback OTLP/HTTP receiver that accepts every export (and counts them)."""

    def __init__(self) -> None:
        self.exports = 0
        self.bytes = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                outer.bytes += len(self.rfile.read(int(self.headers["content-length"])))
                outer.exports += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextlib.contextmanager
    def running(self) -> Iterator[_Collector]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


def _gateway_cmd(python: str, config: Path) -> list[str]:
    return [python, "-m", "sansio_gateway.adapters.cli", "--log-level", "INFO", "serve",
            "--config", str(config), "--port", "0"]  # fmt: skip


async def _round(targets: list[Target], c: int, duration: float) -> list[dict[str, Any]]:
    rows = []
    for target in targets:  # interleaved: every target sees the same noise
        cpu0 = _tree_cpu(target.pid)
        r = await run_load(target.host, target.port, target.request(False), label=target.name,
                           concurrency=c, duration=duration)  # fmt: skip
        cpu = _tree_cpu(target.pid) - cpu0
        row = r.row()
        row.update(target=target.name, cpu_us_per_req=round(1e6 * cpu / max(1, r.requests), 1))
        rows.append(row)
    return rows


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(rows, key=lambda r: r["rps"])
    row = dict(ordered[len(ordered) // 2])
    row["cpu_us_per_req"] = round(statistics.median(r["cpu_us_per_req"] for r in rows), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1")
    parser.add_argument("--before-python", help="a Python with the gateway before tracing")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sgw-tracing-"))
    collector = _Collector()
    emu_cmd = [PY, "-m", "sansio_gateway.adapters.cli", "emulate", "--port", "0",
               "--fast", "--tokens", "20"]  # fmt: skip
    with collector.running(), _process(emu_cmd, "listening on ") as (_, emu_url):
        base = GATEWAY_CONFIG.format(emu=emu_url, digest=hash_key(KEY), tmp=tmp)
        configs = {
            "off": base,
            "on": base + TRACING.format(collector=collector.url, ratio=1.0),
            "on, sample_ratio 0.1": base + TRACING.format(collector=collector.url, ratio=0.1),
        }
        if args.before_python:
            configs["before"] = base
        with contextlib.ExitStack() as stack:
            targets = []
            for name, text in configs.items():
                path = tmp / f"{name.split(',')[0]}-{len(targets)}.toml"
                path.write_text(text)
                python, cwd = PY, None
                if name == "before":
                    python = args.before_python
                    cwd = Path(args.before_python).resolve().parents[2]
                proc, url = stack.enter_context(
                    _process(_gateway_cmd(python, path), "listening on ", cwd=cwd)
                )
                targets.append(Target(name, url, proc.pid, "/v1/chat/completions", AUTH))
            for t in targets:
                asyncio.run(_wait_first_answer(t.host, t.port, t.path, t.headers))
            for c in (int(x) for x in args.concurrency.split(",")):
                runs: dict[str, list[dict[str, Any]]] = {}
                for _ in range(args.rounds):
                    for row in asyncio.run(_round(targets, c, args.duration)):
                        runs.setdefault(row["target"], []).append(row)
                print(
                    f"\nnon-stream chat, c={c}, median of {args.rounds} rounds of {args.duration}s"
                )
                print("| target | req/s | p50 ms | p99 ms | server CPU us/req | errors |")
                print("|---|---|---|---|---|---|")
                for name, rows in runs.items():
                    m = _median(rows)
                    print(f"| {name} | {m['rps']} | {m['p50_ms']} | {m['p99_ms']} |"
                          f" {m['cpu_us_per_req']} | {m['errors']} |")  # fmt: skip
    print(f"\ncollector: {collector.exports} OTLP exports, {collector.bytes} bytes")


if __name__ == "__main__":
    main()
