"""The flow makers of the built-in backend kinds (see ``registry.py``).

Each maker builds, for one attempt, the flow that serves a route from a
backend of its kind: ``(gateway, request, request id, now, model) -> Flow``
where ``model`` is the catalogue's name for what the client asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..http import IncomingRequest
from ..ollama_api_request import parse_model_request
from .base import Flow
from .ollama_passthrough import OllamaPassthroughFlow
from .ollama_routes import translate_chat, translate_embed, translate_generate, translate_show
from .openai_chat import OpenAIChatFlow
from .openai_completions import OpenAICompletionsFlow
from .openai_embeddings import OpenAIEmbeddingsFlow
from .openai_passthrough import OpenAIPassthroughFlow

if TYPE_CHECKING:
    from ..gateway import Gateway

__all__ = [
    "ollama_chat_over_openai",
    "ollama_embed_over_openai",
    "ollama_generate_over_openai",
    "ollama_passthrough",
    "ollama_show_over_openai",
    "openai_chat_over_ollama",
    "openai_completions_over_ollama",
    "openai_embeddings_over_ollama",
    "openai_passthrough",
]

# Native route -> (the struct name its errors use, whether it streams by default).
_NATIVE = {
    "/api/chat": ("ollama.chat", "ChatRequest", True),
    "/api/generate": ("ollama.generate", "GenerateRequest", True),
    "/api/embed": ("ollama.embed", "EmbedRequest", False),
    "/api/embeddings": ("ollama.embeddings", "EmbeddingRequest", False),
    "/api/show": ("ollama.show", "ShowRequest", False),
}


def openai_chat_over_ollama(
    gateway: Gateway, request: IncomingRequest, rid: str, now: float, model: str
) -> Flow:
    return OpenAIChatFlow(gateway, request.body, rid, now)


def openai_completions_over_ollama(
    gateway: Gateway, request: IncomingRequest, rid: str, now: float, model: str
) -> Flow:
    return OpenAICompletionsFlow(gateway, request.body, rid, now)


def openai_embeddings_over_ollama(
    gateway: Gateway, request: IncomingRequest, rid: str, now: float, model: str
) -> Flow:
    return OpenAIEmbeddingsFlow(gateway, request.body, rid, now)


def openai_passthrough(
    gateway: Gateway, request: IncomingRequest, rid: str, now: float, model: str
) -> Flow:
    return OpenAIPassthroughFlow(gateway, request, rid, now, model)


def ollama_passthrough(
    gateway: Gateway, request: IncomingRequest, rid: str, now: float, model: str
) -> Flow:
    route_name, struct, streams = _NATIVE[request.path]
    data, requested = parse_model_request(request.body, struct)
    return OllamaPassthroughFlow(
        route_name=route_name,
        path=request.path,
        data=data,
        requested=requested,
        model=model,
        stream=streams and data.get("stream") is not False,
        prompt_bytes=len(request.body),
        default_max_tokens=gateway.config.server.default_max_tokens,
    )


ollama_chat_over_openai = translate_chat
ollama_generate_over_openai = translate_generate
ollama_embed_over_openai = translate_embed
ollama_show_over_openai = translate_show
