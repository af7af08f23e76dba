"""The flow makers of the built-in backend kinds (see ``backends/registry.py``).

Each maker builds, for one attempt, the flow that serves a route from a
backend of its kind: ``(context, request, model) -> Flow`` (flows/context.py)
where ``model`` is the catalogue's name for what the client asked.
"""

from __future__ import annotations

from ..flows.base import Flow
from ..flows.context import FlowContext
from ..flows.ollama_routes import (
    translate_chat,
    translate_embed,
    translate_generate,
    translate_show,
)
from ..http import IncomingRequest
from ..openai_over_ollama.chat import OpenAIChatFlow
from ..openai_over_ollama.completions import OpenAICompletionsFlow
from ..openai_over_ollama.embeddings import OpenAIEmbeddingsFlow
from ..passthrough.ollama import OllamaPassthroughFlow
from ..passthrough.openai import OpenAIPassthroughFlow
from ..wire.ollama import parse_model_request

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


def openai_chat_over_ollama(context: FlowContext, request: IncomingRequest, model: str) -> Flow:
    return OpenAIChatFlow(context, request.body)


def openai_completions_over_ollama(
    context: FlowContext, request: IncomingRequest, model: str
) -> Flow:
    return OpenAICompletionsFlow(context, request.body)


def openai_embeddings_over_ollama(
    context: FlowContext, request: IncomingRequest, model: str
) -> Flow:
    return OpenAIEmbeddingsFlow(request.body)


def openai_passthrough(context: FlowContext, request: IncomingRequest, model: str) -> Flow:
    return OpenAIPassthroughFlow(request, model)


def ollama_passthrough(context: FlowContext, request: IncomingRequest, model: str) -> Flow:
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
        default_max_tokens=context.default_max_tokens,
    )


ollama_chat_over_openai = translate_chat
ollama_generate_over_openai = translate_generate
ollama_embed_over_openai = translate_embed
ollama_show_over_openai = translate_show
