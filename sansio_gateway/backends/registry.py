"""Backend kinds and the flows that serve each route from them.

Theory of operation: a :class:`BackendKind` names a kind of backend
(``ollama``, ``openai``), says how to discover its models, and maps route
names (``chat.completions``, ``ollama.chat``, ...) to *flow makers* that
build the flow serving that route from a backend of that kind.  The
Exchange resolves a model to a backend, and the route's dispatching flow
asks the :class:`Registry` for the maker of that backend's kind -- on every
attempt, since a fallback may be of another kind.

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

from ..flows.context import FlowMaker
from . import builtin_makers as makers
from .catalogue import DiscoveredModel, parse_ollama_tags, parse_openai_models

__all__ = ["BackendKind", "FlowMaker", "Registry", "builtin_registry"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendKind:
    name: str
    discovery_path: str
    parse_discovery: Callable[[bytes], list[DiscoveredModel]]
    flows: Mapping[str, FlowMaker] = field(default_factory=dict)


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

    def maker(self, kind: str, route: str) -> FlowMaker | None:
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
                "chat.completions": makers.openai_chat_over_ollama,
                "completions": makers.openai_completions_over_ollama,
                "embeddings": makers.openai_embeddings_over_ollama,
                "ollama.chat": makers.ollama_passthrough,
                "ollama.generate": makers.ollama_passthrough,
                "ollama.embed": makers.ollama_passthrough,
                "ollama.embeddings": makers.ollama_passthrough,
                "ollama.show": makers.ollama_passthrough,
            },
        )
    )
    registry.register(
        BackendKind(
            name="openai",
            discovery_path="/models",
            parse_discovery=parse_openai_models,
            flows={
                "chat.completions": makers.openai_passthrough,
                "completions": makers.openai_passthrough,
                "embeddings": makers.openai_passthrough,
                "ollama.chat": makers.ollama_chat_over_openai,
                "ollama.generate": makers.ollama_generate_over_openai,
                "ollama.embed": makers.ollama_embed_over_openai,
                "ollama.embeddings": makers.ollama_embed_over_openai,
                "ollama.show": makers.ollama_show_over_openai,
            },
        )
    )
    return registry
