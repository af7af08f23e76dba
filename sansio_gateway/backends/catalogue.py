"""The model catalogue: configured aliases merged with discovered models.

Theory of operation: the catalogue is an immutable snapshot.  Configured
``[[models]]`` entries come first (an alias maps a client-facing name to a
backend and the backend's own name for it); then every backend's discovered
models, in config order, so that on a name clash the earlier backend wins.
Adapters run discovery (I/O), parse the answer with the functions here, and
swap in a new snapshot with :meth:`Catalogue.with_discovery`.

Resolution is what the Exchange asks for: ``resolve(name)`` gives a
:class:`Route` or None.  A backend whose discovery never succeeded is treated
as possibly holding any model, so an unknown name is forwarded to it and the
backend's own 404 decides; this keeps the gateway useful when it starts
before its backend.

Canonical names: several spellings reach one backend model ("llama3.2",
"llama3.2:latest", "LLAMA3.2", an alias).  :meth:`Catalogue.canonical` maps
a route to one string, ``<backend>/<target>`` with the target normalised the
way the backend itself normalises names (Ollama: case-insensitive, default
host, namespace and tag; other kinds: exact), so that per-model limits and
allow-lists judge the model reached, not the client's spelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config import GatewayConfig

__all__ = [
    "Catalogue",
    "DiscoveredModel",
    "Route",
    "changed_clashes",
    "ollama_canonical_name",
    "parse_ollama_tags",
    "parse_openai_models",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveredModel:
    name: str
    created: int = 0
    owned_by: str = "library"
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Where a client-facing model name goes."""

    model: str  # the name the client asked for
    backend: str
    target: str  # the backend's name for it
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Discovery:
    models: tuple[DiscoveredModel, ...]
    fetched_at: float


