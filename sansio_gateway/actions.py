"""What the core asks adapters to do, and what adapters report back.

Naming: actions are imperatives (``SendUpstream``,
``StartResponse``), results are facts in the past tense
(``UpstreamChunkReceived``, ``ClientDisconnected``).  All are immutable
values; the Exchange returns lists of actions and accepts one result at a
time, so there is never a hidden queue to drain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .accounting.usage_query import UsageQuery, UsageRow
from .errors import GatewayError
from .http import Headers
from .limits import Costs, Decision, LimitSpecs
from .local.overview_data import OverviewSnapshot
from .reload import ReloadOutcome

__all__ = [
    "Action",
    "AssetLoaded",
    "AttemptReason",
    "CancelUpstream",
    "CatalogueRefreshed",
    "CheckLimits",
    "ClientDisconnected",
    "CollectMetrics",
    "CollectOverview",
    "CommitLimits",
    "ConfigReloaded",
    "CountBackendAttempt",
    "EndResponse",
    "LimitsDecided",
    "LoadAsset",
    "MetricsCollected",
    "OverviewCollected",
    "QueryUsage",
    "RecordBackendOutcome",
    "RecordUsage",
    "RefreshCatalogue",
    "ReloadConfig",
    "Result",
    "SendBody",
    "SendUpstream",
    "SharedWrite",
    "StartResponse",
    "UpstreamChunkReceived",
    "UpstreamClosed",
    "UpstreamFailed",
    "UpstreamResponseStarted",
    "UsageQueried",
    "UsageRecord",
    "chunk_received",
    "send_body",
]


# ---- actions -------------------------------------------------------------

# Why an upstream attempt is made: the request's first, the same target
# again after a failure, or the next target (after a failure, or because the
# breaker of the one before is open).  Decided by ``backends/attempts.py``.
AttemptReason = Literal["first", "retry", "fallback"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendUpstream:
    """Open a request to ``backend`` and report its response as results.

    ``url`` is absolute.  The adapter applies the backend's timeouts and
    reports a failure as ``UpstreamFailed`` with an ``UpstreamError``.
    ``reason`` says why this attempt is made (traces show it).
    """

    backend: str
    method: str
    url: str
    headers: Headers
    body: bytes
    reason: AttemptReason
    delay: float = 0.0  # seconds to wait first (retry backoff)


@dataclass(frozen=True, slots=True, kw_only=True)
class StartResponse:
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True, kw_only=True)
class SendBody:
    data: bytes


def send_body(data: bytes) -> SendBody:
    """``SendBody(data=data)``, for the Exchange's per-chunk path: the frozen
    dataclass's generated ``__init__`` is a Python frame that calls
    ``object.__setattr__``; setting the one slot directly skips both.  The
    value is the same (same type, same field, still frozen)."""
    body = _NEW(SendBody)
    _SET_BODY_DATA(body, data)
    return body


_NEW = object.__new__
_SET_BODY_DATA: Callable[[SendBody, bytes], None] = SendBody.__dict__["data"].__set__


@dataclass(frozen=True, slots=True, kw_only=True)
class EndResponse:
    """The response is complete.  ``keep_alive`` False asks the adapter to
    close the connection afterwards."""

    keep_alive: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelUpstream:
    """Abort the in-flight upstream request (the client went away)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    request_id: str
    time: float
    key_id: str | None
    user: str | None
    model: str
    resolved_model: str
    backend: str
    surface: str
    route: str
    prompt_tokens: int
    completion_tokens: int
    status: int
    latency: float
    ttft: float | None
    outcome: str  # "ok", "upstream_error", "client_disconnected", "failed_mid_stream"
    usage_reported: bool  # False when counts are estimates (the backend never said)
    attempts: int = 1  # upstream attempts made (retries and fallbacks included)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordUsage:
    """The request's one report of what it used, for the trace; the usage
    ledger keeps it when ``ledger`` says so (a token count uses nothing,
    so it has no row: docs/rate-limiting.md, "Token counts")."""

    record: UsageRecord
    ledger: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryUsage:
    """Run ``query`` against the usage ledger; answer with ``UsageQueried``."""

    query: UsageQuery


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectMetrics:
    """Render the metrics exposition; answer with ``MetricsCollected``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectOverview:
    """Gather what ``/admin/overview`` shows of the adapter's state (live
    traffic, limit use, requests in flight); answer with ``OverviewCollected``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadAsset:
    """Read the status page's static file ``name`` from the package's data;
    answer with ``AssetLoaded``.  The core names only files it ships."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadConfig:
    """Read the config file again and, if the core's plan accepts it, serve
    new requests with it (and have the other ``--workers`` do the same);
    answer with ``ConfigReloaded`` (sansio_gateway/reload.py)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckLimits:
    """Ask the limit store to admit a request; answer with ``LimitsDecided``.

    The store runs ``limits.admit`` atomically (memory: under the event
    loop; Redis: one script) with its own clock unless told otherwise.
    """

    key: str  # the user's key in the store
    specs: LimitSpecs
    costs: Costs
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitLimits:
    """Settle an admitted request: charge ``actual`` instead of ``estimate``
    tokens and release its concurrency lease.  Idempotent by request id;
    nothing answers it."""

    key: str
    specs: LimitSpecs
    request_id: str
    estimate: int
    actual: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshCatalogue:
    """Re-run model discovery now, for a model the catalogue lacks; answer
    with ``CatalogueRefreshed``.  Also a write: the Gateway notes the time
    of this refresh (``Gateway.apply_write``), so that other unknown names
    wait out ``discovery_ttl`` instead of refreshing too."""


