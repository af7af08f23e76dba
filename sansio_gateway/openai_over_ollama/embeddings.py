"""``POST /v1/embeddings`` served from an Ollama backend (``/api/embed``).

Built like :class:`~sansio_gateway.flows.openai_chat.OpenAIChatFlow`, minus
the stream: the request is validated when the flow is created, the native
body is built once the model is resolved, and the one native JSON answer
becomes OpenAI's embeddings list in :meth:`OpenAIEmbeddingsFlow.complete`.
``plan`` never asks for a stream, so the stream hooks are unreachable and
answer with nothing (as :class:`~sansio_gateway.flows.local.LocalFlow`'s do).
"""

from __future__ import annotations

import orjson

from ..catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, UpstreamError
from ..http import Headers, Surface
from ..ollama_chat_response import usage_from_ollama
from ..openai_embeddings import (
    EmbeddingsRequest,
    embeddings_request_to_ollama,
    ollama_embed_to_openai,
    parse_embeddings_request,
)
from ..usage import TokenUsage
from .base import JSON_HEADERS, LocalAnswer, UpstreamCall

__all__ = ["OpenAIEmbeddingsFlow"]


class OpenAIEmbeddingsFlow:
    surface = Surface.OPENAI
    route_name = "embeddings"
    stream_done = True  # never streams
    stream_failed = False

    def __init__(self, body: bytes) -> None:
        self.request: EmbeddingsRequest = parse_embeddings_request(body)
        self._prompt_bytes = len(body)
        self._usage: TokenUsage | None = None

    @property
    def model(self) -> str:
        return self.request.model

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer:
        assert route is not None and backend is not None
        native = embeddings_request_to_ollama(self.request, model=route.target)
        return UpstreamCall(
            method="POST", path="/api/embed", body=orjson.dumps(native), stream=False
        )

    # ---- stream hooks: unreachable, plan never streams ------------------

    def stream_headers(self) -> Headers:
        return JSON_HEADERS

    def feed(self, data: bytes) -> bytes:
        return b""

    def finish(self) -> bytes:
        return b""

    def fail(self, error: GatewayError) -> bytes:
        return b""

    # ---- the answer ------------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        try:
            native = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("backend sent a response that is not JSON") from None
        if not isinstance(native, dict):
            raise UpstreamError("backend sent an unexpected response")
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
        return TokenUsage(prompt_tokens=self._prompt_bytes // 4 + 1)
