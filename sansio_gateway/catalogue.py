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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import GatewayConfig

__all__ = [
    "Catalogue",
    "DiscoveredModel",
    "Route",
    "changed_clashes",
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
    # Ollama's name parser defaults the tag to "latest" (reference section 11).
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(frozen=True, slots=True)
class Catalogue:
    config: GatewayConfig
    discovered: dict[str, _Discovery] = field(default_factory=dict)
    _index: dict[str, Route] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
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
    # Mirrors Ollama's owned_by: "hf.co/user/x" -> "user", "ns/x" -> "ns" (reference section 7).
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
