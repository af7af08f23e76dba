"""Same-format passthrough: an OpenAI client in front of an OpenAI-compatible backend.

Theory of operation: the body the client sent is forwarded with only the
model rewritten to the backend's name for it (and back again in every
answer).  Streams always ask the backend for ``stream_options.include_usage``
so the gateway learns the real token counts; when the client did not ask
for usage, the usage chunk is dropped on the way back (and a ``usage``
field riding on an ordinary chunk is removed), so the client sees exactly
what it asked for (docs/rate-limiting.md, "What is charged").

The stream is the one stream base (flows/stream.py) with SSE on both
sides, decoded and re-encoded event by event: the rewrite of
``model`` needs the JSON, and re-encoding guarantees clean framing even when
the backend sends comments or multi-line events.  ``[DONE]`` and in-band
``{"error": ...}`` events pass through; a stream that ends without
``[DONE]`` gets an error event, as every /v1 stream does.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage, read_openai_usage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, InvalidRequest, UpstreamError, openai_error_body
from ..flows.base import SSE_HEADERS, Plan, UpstreamCall, upstream_object
from ..flows.context import FlowContext
from ..flows.stream import TranslatedStream
from ..framing import SSE_DONE, SSEDecoder, SSEEvent, encode_sse_json
from ..wire.openai_chat import ChatRequest, remote_image_url_param
from ..wire.openai_completions import CompletionRequest
from ..wire.openai_embeddings import EmbeddingsRequest

__all__ = ["ChatEvents", "OpenAIPassthroughFlow"]

OpenAIRequest = ChatRequest | CompletionRequest | EmbeddingsRequest


def _endpoint(request: OpenAIRequest) -> tuple[str, bool]:
    """The backend's path for the request (its own, under the backend's
    base URL), and whether the answer streams (embeddings never do)."""
    if isinstance(request, ChatRequest):
        return "/chat/completions", request.stream
    if isinstance(request, CompletionRequest):
        return "/completions", request.stream
    return "/embeddings", False


class OpenAIPassthroughFlow:
    """One attempt; the flow itself translates a whole answer."""

    def __init__(self, context: FlowContext, request: OpenAIRequest, model: str) -> None:
        self._data: dict[str, Any] = request.decoded
        self._model = model
        self._path, self._stream = _endpoint(request)
        self._prompt_bytes = request.size
        self._usage: TokenUsage | None = None

    # ---- planning ---------------------------------------------------------

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert route is not None
        if backend is None or not backend.allow_image_urls:
            _refuse_image_urls(self._data)
        body = dict(self._data)
        body["model"] = route.target
        if not self._stream:
            return UpstreamCall(method="POST", path=self._path, body=orjson.dumps(body), whole=self)
        options = body.get("stream_options")
        client_wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        stream = TranslatedStream(
            decoder=SSEDecoder(),
            records=ChatEvents(self._model, client_wants_usage=client_wants_usage),
            encode=encode_sse_json,
            headers=SSE_HEADERS,
            prompt_bytes=self._prompt_bytes,
            trailer=SSE_DONE,
            count_error=False,
        )
        return UpstreamCall(method="POST", path=self._path, body=orjson.dumps(body), stream=stream)

    # ---- whole answers ---------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        answer = upstream_object(body)
        self._usage = read_openai_usage(answer.get("usage"))
        if "model" in answer:
            answer["model"] = self._model
        return orjson.dumps(answer)

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage(prompt_tokens=self._prompt_bytes // 4 + 1)


class ChatEvents:
    """The stream base's per-record translator: each SSE event passes with
    ``model`` put back; ``[DONE]`` (sent again as the base's trailer) or an
    in-band error ends it."""

    def __init__(self, model: str, *, client_wants_usage: bool) -> None:
        self._model = model
        self._client_wants_usage = client_wants_usage
        self.done = False
        self.failed = False
        self.usage: TokenUsage | None = None

    def feed(self, record: SSEEvent) -> list[dict[str, Any]]:
        data = record.data
        if data.startswith("[DONE]"):
            self.done = True
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.fail(UpstreamError("backend sent an event that is not JSON"))
        if not isinstance(chunk, dict):
            return self.fail(UpstreamError("backend sent an unexpected event"))
        if "error" in chunk:
            self.failed = True
            return [chunk]
        usage = read_openai_usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        if not self._client_wants_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return []  # the usage chunk the gateway asked for, not the client
            del chunk["usage"]
        if "model" in chunk:
            chunk["model"] = self._model
        return [chunk]

    def finish(self) -> list[dict[str, Any]]:
        return self.fail(UpstreamError("backend closed the stream before it finished"))

    def fail(self, error: GatewayError) -> list[dict[str, Any]]:
        self.failed = True
        return [openai_error_body(error)]


def _refuse_image_urls(data: dict[str, Any]) -> None:
    # The same 400 as the Ollama path (openai_over_ollama.chat_request._image): a remote
    # image URL would be fetched by the backend, from inside the network.
    param = remote_image_url_param(data.get("messages"))
    if param is not None:
        raise InvalidRequest(
            "Image URLs are not forwarded to this backend; send the image inline "
            "as a base64 data URL (data:image/png;base64,...).",
            param=param,
        )
