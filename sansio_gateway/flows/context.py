"""What a flow may know of the gateway: a narrow, frozen :class:`FlowContext`.

Theory of operation: the Gateway builds one context per request
(:meth:`~sansio_gateway.gateway.Gateway.flow_context`, called by the
Exchange's ``start``) and every flow of that request -- a local route's
flow, or the one the registry gives per attempt -- reads only from it.  Flows
never see the Gateway, so they cannot change its state, and the import
graph runs one way: ``gateway -> exchange -> flows``, never back
(``tests/core/test_import_graph.py``).

The two flow signatures live here, beside the context they receive, so
that ``routes`` and ``registry`` import them instead of the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backends.catalogue import Catalogue
from ..backends.health import BackendStatus, StoreStatus
from ..config import BackendConfig
from ..http import Headers, IncomingRequest
from ..identity import Identity
from ..limits.breaker import BreakerState
from .base import Flow

__all__ = ["FlowConstructor", "FlowContext", "LocalFlowFactory"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowContext:
    request_id: str  # the gateway's own id (completion ids, never the client's)
    now: float  # when the request started
    identity: Identity  # the authenticated caller (allow-list, admin)
    catalogue: Catalogue  # the snapshot current when the request started
    # [server] settings the flows use.
    default_max_tokens: int | None
    reasoning_field: str
    # For the gateway's own status answers (/ready, /status): read only.
    backends: tuple[BackendConfig, ...]
    backend_status: Mapping[str, BackendStatus]
    circuit: Callable[[str], BreakerState]
    store_status: StoreStatus | None  # the shared limit store, when there is one
    # Which process answers and which config it runs (pid, worker, config
    # generation), as the adapter reports it: shown to admin keys on /status.
    process: Mapping[str, object] = field(default_factory=dict)
    # The client's request headers the route forwards (routes.py,
    # ``RouteDecl.forwards``), as sent: a same-dialect flow passes them on.
    forwarded: Headers = ()


# (context, typed request, catalogue model name) -> the flow serving a
# model-addressed route for one attempt.  The typed request is what the
# route's parser made of the body on arrival (routes.py); one signature for
# every built-in flow and every plugin's (backends/registry.py).
FlowConstructor = Callable[[FlowContext, Any, str], Flow]
# (context, request) -> the flow of a route the gateway answers itself.
LocalFlowFactory = Callable[[FlowContext, IncomingRequest], Flow]
