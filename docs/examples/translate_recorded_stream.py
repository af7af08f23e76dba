"""Translate a recorded Ollama /api/chat stream into the OpenAI SSE the gateway sends.

No server, no sockets: the core's framing and translator are plain objects
fed bytes.  This is exactly what the gateway does per upstream chunk::

    NDJSONDecoder.feed(bytes) -> native lines
    OllamaChatStream.feed(line) -> chat.completion.chunk payloads
    encode_sse_json(payload) -> b"data: {...}\\n\\n"    (then data: [DONE])

Run it::

    python docs/examples/translate_recorded_stream.py [--include-usage] [FILE]

``--chunk-size`` cuts the recording into pieces of that many bytes before
feeding it, as a network would; the output is the same however it is cut.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The translators are internal modules (the public API is sansio_gateway.__all__);
# this example shows how they fit together, so it reaches in.
from sansio_gateway.framing import SSE_DONE, NDJSONDecoder, encode_sse_json
from sansio_gateway.openai_over_ollama.chat_stream import OllamaChatStream

RECORDING = Path(__file__).with_name("recorded_ollama_stream.ndjson")


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` cut into chunks of ``size`` bytes, as they might arrive."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def translate(data: bytes, *, model: str, include_usage: bool, chunk_size: int) -> bytes:
    """The SSE body the gateway would send for this upstream body."""
    decoder = NDJSONDecoder()
    stream = OllamaChatStream(
        completion_id="chatcmpl-example",  # the gateway derives it from the request id
        created=1764000000,  # the gateway passes the request's start time
        model=model,  # the name the client asked for, not the backend's
        include_usage=include_usage,
    )
    payloads: list[dict[str, Any]] = []
    for chunk in pieces(data, chunk_size):
        for line in decoder.feed(chunk):
            payloads += stream.feed(line)
    for line in decoder.feed_eof():
        payloads += stream.feed(line)
    payloads += stream.finish()  # an error payload if the done line never came
    out = b"".join(encode_sse_json(payload) for payload in payloads)
    # The translator leaves the terminator to its caller: [DONE] ends a
    # successful stream only, as OpenAI's does.
    return out + SSE_DONE if stream.done and not stream.failed else out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=RECORDING)
    parser.add_argument("--model", default="llama3.2:3b", help="the model the client asked for")
    parser.add_argument("--include-usage", action="store_true", help="stream_options.include_usage")
    parser.add_argument("--chunk-size", type=int, default=7, help="bytes per upstream chunk")
    args = parser.parse_args(argv)
    body = translate(
        args.file.read_bytes(),
        model=args.model,
        include_usage=args.include_usage,
        chunk_size=args.chunk_size,
    )
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
