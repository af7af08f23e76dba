"""The model-addressed ``/v1`` routes, dispatched per attempt by backend kind.

The request is validated by the route's own parser when it arrives (a bad
request never reaches a backend, whatever its kind); the flow that serves
it -- a translation to Ollama, or the OpenAI passthrough -- comes from the
Gateway's registry (through the flow context) for the kind of backend each attempt reaches.
"""

from __future__ import annotations

from collections.abc import Callable

from ..http import IncomingRequest, Surface
from ..routing import Router
from ..wire.openai_chat import parse_chat_request
from ..wire.openai_completions import parse_completion_request
from ..wire.openai_embeddings import parse_embeddings_request
from .base import Flow
from .context import FlowContext, FlowFactory
from .ollama_dispatch import NativeDispatch

__all__ = ["install_openai_routes"]


def _route(route_name: str, model_of: Callable[[bytes], str]) -> FlowFactory:
    def create(context: FlowContext, request: IncomingRequest) -> Flow:
        model = model_of(request.body)

        def make(kind: str) -> Flow | None:
            maker = context.maker(kind, route_name)
            return None if maker is None else maker(context, request, model)

        return NativeDispatch(route_name=route_name, model=model, make=make, surface=Surface.OPENAI)

    return create


def install_openai_routes(router: Router) -> None:
    router.add(
        "POST",
        "/v1/chat/completions",
        _route("chat.completions", lambda b: parse_chat_request(b).model),
    )
    router.add(
        "POST",
        "/v1/completions",
        _route("completions", lambda b: parse_completion_request(b).model),
    )
    router.add(
        "POST", "/v1/embeddings", _route("embeddings", lambda b: parse_embeddings_request(b).model)
    )
