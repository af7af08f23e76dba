"""Core microbenchmarks: what one core does per second, without any I/O.

    .venv/bin/python -m benchmarks.micro [--seconds 1.0]

* Ollama NDJSON -> OpenAI SSE chunks per second: the stream as the /v1
  chat flow builds it (decoder, stream translator with its hot path for
  plain content lines, SSE encoder), and the translator's general path
  alone (decoder + ``OllamaChatStream.feed`` + ``encode_sse_json``);
* OpenAI SSE -> Ollama NDJSON events per second, as the /api/chat flow
  over an OpenAI backend builds it, one event per upstream read;
* framing throughput in MB/s for the SSE and NDJSON decoders;
* OpenAI chat request validation + translation to /api/chat per second;
* whole Exchanges per second (start + scripted upstream results);
* stream chunks through an Exchange per second (``Exchange.handle`` with
  one NDJSON line per result: the state machine's per-chunk path, with the
  translation and the SSE encoding);
* rate-limit decisions per second (memory store, admit + commit).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import orjson

from sansio_gateway.actions import UpstreamChunkReceived, UpstreamClosed, UpstreamResponseStarted
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.config import LimitsConfig, LimitValues
from sansio_gateway.framing import NDJSONDecoder, SSEDecoder, encode_sse_json
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import IncomingRequest
from sansio_gateway.limits import Costs, LimitSpecs, MemoryLimitStore, build_specs
from sansio_gateway.ollama_over_openai.responses import Shape
from sansio_gateway.ollama_over_openai.stream import OpenAIChatToOllamaStream, sse_to_ndjson
from sansio_gateway.openai_over_ollama.chat_request import chat_request_to_ollama
from sansio_gateway.openai_over_ollama.chat_stream import OllamaChatStream
from sansio_gateway.openai_over_ollama.sse_stream import ndjson_to_sse
from sansio_gateway.wire.openai_chat import parse_chat_request
from tests.helpers import make_config


def _line(text: str, done: bool = False) -> bytes:
    body = {
        "model": "llama3.2:1b",
        "created_at": "2026-11-26T06:00:00.123456789Z",
        "message": {"role": "assistant", "content": text},
        "done": done,
    }
    if done:
        body.update(done_reason="stop", prompt_eval_count=26, eval_count=20)
    return orjson.dumps(body) + b"\n"


STREAM = b"".join(_line(f"word{i} ") for i in range(20)) + _line("", done=True)
CHAT = orjson.dumps(
    {
        "model": "llama3.2:1b",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello in twenty words."},
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        "stream": True,
    }
)


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Units per CPU second of ``fn`` (which returns the units it did).

    CPU time, not wall time: on a machine shared with other work the wall
    clock also counts the time the neighbours ran; on a quiet one the two
    agree."""
    done = 0
    start = time.process_time()
    while time.process_time() - start < seconds:
        done += fn()
    return done / (time.process_time() - start)


def stream_chunks() -> int:
    """The stream as the /v1 chat flow builds it (openai_over_ollama/chat.py):
    the stream base with the translator's hot path for plain content lines."""
    machine = OllamaChatStream(completion_id="chatcmpl-x", created=1, model="m", include_usage=True)
    stream = ndjson_to_sse(machine, prompt_bytes=0, frame=machine.sse_event)
    stream.feed(STREAM)
    return 22  # 20 content chunks, the finish and usage chunks (as below)


def stream_chunks_general() -> int:
    """The same translation through the translator's general path only:
    decoder -> ``OllamaChatStream.feed`` -> ``encode_sse_json``."""
    decoder = NDJSONDecoder()
    machine = OllamaChatStream(completion_id="chatcmpl-x", created=1, model="m", include_usage=True)
    out = 0
    for line in decoder.feed(STREAM):
        for payload in machine.feed(line):
            encode_sse_json(payload)
            out += 1
    return out


def _event(delta: dict[str, object], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return encode_sse_json(chunk)


# What an OpenAI-compatible backend sends, one event per read.
OPENAI_EVENTS = [
    _event({"role": "assistant", "content": ""}),
    *(_event({"content": f"word{i} "}) for i in range(20)),
    _event({}, "stop"),
    encode_sse_json({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5}}),
    b"data: [DONE]\n\n",
]


def reverse_chunks() -> int:
    """OpenAI SSE -> Ollama NDJSON as the /api/chat flow over an OpenAI
    backend builds it, one event per upstream read."""
    lines = OpenAIChatToOllamaStream(
        shape=Shape.CHAT, model="m", created_at="2026-01-01T00:00:00Z", id_prefix="x"
    )
    stream = sse_to_ndjson(lines, prompt_bytes=0)
    for event in OPENAI_EVENTS:
        stream.feed(event)
    return len(OPENAI_EVENTS)


