"""``POST /api/chat`` and ``POST /api/generate`` served from an OpenAI-compatible backend.

Theory of operation, as for :mod:`sansio_gateway.openai_over_ollama.chat` but in
the other direction: the flow is built from the validated native request
(a bad request never reaches a backend) and the already-resolved model
(:mod:`sansio_gateway.local.ollama_names`).  ``plan`` either answers a
load/unload request locally (no messages, or no prompt: docs/wire-notes.md, "Native
endpoints clients call"; ``done_reason: "load"``, or ``"unload"`` with ``keep_alive: 0``) or
builds the OpenAI call (:mod:`sansio_gateway.ollama_over_openai.requests`).  The
answer is translated whole (:mod:`sansio_gateway.ollama_over_openai.responses`) or
event by event: ``framing.SSEDecoder`` ->
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
from ..errors import GatewayError, UpstreamError
from ..flows.base import JSON_HEADERS, NDJSON_HEADERS, LocalAnswer, UpstreamCall
from ..flows.context import FlowContext
from ..framing import FramingError, SSEDecoder, encode_ndjson
from ..http import Headers, Surface
from ..wire.ollama import (
    NativeChatRequest,
    NativeGenerateRequest,
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
from .stream import OpenAIChatToOllamaStream

__all__ = ["OllamaChatFlow", "OllamaGenerateFlow"]


class _GenerationFlow:
    """What chat and generate share; subclasses say how to translate the request."""

    surface = Surface.OLLAMA
    route_name = "ollama"
    shape = Shape.CHAT

    def __init__(
        self,
        context: FlowContext,
        request: NativeChatRequest | NativeGenerateRequest,
        *,
        model: str,
        prompt_bytes: int,
    ) -> None:
        self.request = request
        self._model = model
        self._request_id = context.request_id
        self._created_at = rfc3339(context.now)
        self._prompt_bytes = prompt_bytes
        self._completions = False  # the upstream is /completions, not /chat/completions
        self._decoder: SSEDecoder | None = None
        self._stream: OpenAIChatToOllamaStream | None = None
        self._usage: TokenUsage | None = None

    @property
    def model(self) -> str:
        """The catalogue name (the client's name may carry a synthetic ``:latest``)."""
        return self._model

    # ---- planning ---------------------------------------------------------

    def _translate(self, target: str) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer:
        assert route is not None
        request = self.request
        if request.is_load:
            return self._load_answer()
        path, body = self._translate(route.target)
        self._completions = path == "/completions"
        if request.stream:
            self._decoder = SSEDecoder()
            self._stream = OpenAIChatToOllamaStream(
                shape=self.shape,
                model=request.model,
                created_at=self._created_at,
                id_prefix=self._request_id,
            )
        return UpstreamCall(
            method="POST", path=path, body=orjson.dumps(body), stream=request.stream
        )

    def _load_answer(self) -> LocalAnswer:
        """No backend call: an OpenAI server has nothing to load (docs/wire-notes.md, "Native
        endpoints clients call")."""
        reason = "unload" if is_zero_keep_alive(self.request.keep_alive) else "load"
        line = final_line(self.shape, self.request.model, self._created_at, reason, None)
        return LocalAnswer(status=200, headers=JSON_HEADERS, body=orjson.dumps(line))

    # ---- streamed answers -----------------------------------------------

    def stream_headers(self) -> Headers:
        return NDJSON_HEADERS

    def feed(self, data: bytes) -> bytes:
        assert self._stream is not None and self._decoder is not None
        try:
            events = self._decoder.feed(data)
        except FramingError as exc:
            return self.fail(UpstreamError(f"malformed stream from backend: {exc.reason}"))
        lines: list[dict[str, Any]] = []
        for event in events:
            lines += self._stream.feed(event.data, event.event)
        return b"".join([encode_ndjson(line) for line in lines])

    def finish(self) -> bytes:
        assert self._stream is not None and self._decoder is not None
        try:
            self._decoder.feed_eof()  # an unterminated SSE event is discarded (WHATWG)
        except FramingError as exc:
            return self.fail(UpstreamError(f"malformed stream from backend: {exc.reason}"))
        return b"".join([encode_ndjson(line) for line in self._stream.finish()])

    def fail(self, error: GatewayError) -> bytes:
        assert self._stream is not None
        return b"".join([encode_ndjson(line) for line in self._stream.fail(error)])

    @property
    def stream_done(self) -> bool:
        stream = self._stream
        return stream is not None and (stream.done or stream.failed)

    @property
    def stream_failed(self) -> bool:
        return self._stream is not None and self._stream.failed

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

    # ---- accounting ------------------------------------------------------

    @property
    def usage(self) -> TokenUsage | None:
        if self._stream is not None:
            return self._stream.usage
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        # As on /v1: a token is rarely shorter than 4 bytes of JSON, and each
        # streamed line carries at least one token.
        lines = self._stream.lines_out if self._stream is not None else 0
        return TokenUsage(prompt_tokens=self._prompt_bytes // 4 + 1, completion_tokens=lines)


class OllamaChatFlow(_GenerationFlow):
    route_name = "ollama.chat"
    shape = Shape.CHAT
    request: NativeChatRequest

    def _translate(self, target: str) -> tuple[str, dict[str, Any]]:
        return chat_to_openai(self.request, model=target, id_prefix=self._request_id)


class OllamaGenerateFlow(_GenerationFlow):
    route_name = "ollama.generate"
    shape = Shape.GENERATE
    request: NativeGenerateRequest

    def _translate(self, target: str) -> tuple[str, dict[str, Any]]:
        return generate_to_openai(self.request, model=target)
