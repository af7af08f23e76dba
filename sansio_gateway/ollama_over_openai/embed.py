"""``POST /api/embed`` and the legacy ``POST /api/embeddings`` served from an
OpenAI-compatible backend.

Theory of operation: one non-streaming flow for both endpoints (the
request's ``legacy`` flag picks the answer's shape).  Nothing to embed --
``input: ""``, ``[]`` or absent, or an empty ``prompt`` -- is answered
locally as Ollama answers it (``embeddings: []`` / ``embedding: []``,
docs/wire-notes.md, "Native endpoints clients call"); anything else is one
``/embeddings`` call whose ``data`` is put back in ``index`` order
(:mod:`sansio_gateway.ollama_over_openai.responses`).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..flows.base import JSON_HEADERS, LocalAnswer, Plan, UpstreamCall
from ..flows.context import FlowContext
from ..wire.ollama import NativeBody, embed_request_from, embeddings_request_from
from .requests import embed_to_openai
from .responses import embeddings_to_ollama

__all__ = ["OllamaEmbedFlow"]


class OllamaEmbedFlow:
    """One attempt; never streams, and translates the whole answer itself."""

    def __init__(self, context: FlowContext, body: NativeBody, model: str) -> None:
        legacy = body.struct == "EmbeddingRequest"  # /api/embeddings
        self.request = (embeddings_request_from if legacy else embed_request_from)(body.data)
        self._prompt_bytes = body.size
        self._usage: TokenUsage | None = None

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert route is not None
        if not self.request.inputs:
            return LocalAnswer(status=200, headers=JSON_HEADERS, body=orjson.dumps(self._empty()))
        path, body = embed_to_openai(self.request, model=route.target)
        return UpstreamCall(method="POST", path=path, body=orjson.dumps(body), whole=self)

    def _empty(self) -> dict[str, Any]:
        if self.request.legacy:
            return {"embedding": []}
        return {"model": self.request.model, "embeddings": []}

    def complete(self, body: bytes) -> bytes:
        answer, self._usage = embeddings_to_ollama(
            body, model=self.request.model, legacy=self.request.legacy
        )
        return orjson.dumps(answer)

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage(prompt_tokens=self._prompt_bytes // 4 + 1)
