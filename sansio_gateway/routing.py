"""Path-based routing: one table from (method, path) to a flow factory.

``/v1/...`` (OpenAI), ``/api/...`` (Ollama) and the gateway's own endpoints
live side by side on one port.  An unknown path is a 404 and a known path
with the wrong method a 405, both rendered in the surface's error form by
the Exchange (which learns the surface from :func:`surface_of` first).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .errors import MethodNotAllowed, NotFound
from .flows.context import FlowFactory
from .http import Surface

__all__ = ["Access", "FlowFactory", "RouteEntry", "Router", "surface_of"]


class Access(enum.Enum):
    PUBLIC = "public"  # health probes
    KEY = "key"  # any valid key (or anonymous when no keys are configured)
    ADMIN = "admin"  # an admin key


@dataclass(frozen=True, slots=True)
class RouteEntry:
    factory: FlowFactory
    access: Access


def surface_of(path: str) -> Surface:
    if path.startswith("/api/") or path == "/api":
        return Surface.OLLAMA
    if path.startswith("/v1/") or path == "/v1":
        return Surface.OPENAI
    return Surface.GATEWAY


@dataclass(slots=True)
class Router:
    """Exact paths, plus prefixes for routes with a path parameter that may
    itself contain ``/`` (model ids such as ``hf.co/user/model:tag``)."""

    exact: dict[str, dict[str, RouteEntry]] = field(default_factory=dict)
    prefixes: list[tuple[str, dict[str, RouteEntry]]] = field(default_factory=list)

    def add(
        self, method: str, path: str, factory: FlowFactory, *, access: Access = Access.KEY
    ) -> None:
        entry = RouteEntry(factory, access)
        if path.endswith("/*"):
            prefix = path[:-1]
            for known, methods in self.prefixes:
                if known == prefix:
                    methods[method] = entry
                    return
            self.prefixes.append((prefix, {method: entry}))
            # Longest prefix first, so specific routes win.
            self.prefixes.sort(key=lambda item: -len(item[0]))
        else:
            self.exact.setdefault(path, {})[method] = entry

    def match(self, method: str, path: str) -> RouteEntry:
        methods = self.exact.get(path)
        if methods is None:
            for prefix, candidates in self.prefixes:
                if path.startswith(prefix) and len(path) > len(prefix):
                    methods = candidates
                    break
        if methods is None:
            raise NotFound(f"Invalid URL ({method} {path})", code="unknown_url")
        entry = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if entry is None:
            raise MethodNotAllowed(
                f"Method {method} is not allowed for {path}", allow=", ".join(sorted(methods))
            )
        return entry
