"""The stream half of a /v1 flow over Ollama: NDJSON in, SSE out.

Both ``/v1/chat/completions`` and ``/v1/completions`` over Ollama decode
the native NDJSON stream, feed each line to their per-line translator (an
``OllamaChatStream`` or ``OllamaCompletionStream``), encode the payloads as
SSE events, and close with ``data: [DONE]`` once the translator is done
and not failed: the one stream base (flows/stream.py) with these parts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..flows.base import SSE_HEADERS
from ..flows.stream import Records, TranslatedStream
from ..framing import SSE_DONE, NDJSONDecoder, encode_sse_json

__all__ = ["ndjson_to_sse"]


def ndjson_to_sse(
    records: Records[Any],
    *,
    prompt_bytes: int,
    frame: Callable[[Any], bytes | None] | None = None,
) -> TranslatedStream[Any]:
    """``frame``: the translator's hot path, the SSE event of a common line
    (see ``TranslatedStream``)."""
    return TranslatedStream(
        decoder=NDJSONDecoder(),
        records=records,
        encode=encode_sse_json,
        headers=SSE_HEADERS,
        prompt_bytes=prompt_bytes,
        trailer=SSE_DONE,
        frame=frame,
    )
