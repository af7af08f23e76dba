"""Backend kinds and the flows that serve each route from them.

Theory of operation: a :class:`BackendKind` names a kind of backend
(``ollama``, ``openai``, ``anthropic``), says how to discover its models
and how to authenticate to it, and maps route names
(``chat.completions``, ``ollama.chat``, ...; routes.py) to *flow
constructors* ``(context, typed request, model) -> Flow``
(flows/context.py).  On every attempt -- a fallback may be of another
kind -- the Exchange asks the :class:`Registry` for the constructor of the
attempt's backend kind and the request's route, and builds a fresh flow
with it; a kind without one cannot serve the route (a 400 in the caller's
envelope), unless the registry has a flow that serves the route from any
kind (``anthropic.count_tokens``: the gateway's own estimate).

Which kind serves which surface (docs/anthropic-compatibility.md,
docs/responses-compatibility.md):

* ``ollama``: every surface, translated to the native API where it is not
  the client's own;
* ``openai``: every surface; ``/v1/responses`` passes through when the
  backend sets ``responses = true`` (over_chat/flows.py decides per
  attempt, from the backend's config), else goes through the chat dialect;
* ``anthropic``: ``/v1/messages`` and ``count_tokens`` pass through; the
  OpenAI and Ollama surfaces are not translated to the Messages API.

The registry belongs to a :class:`~sansio_gateway.gateway.Gateway` (no
module-level singleton): :func:`builtin_registry` makes a fresh one with the
two built-in kinds, and third-party kinds are added with
:meth:`Registry.register` -- the adapters do that for every entry point in
the ``sansio_gateway.backends`` group (loading entry points reads package
metadata from disk, which the core does not do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..flows.context import FlowConstructor
from ..http import Headers
from ..local.anthropic import CountTokensEstimate
from ..local.ollama import OllamaShow
from ..ollama_over_openai.chat import OllamaChatFlow, OllamaGenerateFlow
from ..ollama_over_openai.embed import OllamaEmbedFlow
from ..openai_over_ollama.chat import OpenAIChatFlow
from ..openai_over_ollama.completions import OpenAICompletionsFlow
from ..openai_over_ollama.embeddings import OpenAIEmbeddingsFlow
from ..over_chat.flows import OpenAIResponsesFlow, OverChatOllamaFlow, OverChatOpenAIFlow
from ..passthrough.anthropic import AnthropicPassthroughFlow
from ..passthrough.ollama import OllamaPassthroughFlow
from ..passthrough.openai import OpenAIPassthroughFlow
from .catalogue import DiscoveredModel, parse_ollama_tags, parse_openai_models

__all__ = [
    "ANTHROPIC_VERSION",
    "BackendKind",
    "FlowConstructor",
    "Registry",
    "anthropic_auth",
    "bearer_auth",
    "builtin_registry",
]

# The Messages API's one version; every request to it must name it.
ANTHROPIC_VERSION = b"2023-06-01"


def bearer_auth(api_key: str | None) -> Headers:
    """OpenAI's (and Ollama behind a proxy's) upstream auth."""
    return ((b"authorization", b"Bearer " + api_key.encode()),) if api_key else ()


def anthropic_auth(api_key: str | None) -> Headers:
    """Anthropic's: the key as ``x-api-key``, and the API version, always."""
    key: Headers = ((b"x-api-key", api_key.encode()),) if api_key else ()
    return (*key, (b"anthropic-version", ANTHROPIC_VERSION))


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendKind:
    name: str
    discovery_path: str
    parse_discovery: Callable[[bytes], list[DiscoveredModel]]
    flows: Mapping[str, FlowConstructor] = field(default_factory=dict)
    # The headers that authenticate to a backend of this kind, from its key
    # (None when it has none); sent on every call and discovery.
    auth_headers: Callable[[str | None], Headers] = bearer_auth


class Registry:
    def __init__(self, any_kind: Mapping[str, FlowConstructor] | None = None) -> None:
        self._kinds: dict[str, BackendKind] = {}
        # Routes served the same way whatever the backend's kind, when the
        # kind has no flow of its own for them.
        self._any_kind: dict[str, FlowConstructor] = dict(any_kind or {})

    def register(self, kind: BackendKind) -> None:
        """Add (or replace) a kind; later registrations win."""
        self._kinds[kind.name] = kind

    def kind(self, name: str) -> BackendKind:
        try:
            return self._kinds[name]
        except KeyError:
            known = ", ".join(sorted(self._kinds))
            raise KeyError(f"unknown backend kind {name!r} (known: {known})") from None

    def flow(self, kind: str, route: str) -> FlowConstructor | None:
        """The constructor of the flow serving ``route`` from a backend of
        ``kind``, or None when that kind cannot serve it."""
        found = self._kinds.get(kind)
        if found is None:
            return None
        return found.flows.get(route) or self._any_kind.get(route)

    def answers_itself(self, kind: str, route: str) -> bool:
        """Does the gateway serve ``route`` for a backend of ``kind`` without
        calling it (the kind has no flow of its own; an any-kind flow, such
        as the ``count_tokens`` estimate, answers)?"""
        found = self._kinds.get(kind)
        return found is not None and route not in found.flows and route in self._any_kind

    def names(self) -> list[str]:
        return sorted(self._kinds)


def builtin_registry() -> Registry:
    registry = Registry(any_kind={"anthropic.count_tokens": CountTokensEstimate})
    registry.register(
        BackendKind(
            name="ollama",
            discovery_path="/api/tags",
            parse_discovery=parse_ollama_tags,
            flows={
                "chat.completions": OpenAIChatFlow,
                "completions": OpenAICompletionsFlow,
                "embeddings": OpenAIEmbeddingsFlow,
                "ollama.chat": OllamaPassthroughFlow,
                "ollama.generate": OllamaPassthroughFlow,
                "ollama.embed": OllamaPassthroughFlow,
                "ollama.embeddings": OllamaPassthroughFlow,
                "ollama.show": OllamaPassthroughFlow,
                "anthropic.messages": OverChatOllamaFlow,
                "responses": OverChatOllamaFlow,
            },
        )
    )
    registry.register(
        BackendKind(
            name="openai",
            discovery_path="/models",
            parse_discovery=parse_openai_models,
            flows={
                "chat.completions": OpenAIPassthroughFlow,
                "completions": OpenAIPassthroughFlow,
                "embeddings": OpenAIPassthroughFlow,
                "ollama.chat": OllamaChatFlow,
                "ollama.generate": OllamaGenerateFlow,
                "ollama.embed": OllamaEmbedFlow,
                "ollama.embeddings": OllamaEmbedFlow,
                "ollama.show": OllamaShow,
                "anthropic.messages": OverChatOpenAIFlow,
                "responses": OpenAIResponsesFlow,
            },
        )
    )
    registry.register(
        BackendKind(
            name="anthropic",
            # Anthropic pages its model list (20 by default, 1000 at most).
            discovery_path="/models?limit=1000",
            parse_discovery=parse_openai_models,
            flows={
                "anthropic.messages": AnthropicPassthroughFlow,
                "anthropic.count_tokens": AnthropicPassthroughFlow,
            },
            auth_headers=anthropic_auth,
        )
    )
    return registry
