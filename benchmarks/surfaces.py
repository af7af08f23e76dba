"""Microbenchmarks of the Anthropic and Responses translators, beside the chat path.

    .venv/bin/python -m benchmarks.surfaces [--seconds 1.0]

* chat chunks -> Anthropic SSE events, and -> Responses SSE events, per
  second (the per-chunk hot path those streams add on top of the chat one);
* Anthropic and Responses request parsing + translation to a ChatRequest
  per second, beside the chat surface's own parse (the extra encode and
  parse of the chat body is in these numbers).
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from benchmarks.micro import rate, stream_chunks
from sansio_gateway.anthropic_over_chat.request import messages_to_chat
from sansio_gateway.anthropic_over_chat.stream import ChatToMessagesStream
from sansio_gateway.responses_over_chat.request import responses_to_chat
from sansio_gateway.responses_over_chat.stream import ChatToResponsesStream
from sansio_gateway.wire.anthropic import parse_messages_request
from sansio_gateway.wire.openai_chat import parse_chat_request
from sansio_gateway.wire.openai_responses import parse_responses_request


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


CHUNKS = [_chunk({"content": f"word{i} "}) for i in range(20)] + [
    _chunk({}, "stop"),
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 26, "completion_tokens": 20}},
]
MESSAGES = orjson.dumps({
    "model": "claude-x", "max_tokens": 64, "stream": True, "system": "You are terse.",
    "messages": [{"role": "user", "content": "Say hello in twenty words."}], "temperature": 0.2,
})  # fmt: skip
RESPONSES = orjson.dumps({
    "model": "gpt-x", "max_output_tokens": 64, "stream": True, "instructions": "You are terse.",
    "input": "Say hello in twenty words.", "temperature": 0.2,
})  # fmt: skip
CHAT = orjson.dumps({
    "model": "m", "max_tokens": 64, "stream": True, "temperature": 0.2,
    "messages": [{"role": "system", "content": "You are terse."},
                 {"role": "user", "content": "Say hello in twenty words."}],
})  # fmt: skip
REQUEST = parse_responses_request(RESPONSES)


def anthropic_chunks() -> int:
    stream = ChatToMessagesStream(model="claude-x", message_id="msg_1")
    for chunk in CHUNKS:
        stream.feed(chunk)
    stream.finish()
    return len(CHUNKS)


def responses_chunks() -> int:
    stream = ChatToResponsesStream(REQUEST, response_id="resp_1", created_at=1)
    for chunk in CHUNKS:
        stream.feed(chunk)
    stream.finish()
    return len(CHUNKS)


def anthropic_request() -> int:
    messages_to_chat(parse_messages_request(MESSAGES))
    return 1


def responses_request() -> int:
    responses_to_chat(parse_responses_request(RESPONSES))
    return 1


def chat_request() -> int:
    parse_chat_request(CHAT)
    return 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    s = parser.parse_args().seconds
    print(f"Ollama NDJSON -> OpenAI SSE (for scale): {rate(stream_chunks, s):,.0f} chunks/s")
    print(f"chat chunks -> Anthropic SSE: {rate(anthropic_chunks, s):,.0f} chunks/s")
    print(f"chat chunks -> Responses SSE: {rate(responses_chunks, s):,.0f} chunks/s")
    print(f"chat request parse: {rate(chat_request, s):,.0f} requests/s")
    print(f"Anthropic request parse + translation: {rate(anthropic_request, s):,.0f} requests/s")
    print(f"Responses request parse + translation: {rate(responses_request, s):,.0f} requests/s")


if __name__ == "__main__":
    main()