# Writes to the Gateway's shared state.  The adapter applies them with
# ``Gateway.apply_write`` as soon as it receives the list that holds them,
# before it awaits anything, so no other Exchange runs in between (the
# Exchange decided on a preview of exactly that state).


@dataclass(frozen=True, slots=True, kw_only=True)
class CountBackendAttempt:
    """Count an attempt sent to ``backend`` at ``at`` on its breaker: past
    its cooldown an OPEN breaker lets it through as the HALF_OPEN probe."""

    backend: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordBackendOutcome:
    """Feed one attempt's outcome to ``backend``'s breaker (``ok`` False:
    unreachable or broken)."""

    backend: str
    ok: bool
    at: float


Action = (
    SendUpstream
    | StartResponse
    | SendBody
    | EndResponse
    | CancelUpstream
    | RecordUsage
    | QueryUsage
    | CollectMetrics
    | CollectOverview
    | LoadAsset
    | ReloadConfig
    | RefreshCatalogue
    | CheckLimits
    | CommitLimits
    | CountBackendAttempt
    | RecordBackendOutcome
)

SharedWrite = CountBackendAttempt | RecordBackendOutcome | RefreshCatalogue
SHARED_WRITES = (CountBackendAttempt, RecordBackendOutcome, RefreshCatalogue)


# ---- results -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamResponseStarted:
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamChunkReceived:
    data: bytes


def chunk_received(data: bytes) -> UpstreamChunkReceived:
    """``UpstreamChunkReceived(data=data)`` for an adapter's per-chunk path,
    built as :func:`send_body` builds its value (same type, same field,
    still frozen)."""
    chunk = _NEW(UpstreamChunkReceived)
    _SET_CHUNK_DATA(chunk, data)
    return chunk


_SET_CHUNK_DATA: Callable[[UpstreamChunkReceived, bytes], None] = UpstreamChunkReceived.__dict__[
    "data"
].__set__


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamClosed:
    """The upstream body ended normally."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamFailed:
    """The upstream request failed: connect error, timeout, reset."""

    error: GatewayError


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientDisconnected:
    """The client closed its connection before the response was complete."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageQueried:
    rows: list[UsageRow]
    error: str | None = None  # the ledger could not be read


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsCollected:
    body: bytes
    content_type: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class OverviewCollected:
    snapshot: OverviewSnapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetLoaded:
    body: bytes | None  # None: the file is missing from the installed package


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigReloaded:
    outcome: ReloadOutcome


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsDecided:
    decision: Decision


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogueRefreshed:
    """Discovery ran (successfully or not); the Gateway's catalogue is current."""


Result = (
    UpstreamResponseStarted
    | UpstreamChunkReceived
    | UpstreamClosed
    | UpstreamFailed
    | ClientDisconnected
    | UsageQueried
    | MetricsCollected
    | OverviewCollected
    | AssetLoaded
    | ConfigReloaded
    | CatalogueRefreshed
    | LimitsDecided
)
