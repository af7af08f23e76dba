"""``POST /v1/chat/completions`` served from an Ollama backend.

The flow parses and validates the OpenAI request when it is created (a bad
request never reaches a backend), builds the native ``/api/chat`` body once
the model is resolved, and translates the answer: a whole ``chat.completion``
from one native JSON object, or SSE chunks from the native NDJSON stream
(``framing.NDJSONDecoder`` -> ``OllamaChatStream`` -> ``encode_sse_json``).
"""

from __future__ import annotations

import orjson

from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import UpstreamError
from ..flows.base import LocalAnswer, UpstreamCall
from ..flows.context import FlowContext
from ..framing import NDJSONDecoder
from ..http import Surface
from ..wire.openai_chat import ChatRequest, parse_chat_request
from .chat_request import chat_request_to_ollama
from .chat_response import ollama_chat_to_completion, usage_from_ollama
from .chat_stream import OllamaChatStream
from .sse_stream import NdjsonToSseStream

__all__ = ["OpenAIChatFlow"]


class OpenAIChatFlow(NdjsonToSseStream[OllamaChatStream]):
    surface = Surface.OPENAI
    route_name = "chat.completions"

    def __init__(self, context: FlowContext, body: bytes) -> None:
        self.context = context
        self.request: ChatRequest = parse_chat_request(body)
        self.completion_id = f"chatcmpl-{context.request_id}"
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
        context = self.context
        native = chat_request_to_ollama(
            self.request, model=route.target, default_max_tokens=context.default_max_tokens
        )
        if self.request.stream:
            self._decoder = NDJSONDecoder()
            self._stream = OllamaChatStream(
                completion_id=self.completion_id,
                created=self.created,
                model=self.request.model,
                include_usage=self.request.include_usage,
                reasoning_field=context.reasoning_field,
                forced_tool=self.request.forced_tool,
            )
        return UpstreamCall(
            method="POST", path="/api/chat", body=orjson.dumps(native), stream=self.request.stream
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
        completion = ollama_chat_to_completion(
            native,
            completion_id=self.completion_id,
            created=self.created,
            model=self.request.model,
            reasoning_field=self.context.reasoning_field,
            forced_tool=self.request.forced_tool,
        )
        return orjson.dumps(completion)
