"""What a flow may know of the gateway: a narrow, frozen :class:`FlowContext`.

Theory of operation: the Gateway builds one context per request
(:meth:`~sansio_gateway.gateway.Gateway.flow_context`, called by the
Exchange's ``start``) and every flow of that request -- the route's flow
and the one the registry makes per attempt -- reads only from it.  Flows
never see the Gateway, so they cannot change its state, and the import
graph runs one way: ``gateway -> exchange -> flows``, never back
(``tests/core/test_import_graph.py``).

Route factories and backend-kind flow makers have the signatures below;
both live here, beside the context they receive, so that ``routing`` and
``registry`` import them instead of the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..backends.catalogue import Catalogue
from ..backends.health import BackendStatus, StoreStatus
from ..config import BackendConfig
from ..http import IncomingRequest
from ..identity import Identity
from ..limits.breaker import BreakerState
from .base import Flow

__all__ = ["FlowContext", "FlowFactory", "FlowMaker"]


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
    # (backend kind, route name) -> the registry's maker, or None: how a
    # model-addressed route builds the flow for each attempt's backend.
    maker: Callable[[str, str], FlowMaker | None]


# (context, request) -> the route's flow.
FlowFactory = Callable[[FlowContext, IncomingRequest], Flow]
# (context, request, catalogue model name) -> the flow serving the route
# from a backend of one kind, for one attempt.
FlowMaker = Callable[[FlowContext, IncomingRequest, str], Flow]
