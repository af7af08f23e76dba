"""Where a request's time goes inside the gateway, at concurrency 1.

    .venv/bin/python -m benchmarks.critical_path [--seconds 6] [--tokens 20]
        [--kinds stream nonstream]

"Added latency" (benchmarks/e2e.py) says how much later a client gets its
answer through the gateway than straight from the backend; this says in
which stretch of the gateway's own work that time is spent.  The gateway
runs as ``serve`` runs it (fast transport, uvloop, API keys, memory-store
limits, the SQLite ledger, the JSON access log to a file), in a child
process whose modules get timestamps at six points of each request:

1. the first bytes of a request arrive (``data_received``);
2. the transport front gets the request, read and parsed;
3. ``Exchange.start`` returns (auth, validation, route, the limits' key);
4. the upstream client is asked to send (limits admitted, the backend
   request translated, the attempt's scopes and timers set up);
5. the backend request's bytes are ready to go;
6. the first bytes of the backend's answer are parsed;
7. the first bytes of the client's answer leave (head and first line);
8. the connection waits for its next request (the rest of the stream, the
   limits' commit, the usage record, metrics, the access line).

The chunk_cost backend answers (a stream of ``--tokens`` lines, one HTTP
chunk each, or one JSON answer for a non-stream request); a closed loop of
one client in this process sends the requests.  Printed per stretch: p50
and p90 in µs, over the requests after the first fifth (warm-up).  The
stamps cost about a microsecond each; they are the only change to the code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.chunk_cost import CONFIG, KEY, PY, _process
from sansio_gateway.auth import hash_key

STRETCHES = (
    ("read the request", "arrived", "front"),
    ("Exchange.start", "front", "started"),
    ("admit, translate, set up the attempt", "started", "asked"),
    ("upstream client: connection, request bytes", "asked", "sent"),
    ("the backend (another process)", "sent", "answered"),
    ("answer to the client's first bytes", "answered", "out"),
    ("after the first bytes: rest, commit, record, log", "out", "waiting"),
)


# ---- the probed gateway (child process) -------------------------------------------


def _probe(out_path: str) -> None:
    """Stamp the points above in the serving modules, then run ``serve``."""
    from sansio_gateway.adapters import cli, fast_http, fast_server, fast_upstream, front

    from sansio_gateway import exchange

    ns = time.perf_counter_ns
    marks: dict[str, int] = {}
    rows: list[dict[str, int]] = []
    client = fast_server._ClientProtocol
    # uvloop binds data_received once per connection: patched before any.
    data_received = client.data_received

    def arrived(self: Any, data: bytes) -> None:
        if "arrived" not in marks and not self.busy:
            marks["arrived"] = ns()
        data_received(self, data)

    client.data_received = arrived  # type: ignore[method-assign]
    serve = front.TransportFront.serve

    async def fronted(self: Any, *args: Any) -> Any:
        marks["front"] = ns()
        return await serve(self, *args)

    front.TransportFront.serve = fronted  # type: ignore[method-assign]
    start = exchange.Exchange.start

    def started(self: Any, *args: Any) -> Any:
        actions = start(self, *args)
        marks["started"] = ns()
        return actions

    exchange.Exchange.start = started  # type: ignore[method-assign]
    request = fast_upstream.FastUpstreamClient.request

    async def asked(self: Any, *args: Any) -> Any:
        marks.setdefault("asked", ns())
        return await request(self, *args)

    fast_upstream.FastUpstreamClient.request = asked  # type: ignore[method-assign]
    request_bytes = fast_upstream.request_bytes

    def sent(*args: Any) -> bytes:
        data = request_bytes(*args)
        marks.setdefault("sent", ns())
        return data

    fast_upstream.request_bytes = sent  # type: ignore[assignment]
    feed = fast_http.ParsedResponse.feed

    def answered(self: Any, data: bytes) -> None:
        marks.setdefault("answered", ns())
        feed(self, data)

    fast_http.ParsedResponse.feed = answered  # type: ignore[method-assign]
    write_out = client.write_out

    def out(self: Any) -> None:
        if self.out and "answered" in marks:
            marks.setdefault("out", ns())
        write_out(self)

    client.write_out = out  # type: ignore[method-assign]
    read_request = client._read_request_inner

    async def waiting(self: Any) -> Any:
        if "out" in marks:
            marks["waiting"] = ns()
            if all(point in marks for _, a, b in STRETCHES for point in (a, b)):
                rows.append(dict(marks))
        marks.clear()
        return await read_request(self)

    client._read_request_inner = waiting  # type: ignore[method-assign]

    def dump() -> None:
        while True:
            time.sleep(0.5)
            Path(out_path).write_text(json.dumps(rows[:]))

    threading.Thread(target=dump, daemon=True).start()
    sys.argv = ["sansio-gateway", *sys.argv[3:]]
    cli.main()


# ---- the client ------------------------------------------------------------------------


async def _drive(url: str, stream: bool, seconds: float) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(
        {"model": "bench:latest", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\nauthorization: Bearer %s\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (host.encode(), KEY.encode(), len(body), body)
    )
    reader, writer = await asyncio.open_connection(host, int(port))
    done = 0
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            if b"content-length:" in head.lower():
                start = head.lower().index(b"content-length:") + 15
                await reader.readexactly(int(head[start : head.index(b"\r\n", start)]))
            else:
                while True:
                    size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            done += 1
    finally:
        writer.close()
    return done


def measure(kind: str, seconds: float, tokens: int, tmp: Path) -> dict[str, Any]:
    backend_cmd = [PY, "-m", "benchmarks.chunk_cost", "--backend", "--tokens", str(tokens)]
    with _process(backend_cmd, "chunk backend on ") as (_, backend):
        cfg = tmp / "gateway.toml"
        cfg.write_text(
            CONFIG.format(backend=backend, digest=hash_key(KEY), tmp=tmp, max_connections=500)
        )
        stamps = tmp / f"stamps-{kind}.json"
        cmd = [PY, "-m", "benchmarks.critical_path", "--probe", str(stamps),
               "serve", "--config", str(cfg), "--port", "0", "--transport", "fast"]  # fmt: skip
        with (tmp / "access.log").open("w") as log, _process(cmd, "listening on ", log) as (_, url):
            requests = asyncio.run(_drive(url, kind == "stream", seconds))
            time.sleep(1.0)  # the probe writes its stamps every half second
            rows = json.loads(stamps.read_text())
    rows = rows[len(rows) // 5 :]
    result: dict[str, Any] = {"kind": kind, "requests": requests, "measured": len(rows)}
    for name, a, b in STRETCHES:
        values = sorted((r[b] - r[a]) / 1000 for r in rows)
        result[name] = {
            "p50_us": round(statistics.median(values), 1),
            "p90_us": round(values[len(values) * 9 // 10], 1),
        }
    inside = sorted((r["out"] - r["arrived"] - (r["answered"] - r["sent"])) / 1000 for r in rows)
    result["gateway, first bytes in to first bytes out, backend excluded"] = {
        "p50_us": round(statistics.median(inside), 1),
        "p90_us": round(inside[len(inside) * 9 // 10], 1),
    }
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        _probe(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--tokens", type=int, default=20, help="NDJSON lines per stream")
    parser.add_argument("--kinds", nargs="+", default=["nonstream", "stream"])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            results.append(measure(kind, args.seconds, args.tokens, Path(tmp)))
    print(f"{os.uname().nodename} Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for result in results:
        print(f"\n{result['kind']}: {result['requests']} requests, {result['measured']} measured")
        for name, value in result.items():
            if isinstance(value, dict):
                print(f"  {name:58} p50 {value['p50_us']:8.1f} µs   p90 {value['p90_us']:8.1f} µs")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
