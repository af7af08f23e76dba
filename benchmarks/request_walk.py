"""What one streamed chat request touches in the core, counted.

Runs one ``POST /v1/chat/completions`` with ``stream: true`` through a
Gateway and its Exchange with no sockets (the upstream answer is a canned
native NDJSON stream of ``--tokens`` lines, one chunk per line, as Ollama
sends it), with an API key and a tokens-per-minute limit so that the limit
path runs too, and reports how much of the core the request went through:
the modules whose code ran, the classes whose objects were made or called,
and the functions called.  A measure of how many places a newcomer must
read to follow one request, before and after a restructure.

    python -m benchmarks.request_walk [--tokens 20] [--list]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import orjson

import sansio_gateway as core
from sansio_gateway import actions as acts

KEY = "sk-walk-0123456789"
CONFIG = f"""
[[backends]]
name = "local"
url = "http://127.0.0.1:11434"
discover = false

[[models]]
name = "llama3.2"
backend = "local"

[[auth.keys]]
id = "walk"
user = "alice"
sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"

[limits]
tokens_per_minute = 100000
"""


def _stream(tokens: int) -> list[bytes]:
    lines = [
        {"model": "llama3.2", "message": {"role": "assistant", "content": f"t{i} "}, "done": False}
        for i in range(tokens)
    ]
    lines.append(
        {
            "model": "llama3.2",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 12,
            "eval_count": tokens,
        }
    )
    return [orjson.dumps(line) + b"\n" for line in lines]


def setup() -> tuple[core.Gateway, core.MemoryLimitStore]:
    """What a process builds once at startup (not counted)."""
    config = core.parse_config(CONFIG, source="walk.toml", env={})
    return core.Gateway(config), core.MemoryLimitStore()


def run_request(gateway: core.Gateway, store: core.MemoryLimitStore, tokens: int, n: int) -> int:
    """One streamed request, start to RecordUsage; returns the body bytes sent."""
    exchange = gateway.exchange(f"req-{n}")
    body = orjson.dumps(
        {
            "model": "llama3.2",
            "stream": True,
            "messages": [{"role": "user", "content": "Say hello"}],
        }
    )
    request = core.IncomingRequest(
        method="POST",
        path="/v1/chat/completions",
        headers=((b"authorization", b"Bearer " + KEY.encode()),),
        body=body,
    )
    now = 1_000.0
    pending = list(exchange.start(request, now))
    sent = 0
    chunks = _stream(tokens)
    while pending:
        action = pending.pop(0)
        results: list[Any] = []
        if isinstance(action, acts.CheckLimits):
            decision = store.admit(
                action.key, action.specs, int(now * 1e6), action.costs, action.request_id
            )
            results.append(acts.LimitsDecided(decision=decision))
        elif isinstance(action, acts.SendUpstream):
            results.append(
                acts.UpstreamResponseStarted(
                    status=200, headers=((b"content-type", b"application/x-ndjson"),)
                )
            )
            results += [acts.UpstreamChunkReceived(data=chunk) for chunk in chunks]
            results.append(acts.UpstreamClosed())
        elif isinstance(action, acts.SendBody):
            sent += len(action.data)
        for result in results:
            now += 0.001
            pending += exchange.handle(result, now)
    return sent


def trace(fn: Callable[[], object]) -> tuple[set[str], set[str], set[str]]:
    modules: set[str] = set()
    classes: set[str] = set()
    functions: set[str] = set()

    def profiler(frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("sansio_gateway") or module.startswith("sansio_gateway.adapters"):
            return
        code = frame.f_code
        modules.add(module)
        functions.add(f"{module}.{code.co_qualname}")
        owner = code.co_qualname.rsplit(".", 1)[0] if "." in code.co_qualname else None
        if owner and "<locals>" not in owner:
            classes.add(f"{module}.{owner}")

    sys.setprofile(profiler)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return modules, classes, functions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--list", action="store_true", help="print every name")
    args = parser.parse_args()
    gateway, store = setup()
    run_request(gateway, store, args.tokens, 0)  # warm: caches are not what is counted
    modules, classes, functions = trace(lambda: run_request(gateway, store, args.tokens, 1))
    print(f"streamed chat request, {args.tokens} tokens, through the core (no sockets):")
    print(f"  modules whose code ran: {len(modules)}")
    print(f"  classes whose objects were made or called: {len(classes)}")
    print(f"  functions and methods called: {len(functions)}")
    if args.list:
        for title, names in (("modules", modules), ("classes", classes)):
            print(f"{title}:")
            for name in sorted(names):
                print(f"  {name}")


if __name__ == "__main__":
    main()
