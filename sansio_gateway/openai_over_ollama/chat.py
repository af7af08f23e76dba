"""``POST /v1/chat/completions`` served from an Ollama backend.

The request arrives validated (the route's parser ran once, routes.py).
For each attempt the flow builds the native ``/api/chat`` body and the
answer's translator: itself for a whole ``chat.completion`` from one native
JSON object, or, for a stream, the one stream base (flows/stream.py):
``framing.NDJSONDecoder`` -> ``OllamaChatStream`` -> ``encode_sse_json``.
The answer names the model as the client sent it.
"""

from __future__ import annotations

import orjson

from ..accounting.usage import TokenUsage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..flows.base import Plan, UpstreamCall, upstream_object
from ..flows.context import FlowContext
from ..wire.openai_chat import ChatRequest
from .chat_request import chat_request_to_ollama
from .chat_response import ollama_chat_to_completion, usage_from_ollama
from .chat_stream import OllamaChatStream
from .sse_stream import ndjson_to_sse

__all__ = ["OpenAIChatFlow"]


class OpenAIChatFlow:
    """One attempt; the flow itself translates a whole answer."""

    def __init__(self, context: FlowContext, request: ChatRequest, model: str) -> None:
        self.context = context
        self.request = request
        self.completion_id = f"chatcmpl-{context.request_id}"
        self.created = int(context.now)
        self._usage: TokenUsage | None = None

    # ---- planning ---------------------------------------------------------

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert route is not None and backend is not None
        context = self.context
        native = chat_request_to_ollama(
            self.request, model=route.target, default_max_tokens=context.default_max_tokens
        )
        body = orjson.dumps(native)
        if not self.request.stream:
            return UpstreamCall(method="POST", path="/api/chat", body=body, whole=self)
        lines = OllamaChatStream(
            completion_id=self.completion_id,
            created=self.created,
            model=self.request.model,
            include_usage=self.request.include_usage,
            reasoning_field=context.reasoning_field,
            forced_tool=self.request.forced_tool,
        )
        stream = ndjson_to_sse(lines, prompt_bytes=self.request.size, frame=lines.sse_event)
        return UpstreamCall(method="POST", path="/api/chat", body=body, stream=stream)

    # ---- whole answers ---------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        native = upstream_object(body)
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

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        # A token is rarely shorter than 4 bytes of JSON.
        return TokenUsage(prompt_tokens=self.request.size // 4 + 1)
