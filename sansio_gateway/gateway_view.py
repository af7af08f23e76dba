"""What an Exchange reads of the Gateway that made it.

A protocol, so that ``exchange.py`` does not import ``gateway.py`` (which
imports it): the import graph has no circle (tests/core/test_import_graph.py).
Every member only reads; the Exchange's writes to the Gateway are actions
(actions.py, ``SharedWrite``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .backends.catalogue import Catalogue, Route
from .backends.health import BackendHealth
from .config import GatewayConfig
from .flows.context import FlowConstructor, FlowContext
from .http import Headers
from .identity import Identity
from .limits import LimitSpecs
from .routes import RouteDecl

__all__ = ["GatewayView"]


class GatewayView(Protocol):
    config: GatewayConfig
    catalogue: Catalogue
    health: BackendHealth
    limits_on: bool
    random: Callable[[], float]

    def authorize(self, method: str, path: str, headers: Headers) -> tuple[RouteDecl, Identity]: ...

    def flow_context(
        self, request_id: str, now: float, identity: Identity, forwarded: Headers = ()
    ) -> FlowContext: ...

    def flow_for(self, kind: str, route: str) -> FlowConstructor | None: ...

    def may_use(self, identity: Identity, route: Route) -> bool: ...

    def may_refresh_on_miss(self, now: float) -> bool: ...

    def limit_specs(self, user: str, route: Route) -> LimitSpecs: ...

    def answered_here(self, route: str) -> frozenset[str]: ...

    def upstream_headers(self, backend: str, request_id: str) -> Headers: ...
