"""``POST /v1/embeddings`` served from an Ollama backend (``/api/embed``).

Built like :class:`~sansio_gateway.openai_over_ollama.chat.OpenAIChatFlow`, minus
the stream: the request arrives validated, the native body is built for
each attempt, and the one native JSON answer becomes OpenAI's embeddings
list in :meth:`OpenAIEmbeddingsFlow.complete`.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import UpstreamError
from ..flows.base import Plan, UpstreamCall, upstream_object
from ..flows.context import FlowContext
from ..wire.openai_embeddings import EmbeddingsRequest
from .chat_response import usage_from_ollama

__all__ = ["OpenAIEmbeddingsFlow", "embeddings_request_to_ollama", "ollama_embed_to_openai"]


# -- the native request and answer -----------------------------------------------------


def embeddings_request_to_ollama(req: EmbeddingsRequest, *, model: str) -> dict[str, Any]:
    """Build the native ``/api/embed`` body; ``model`` is the backend's name."""
    body: dict[str, Any] = {"model": model, "input": list(req.inputs)}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    if req.truncate is not None:
        body["truncate"] = req.truncate
    if req.keep_alive is not None:
        body["keep_alive"] = req.keep_alive
    if req.options:
        body["options"] = req.options
    return body


def _malformed(what: str) -> UpstreamError:
    return UpstreamError(f"upstream sent a malformed embed response ({what})")


def ollama_embed_to_openai(
    resp: Any, *, model: str, count: int, encoding_format: str
) -> dict[str, Any]:
    """Build OpenAI's embeddings list from a native ``/api/embed`` body.

    ``model`` is the name the client sent and ``count`` the number of inputs.
    Raises :class:`UpstreamError` for an error body or a malformed one.  Read
    the usage with :func:`~sansio_gateway.accounting.usage.read_ollama_usage`
    (the native ``prompt_eval_count``).
    """
    vectors = _vectors(resp, count)
    encode = _base64 if encoding_format == "base64" else None
    data = [
        {"object": "embedding", "index": i, "embedding": encode(v) if encode else v}
        for i, v in enumerate(vectors)
    ]
    tokens = resp.get("prompt_eval_count")
    tokens = tokens if type(tokens) is int and tokens > 0 else 0
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _vectors(resp: Any, count: int) -> list[list[float]]:
    if type(resp) is not dict:
        raise _malformed("not a JSON object")
    if "error" in resp:
        error = resp["error"]
        raise UpstreamError(error if type(error) is str and error else "upstream error")
    vectors = resp.get("embeddings")
    if type(vectors) is not list or len(vectors) != count:
        raise _malformed(f"expected {count} embeddings")
    for vector in vectors:
        # type() is, not isinstance: a JSON boolean is not a number.
        if type(vector) is not list or not all(type(x) in (float, int) for x in vector):
            raise _malformed("an embedding is not an array of numbers")
    return vectors


def _base64(vector: list[float]) -> str:
    try:
        packed = struct.pack(f"<{len(vector)}f", *vector)
    except OverflowError:
        raise _malformed("an embedding value does not fit a float32") from None
    return base64.b64encode(packed).decode("ascii")


class OpenAIEmbeddingsFlow:
    """One attempt; never streams, and translates the whole answer itself."""

    def __init__(self, context: FlowContext, request: EmbeddingsRequest, model: str) -> None:
        self.request = request
        self._usage: TokenUsage | None = None

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert route is not None and backend is not None
        native = embeddings_request_to_ollama(self.request, model=route.target)
        return UpstreamCall(method="POST", path="/api/embed", body=orjson.dumps(native), whole=self)

    # ---- the answer ------------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        native = upstream_object(body)
        answer = ollama_embed_to_openai(
            native,
            model=self.request.model,
            count=len(self.request.inputs),
            encoding_format=self.request.encoding_format,
        )
        self._usage = usage_from_ollama(native)
        return orjson.dumps(answer)

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        # A token is rarely shorter than 4 bytes of JSON; nothing is generated.
        return TokenUsage(prompt_tokens=self.request.size // 4 + 1)
