"""``POST /api/chat`` and ``POST /api/generate`` served from an OpenAI-compatible backend.

Theory of operation, as for :mod:`sansio_gateway.openai_over_ollama.chat` but in
the other direction: the flow validates the whole native request from the
body decoded on arrival (:class:`~sansio_gateway.wire.ollama.NativeBody`; a
bad request never reaches a backend).  ``plan`` either answers a
load/unload request locally (no messages, or no prompt: docs/wire-notes.md, "Native
endpoints clients call"; ``done_reason: "load"``, or ``"unload"`` with ``keep_alive: 0``) or
builds the OpenAI call (:mod:`sansio_gateway.ollama_over_openai.requests`).  The
answer is translated whole (:mod:`sansio_gateway.ollama_over_openai.responses`) or
event by event, by the one stream base (flows/stream.py):
``framing.SSEDecoder`` ->
:class:`~sansio_gateway.ollama_over_openai.stream.OpenAIChatToOllamaStream`
-> ``encode_ndjson``.

Every native answer carries the model name the client sent and
``created_at`` from the ``now`` the flow was created with (one timestamp
for every line of a stream: the core has no clock).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..flows.base import JSON_HEADERS, LocalAnswer, Plan, UpstreamCall
from ..flows.context import FlowContext
from ..wire.ollama import (
    NativeBody,
    NativeChatRequest,
    NativeGenerateRequest,
    chat_request_from,
    generate_request_from,
    is_zero_keep_alive,
)
from .requests import chat_to_openai, generate_to_openai
from .responses import (
    Shape,
    chat_completion_to_ollama,
    completion_to_ollama,
    final_line,
    rfc3339,
)
from .stream import OpenAIChatToOllamaStream, sse_to_ndjson

__all__ = ["OllamaChatFlow", "OllamaGenerateFlow"]


class _GenerationFlow:
    """What chat and generate share; subclasses say how to translate the request."""

    shape = Shape.CHAT
    request: NativeChatRequest | NativeGenerateRequest

    def __init__(self, context: FlowContext, body: NativeBody, model: str) -> None:
        self._request_id = context.request_id
        self._created_at = rfc3339(context.now)
        self._prompt_bytes = body.size
        self._completions = False  # the upstream is /completions, not /chat/completions
        self._usage: TokenUsage | None = None

    # ---- planning ---------------------------------------------------------

    def _translate(self, target: str) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert route is not None
        request = self.request
        if request.is_load:
            return self._load_answer()
        path, native = self._translate(route.target)
        self._completions = path == "/completions"
        body = orjson.dumps(native)
        if not request.stream:
            return UpstreamCall(method="POST", path=path, body=body, whole=self)
        lines = OpenAIChatToOllamaStream(
            shape=self.shape,
            model=request.model,
            created_at=self._created_at,
            id_prefix=self._request_id,
        )
        stream = sse_to_ndjson(lines, prompt_bytes=self._prompt_bytes)
        return UpstreamCall(method="POST", path=path, body=body, stream=stream)

    def _load_answer(self) -> LocalAnswer:
        """No backend call: an OpenAI server has nothing to load (docs/wire-notes.md, "Native
        endpoints clients call")."""
        reason = "unload" if is_zero_keep_alive(self.request.keep_alive) else "load"
        line = final_line(self.shape, self.request.model, self._created_at, reason, None)
        return LocalAnswer(status=200, headers=JSON_HEADERS, body=orjson.dumps(line))

    # ---- whole answers ---------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        model, created_at = self.request.model, self._created_at
        if self._completions:
            answer, usage = completion_to_ollama(body, model=model, created_at=created_at)
        else:
            answer, usage = chat_completion_to_ollama(
                body, shape=self.shape, model=model, created_at=created_at
            )
        self._usage = usage
        return orjson.dumps(answer)

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        # As on /v1: a token is rarely shorter than 4 bytes of JSON.
        return TokenUsage(prompt_tokens=self._prompt_bytes // 4 + 1)


class OllamaChatFlow(_GenerationFlow):
    shape = Shape.CHAT
    request: NativeChatRequest

    def __init__(self, context: FlowContext, body: NativeBody, model: str) -> None:
        super().__init__(context, body, model)
        self.request = chat_request_from(body.data)

    def _translate(self, target: str) -> tuple[str, dict[str, Any]]:
        return chat_to_openai(self.request, model=target, id_prefix=self._request_id)


class OllamaGenerateFlow(_GenerationFlow):
    shape = Shape.GENERATE
    request: NativeGenerateRequest

    def __init__(self, context: FlowContext, body: NativeBody, model: str) -> None:
        super().__init__(context, body, model)
        self.request = generate_request_from(body.data)

    def _translate(self, target: str) -> tuple[str, dict[str, Any]]:
        return generate_to_openai(self.request, model=target)
