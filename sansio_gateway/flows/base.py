"""What a route-specific flow provides to the Exchange.

Theory of operation: the Exchange owns the life of a request (state, errors,
usage records); a *flow* owns one route's wire formats.  A flow is built
from the parsed request, tells the Exchange which model it needs, builds the
upstream request once the model is resolved, and translates the upstream
answer -- whole (``complete``) or as a stream (``feed``/``finish``/``fail``).

Flows that answer locally (model lists, health) return a
:class:`LocalAnswer` from ``plan`` and never see an upstream.  Those whose
answer needs data only the adapter holds (the status page's files, its
live statistics) return an :class:`AdapterAnswer`: the Exchange issues its
action and renders the result with the flow's own function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..accounting.usage import TokenUsage
from ..accounting.usage_query import UsageQuery
from ..actions import AssetLoaded, CollectOverview, LoadAsset, OverviewCollected
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError
from ..http import Headers, Surface

__all__ = [
    "JSON_HEADERS",
    "NDJSON_HEADERS",
    "SSE_HEADERS",
    "AdapterAnswer",
    "Flow",
    "LedgerQuery",
    "LocalAnswer",
    "MetricsScrape",
    "UpstreamCall",
]

JSON_HEADERS: Headers = ((b"content-type", b"application/json"),)
SSE_HEADERS: Headers = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
)
NDJSON_HEADERS: Headers = ((b"content-type", b"application/x-ndjson"),)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamCall:
    method: str
    path: str  # appended to the backend's base URL
    body: bytes
    stream: bool  # the upstream answer is a stream to translate chunk by chunk


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerQuery:
    """The answer comes from the usage ledger, which the adapter reads."""

    query: UsageQuery


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsScrape:
    """The answer is the adapter's metrics exposition."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalAnswer:
    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterAnswer:
    """The answer is rendered in the core from what the adapter reports:
    the Exchange issues ``ask`` and hands its result to ``render``."""

    ask: CollectOverview | LoadAsset
    render: Callable[[OverviewCollected | AssetLoaded], LocalAnswer]


class Flow(Protocol):
    surface: Surface
    route_name: str

    @property
    def model(self) -> str | None:
        """The model the client asked for, or None for model-less routes."""

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer:
        """The upstream request to make (or a local answer)."""

    def stream_headers(self) -> Headers:
        """Response headers for a streamed answer."""

    def feed(self, data: bytes) -> bytes:
        """Upstream stream bytes in, client bytes out (possibly empty)."""

    def finish(self) -> bytes:
        """The upstream stream ended; the last client bytes."""

    def fail(self, error: GatewayError) -> bytes:
        """The upstream failed mid-stream; an in-band error for the client."""

    @property
    def stream_done(self) -> bool:
        """The client stream is complete (nothing more will be sent)."""

    @property
    def stream_failed(self) -> bool:
        """The client stream ended with an in-band error."""

    def complete(self, body: bytes) -> bytes:
        """A whole upstream answer in, the whole client body out."""

    @property
    def usage(self) -> TokenUsage | None:
        """Token counts reported by the backend, once known."""

    def estimate_usage(self) -> TokenUsage:
        """Best estimate of tokens used so far (for partial streams)."""
