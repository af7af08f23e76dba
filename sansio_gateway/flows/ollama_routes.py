"""The Ollama API routes (``/`` and ``/api/*``) and how each builds its flow.

Theory of operation: a model-addressed route reads just enough of the body
to learn the model (``model is required`` otherwise), maps a synthetic
``:latest`` back to the catalogue name
(:func:`~sansio_gateway.local.ollama_names.catalogue_name`), and returns a
:class:`~sansio_gateway.flows.ollama_dispatch.NativeDispatch`, which picks
per attempt, by the backend's ``kind``:

* ``"ollama"`` -> :class:`~sansio_gateway.passthrough.ollama.OllamaPassthroughFlow`,
  same format, only ``model`` rewritten;
* ``"openai"`` -> full native validation, then the translating flow
  (:mod:`~sansio_gateway.ollama_over_openai.chat`, :mod:`~sansio_gateway.ollama_over_openai.embed`,
  or the local ``/api/show`` answer);
* anything else -> 400: the gateway has no translator for it.

Model-less routes are local (:mod:`sansio_gateway.local.ollama`).
:func:`install_ollama_routes` registers everything on a router; it is the
only thing ``gateway.default_router`` needs to call.
"""

from __future__ import annotations

from ..http import IncomingRequest
from ..local.ollama import (
    HeadOnly,
    ModelManagement,
    NativeLocal,
    OllamaPs,
    OllamaPull,
    OllamaRoot,
    OllamaShow,
    OllamaTags,
    OllamaVersion,
)
from ..local.ollama_names import catalogue_name
from ..ollama_over_openai.chat import OllamaChatFlow, OllamaGenerateFlow
from ..ollama_over_openai.embed import OllamaEmbedFlow
from ..routing import Access, Router
from ..wire.ollama import (
    parse_chat_request,
    parse_embed_request,
    parse_embeddings_request,
    parse_generate_request,
    parse_model_request,
)
from .base import Flow
from .context import FlowContext, FlowFactory
from .ollama_dispatch import NativeDispatch

__all__ = ["install_ollama_routes"]


def translate_chat(context: FlowContext, request: IncomingRequest, model: str) -> Flow:
    native = parse_chat_request(request.body)
    size = len(request.body)
    return OllamaChatFlow(context, native, model=model, prompt_bytes=size)


def translate_generate(context: FlowContext, request: IncomingRequest, model: str) -> Flow:
    native = parse_generate_request(request.body)
    size = len(request.body)
    return OllamaGenerateFlow(context, native, model=model, prompt_bytes=size)


def translate_embed(context: FlowContext, request: IncomingRequest, model: str) -> Flow:
    legacy = request.path == "/api/embeddings"
    native = (parse_embeddings_request if legacy else parse_embed_request)(request.body)
    return OllamaEmbedFlow(native, model=model, prompt_bytes=len(request.body))


def translate_show(context: FlowContext, request: IncomingRequest, model: str) -> Flow:
    flow = OllamaShow(context, request)
    flow.model = model
    return flow


def _native(route_name: str, struct: str) -> FlowFactory:
    """A model-addressed route, served per attempt by the flow that the
    registry gives for the chosen backend's kind (flows/ollama_dispatch.py)."""

    def create(context: FlowContext, request: IncomingRequest) -> Flow:
        _data, requested = parse_model_request(request.body, struct)
        model = catalogue_name(context.catalogue, requested)

        def make(kind: str) -> Flow | None:
            maker = context.maker(kind, route_name)
            return None if maker is None else maker(context, request, model)

        return NativeDispatch(route_name=route_name, model=model, make=make)

    return create


def _pull(context: FlowContext, request: IncomingRequest) -> Flow:
    _data, requested = parse_model_request(request.body, "PullRequest")
    flow = OllamaPull(context, request)
    flow.model = catalogue_name(context.catalogue, requested)
    return flow


def _local(cls: type[NativeLocal], *, head: bool = False) -> FlowFactory:
    def create(context: FlowContext, request: IncomingRequest) -> Flow:
        flow = cls(context, request)
        return HeadOnly(flow) if head else flow

    return create


def install_ollama_routes(router: Router) -> None:
    """Register ``/`` and every ``/api/*`` route (docs/wire-notes.md, "Native endpoints clients
    call").
    ``/`` and ``/api/version`` are public, as health probes are."""
    for path, cls, access in (
        ("/", OllamaRoot, Access.PUBLIC),
        ("/api/version", OllamaVersion, Access.PUBLIC),
        ("/api/tags", OllamaTags, Access.KEY),
        ("/api/ps", OllamaPs, Access.KEY),
    ):
        router.add("GET", path, _local(cls), access=access)
        router.add("HEAD", path, _local(cls, head=True), access=access)
    router.add("POST", "/api/chat", _native("ollama.chat", "ChatRequest"))
    router.add("POST", "/api/generate", _native("ollama.generate", "GenerateRequest"))
    router.add("POST", "/api/embed", _native("ollama.embed", "EmbedRequest"))
    router.add("POST", "/api/embeddings", _native("ollama.embeddings", "EmbeddingRequest"))
    router.add("POST", "/api/show", _native("ollama.show", "ShowRequest"))
    router.add("POST", "/api/pull", _pull)
    for path in ("/api/push", "/api/create", "/api/copy"):
        router.add("POST", path, _local(ModelManagement))
    router.add("DELETE", "/api/delete", _local(ModelManagement))
    router.add("POST", "/api/blobs/*", _local(ModelManagement))
    router.add("HEAD", "/api/blobs/*", _local(ModelManagement))
