"""``POST /v1/completions`` served from an Ollama backend (``/api/generate``).

Built like :class:`~sansio_gateway.flows.openai_chat.OpenAIChatFlow`: the
request is parsed and validated when the flow is created (a bad request
never reaches a backend), the native body is built once the model is
resolved, and the answer is translated whole (one native JSON object -> one
``text_completion``) or as a stream (``framing.NDJSONDecoder`` ->
``OllamaCompletionStream`` -> ``encode_sse_json``).
"""

from __future__ import annotations

import orjson

from ..catalogue import Route
from ..config import BackendConfig
from ..errors import UpstreamError
from ..framing import NDJSONDecoder
from ..http import Surface
from ..ollama_chat_response import usage_from_ollama
from ..openai_completions import (
    CompletionRequest,
    OllamaCompletionStream,
    completion_request_to_ollama,
    ollama_generate_to_completion,
    parse_completion_request,
)
from .base import LocalAnswer, UpstreamCall
from .context import FlowContext
from .sse_stream import NdjsonToSseStream

__all__ = ["OpenAICompletionsFlow"]


class OpenAICompletionsFlow(NdjsonToSseStream[OllamaCompletionStream]):
    surface = Surface.OPENAI
    route_name = "completions"

    def __init__(self, context: FlowContext, body: bytes) -> None:
        self.context = context
        self.request: CompletionRequest = parse_completion_request(body)
        # Unique per request (Ollama's are cmpl-<0..998>: docs/wire-notes.md, "Response ids").
        self.completion_id = f"cmpl-{context.request_id}"
        self.created = int(context.now)
        self._reset_stream_state(body)

    @property
    def model(self) -> str:
        return self.request.model

    # ---- planning ---------------------------------------------------------

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer:
        assert route is not None and backend is not None
        native = completion_request_to_ollama(
            self.request,
            model=route.target,
            default_max_tokens=self.context.default_max_tokens,
        )
        if self.request.stream:
            self._decoder = NDJSONDecoder()
            self._stream = OllamaCompletionStream(
                completion_id=self.completion_id,
                created=self.created,
                model=self.request.model,
                include_usage=self.request.include_usage,
            )
        return UpstreamCall(
            method="POST",
            path="/api/generate",
            body=orjson.dumps(native),
            stream=self.request.stream,
        )

    # Streamed answers: feed/finish/fail come from NdjsonToSseStream.

    # ---- whole answers ---------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        try:
            native = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("backend sent a response that is not JSON") from None
        if not isinstance(native, dict):
            raise UpstreamError("backend sent an unexpected response")
        self._usage = usage_from_ollama(native)
        completion = ollama_generate_to_completion(
            native, completion_id=self.completion_id, created=self.created, model=self.request.model
        )
        return orjson.dumps(completion)