def _with_latest(name: str) -> str:
    # Ollama's name parser defaults the tag to "latest" (docs/wire-notes.md, "Model names").
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def ollama_canonical_name(name: str) -> str:
    """Ollama's own identity for a model name: its parser fills in the host
    ``registry.ollama.ai``, the namespace ``library`` and the tag ``latest``,
    and its model store compares names case-insensitively (docs/wire-notes.md,
    "Model names"), so every spelling of one model maps to one string."""
    parts = _with_latest(name.lower()).split("/")
    if len(parts) == 1:
        parts = ["registry.ollama.ai", "library", *parts]
    elif len(parts) == 2:
        parts = ["registry.ollama.ai", *parts]
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class Catalogue:
    config: GatewayConfig
    discovered: dict[str, _Discovery] = field(default_factory=dict)
    _index: dict[str, Route] = field(default_factory=dict, init=False, repr=False, compare=False)
    # canonical route -> every catalogue name that reaches it (allow-lists).
    _names: dict[str, list[str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _ollama: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    # canonical() per (backend, target): it runs on every limited request.
    _canon: dict[tuple[str, str], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        ollama = frozenset(b.name for b in self.config.backends if b.kind == "ollama")
        object.__setattr__(self, "_ollama", ollama)
        index = self._index
        for alias in self.config.models:
            index.setdefault(
                alias.name,
                Route(
                    model=alias.name,
                    backend=alias.backend,
                    target=alias.upstream_name,
                    fallbacks=alias.fallbacks,
                ),
            )
        for backend in self.config.backends:
            found = self.discovered.get(backend.name)
            for model in found.models if found else ():
                index.setdefault(
                    model.name, Route(model=model.name, backend=backend.name, target=model.name)
                )
        for name, route in index.items():
            self._names.setdefault(self.canonical(route), []).append(name)

    def canonical(self, route: Route) -> str:
        """One string per backend model, whatever the spelling that reached
        it: per-model limit state and allow-lists key on this."""
        key = (route.backend, route.target)
        found = self._canon.get(key)
        if found is None:
            target = route.target
            if route.backend in self._ollama:
                target = ollama_canonical_name(target)
            found = f"{route.backend}/{target}"
            if len(self._canon) > 10_000:
                self._canon.clear()  # bounded: client-chosen targets pass through here
            self._canon[key] = found
        return found

    def known_name(self, route: Route) -> str | None:
        """The catalogue's own name for ``route``'s model (the client's
        spelling when it is one, else the name it resolved through), or None
        for a name only forwarded on the chance an undiscovered backend has
        it.  Bounded by the catalogue: fit for a metrics label."""
        for name in (route.model, _with_latest(route.model)):
            if name in self._index:
                return name
        names = self._names.get(self.canonical(route))
        return names[0] if names else None

    def names_of(self, route: Route) -> tuple[str, ...]:
        """Every name that reaches ``route``'s model: the client's spelling,
        then the catalogue's names for it (aliases, discovered names)."""
        names = self._names.get(self.canonical(route), ())
        return (route.model, *(n for n in names if n != route.model))

    def with_discovery(self, backend: str, models: list[DiscoveredModel], now: float) -> Catalogue:
        """A new snapshot with ``backend``'s discovered models replaced."""
        discovered = dict(self.discovered)
        discovered[backend] = _Discovery(models=tuple(models), fetched_at=now)
        return Catalogue(self.config, discovered)

    def discovered_at(self, backend: str) -> float | None:
        found = self.discovered.get(backend)
        return found.fetched_at if found else None

    def resolve(self, name: str) -> Route | None:
        route = self._index.get(name) or self._index.get(_with_latest(name))
        if route is not None:
            return (
                route
                if route.model == name
                else Route(
                    model=name,
                    backend=route.backend,
                    target=route.target,
                    fallbacks=route.fallbacks,
                )
            )
        for backend in self.config.backends:
            if backend.name not in self.discovered or not backend.discover:
                return Route(model=name, backend=backend.name, target=name)
        return None

    def models(self) -> list[tuple[str, str, DiscoveredModel | None]]:
        """Every client-visible model: (name, backend, discovered info)."""
        info: dict[str, DiscoveredModel] = {}
        for found in self.discovered.values():
            for model in found.models:
                info.setdefault(model.name, model)
        out = []
        for name, route in self._index.items():
            out.append((name, route.backend, info.get(route.target) or info.get(name)))
        return out

    def clashes(self) -> list[tuple[str, list[str]]]:
        """Model names offered by more than one backend (first one wins)."""
        owners: dict[str, list[str]] = {}
        for backend in self.config.backends:
            found = self.discovered.get(backend.name)
            for model in found.models if found else ():
                owners.setdefault(model.name, []).append(backend.name)
        return [(name, names) for name, names in owners.items() if len(names) > 1]


def _namespace(name: str) -> str:
    # Mirrors Ollama's owned_by: "hf.co/user/x" -> "user", "ns/x" -> "ns" (docs/wire-notes.md,
    # "Model owners").
    parts = name.split(":", 1)[0].split("/")
    if len(parts) >= 3:
        return parts[-2]
    if len(parts) == 2:
        return parts[0]
    return "library"


def _rfc3339_to_unix(value: object) -> int:
    from datetime import datetime  # pure parsing; no clock is read

    if not isinstance(value, str) or not value:
        return 0
    text = value.replace("Z", "+00:00")
    # Python < 3.11 style parsers choke on nanoseconds; trim to microseconds.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{tz}"
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def parse_ollama_tags(body: bytes) -> list[DiscoveredModel]:
    """Parse an ``/api/tags`` answer; raises ValueError if it is not one."""
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("models") or [], list):
        raise ValueError("not an /api/tags answer")
    out = []
    for entry in data.get("models") or []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model") or entry.get("name")
        if not isinstance(name, str) or not name:
            continue
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        out.append(
            DiscoveredModel(
                name=name,
                created=_rfc3339_to_unix(entry.get("modified_at")),
                owned_by=_namespace(name),
                details=dict(details or {}),
            )
        )
    return out


def parse_openai_models(body: bytes) -> list[DiscoveredModel]:
    """Parse a ``/v1/models`` answer; raises ValueError if it is not one."""
    data = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("data") or [], list):
        raise ValueError("not a /v1/models answer")
    out = []
    for entry in data.get("data") or []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            created = entry.get("created")
            out.append(
                DiscoveredModel(
                    name=entry["id"],
                    created=created if isinstance(created, int) else 0,
                    owned_by=str(entry.get("owned_by") or "system"),
                )
            )
    return out


def changed_clashes(
    before: Mapping[str, tuple[str, ...]], after: Mapping[str, tuple[str, ...]]
) -> list[tuple[str, tuple[str, ...]]]:
    """The clashes of ``after`` that are new or differ from ``before``: what
    to log after a discovery, so a standing clash is logged once, not on
    every probe."""
    return [(name, owners) for name, owners in after.items() if before.get(name) != owners]
