"""Backend kinds and the flows that serve each route from them.

Theory of operation: a :class:`BackendKind` names a kind of backend
(``ollama``, ``openai``), says how to discover its models, and maps route
names (``chat.completions``, ``ollama.chat``, ...; routes.py) to *flow
constructors* ``(context, typed request, model) -> Flow``
(flows/context.py).  On every attempt -- a fallback may be of another
kind -- the Exchange asks the :class:`Registry` for the constructor of the
attempt's backend kind and the request's route, and builds a fresh flow
with it; a kind without one cannot serve the route (a 400).

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
from ..local.ollama import OllamaShow
from ..ollama_over_openai.chat import OllamaChatFlow, OllamaGenerateFlow
from ..ollama_over_openai.embed import OllamaEmbedFlow
from ..openai_over_ollama.chat import OpenAIChatFlow
from ..openai_over_ollama.completions import OpenAICompletionsFlow
from ..openai_over_ollama.embeddings import OpenAIEmbeddingsFlow
from ..over_chat.flows import OverChatOllamaFlow, OverChatOpenAIFlow
from ..passthrough.ollama import OllamaPassthroughFlow
from ..passthrough.openai import OpenAIPassthroughFlow
from .catalogue import DiscoveredModel, parse_ollama_tags, parse_openai_models

__all__ = ["BackendKind", "FlowConstructor", "Registry", "builtin_registry"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendKind:
    name: str
    discovery_path: str
    parse_discovery: Callable[[bytes], list[DiscoveredModel]]
    flows: Mapping[str, FlowConstructor] = field(default_factory=dict)


class Registry:
    def __init__(self) -> None:
        self._kinds: dict[str, BackendKind] = {}

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
        return found.flows.get(route) if found is not None else None

    def names(self) -> list[str]:
        return sorted(self._kinds)


def builtin_registry() -> Registry:
    registry = Registry()
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
                "responses": OverChatOpenAIFlow,
            },
        )
    )
    return registry