SSE_DATA = b"".join(
    encode_sse_json({"choices": [{"delta": {"content": f"w{i} "}}]}) for i in range(200)
)
NDJSON_DATA = STREAM * 10


def sse_bytes() -> int:
    SSEDecoder().feed(SSE_DATA)
    return len(SSE_DATA)


def ndjson_bytes() -> int:
    NDJSONDecoder().feed(NDJSON_DATA)
    return len(NDJSON_DATA)


def translate() -> int:
    chat_request_to_ollama(parse_chat_request(CHAT), model="llama3.2:1b")
    return 1


GATEWAY = Gateway(make_config())
GATEWAY.record_discovery("ollama", [DiscoveredModel(name="llama3.2:1b")], 0.0)
HEAD = UpstreamResponseStarted(status=200, headers=())
CHUNK = UpstreamChunkReceived(data=STREAM)


def exchange() -> int:
    ex = GATEWAY.exchange("bench")
    ex.start(IncomingRequest(method="POST", path="/v1/chat/completions", body=CHAT), 1.0)
    ex.handle(HEAD, 1.0)
    ex.handle(CHUNK, 1.0)
    ex.handle(UpstreamClosed(), 1.0)
    return 1


LINES = [UpstreamChunkReceived(data=_line(f"word{i} ")) for i in range(200)]
LAST = UpstreamChunkReceived(data=_line("", done=True))


def exchange_chunks() -> int:
    """A 200-chunk stream, one line per result: the start is amortised."""
    ex = GATEWAY.exchange("bench")
    ex.start(IncomingRequest(method="POST", path="/v1/chat/completions", body=CHAT), 1.0)
    ex.handle(HEAD, 1.0)
    for chunk in LINES:
        ex.handle(chunk, 1.0)
    ex.handle(LAST, 1.0)
    return len(LINES) + 1


LIMITS = LimitsConfig(requests_per_minute=10**8, tokens_per_minute=10**8, concurrent_requests=10**5)
SPECS = build_specs(LIMITS, "u", "m")
STORE = MemoryLimitStore()
_now = [1_795_600_000_000_000]


def _admit_commit(store: MemoryLimitStore, specs: LimitSpecs) -> int:
    _now[0] += 1000
    rid = str(_now[0])
    store.admit("u", specs, _now[0], Costs(tokens=100, requests=1), rid)
    store.commit("u", specs, _now[0], rid, 100, 90)
    return 1


def decisions() -> int:
    return _admit_commit(STORE, SPECS)


# Every limit a deployment sets: per user and per model, requests and tokens
# per minute, tokens per day, concurrency (the shape of many_streams' config
# plus the per-model and daily limits).
FULL_SPECS = build_specs(
    LimitsConfig(
        requests_per_minute=10**8,
        tokens_per_minute=10**8,
        tokens_per_day=10**12,
        concurrent_requests=10**5,
        models={"m": LimitValues(requests_per_minute=10**8, tokens_per_minute=10**8)},
    ),
    "u",
    "m",
)
FULL_STORE = MemoryLimitStore()


def full_decisions() -> int:
    return _admit_commit(FULL_STORE, FULL_SPECS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    s = parser.parse_args().seconds
    print(f"Ollama NDJSON -> OpenAI SSE: {rate(stream_chunks, s):,.0f} chunks/s")
    general = rate(stream_chunks_general, s)
    print(f"Ollama NDJSON -> OpenAI SSE, general path only: {general:,.0f} chunks/s")
    print(f"OpenAI SSE -> Ollama NDJSON: {rate(reverse_chunks, s):,.0f} chunks/s")
    print(f"SSE decoding: {rate(sse_bytes, s) / 1e6:,.1f} MB/s")
    print(f"NDJSON decoding: {rate(ndjson_bytes, s) / 1e6:,.1f} MB/s")
    print(f"chat request validation + translation: {rate(translate, s):,.0f} requests/s")
    print(f"whole Exchanges (20-chunk stream, no limits): {rate(exchange, s):,.0f} /s")
    print(f"stream chunks through an Exchange: {rate(exchange_chunks, s):,.0f} chunks/s")
    print(f"rate-limit admit + commit (memory): {rate(decisions, s):,.0f} /s")
    print(
        f"rate-limit admit + commit (memory, user+model RPM/TPM, TPD, concurrency): "
        f"{rate(full_decisions, s):,.0f} /s"
    )


if __name__ == "__main__":
    main()
