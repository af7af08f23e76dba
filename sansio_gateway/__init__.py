"""sansio-gateway: the pure core of an LLM API gateway.

Nothing in this package performs I/O, reads a clock, or draws random numbers:
bytes, results, times and ids are passed in, and actions and answers come
out.  The adapters (``sansio_gateway.adapters``) execute them; you can write
your own (docs/embedding.md).

The public API is the names below (``__all__``), and nothing else: they are
what an embedder needs to drive the core from an adapter of its own.  Every
submodule is internal and may change between releases, as h11 keeps its own
behind the ``_`` convention.

The gateway and one request
    :class:`Gateway` holds the config, catalogue, route table and backend
    health; ``gateway.exchange(request_id)`` makes an :class:`Exchange` per
    request: ``start(request, now) -> actions``, then
    ``handle(result, now) -> actions`` until it is DONE
    (:class:`ExchangeState`; a result the state cannot take raises
    :class:`ExchangeStateError`).  ``exchange.summary(now)`` is a
    :class:`RequestSummary` for logs and metrics.

Actions (the core asks) and results (the adapter reports)
    ``SendUpstream``, ``CancelUpstream``, ``StartResponse``, ``SendBody``,
    ``EndResponse``, ``RecordUsage`` (a :class:`UsageRecord`),
    ``CheckLimits``, ``CommitLimits``, ``QueryUsage``, ``CollectMetrics``,
    ``CollectOverview``, ``LoadAsset``, ``RefreshCatalogue``, ``ReloadConfig``
    (answered by ``ConfigReloaded``, a :class:`ReloadOutcome`; :func:`plan_reload`
    decides what a new config changes), and the writes to shared state
    ``CountBackendAttempt`` and ``RecordBackendOutcome`` (apply them with
    ``gateway.apply_write`` before awaiting anything); then
    ``UpstreamResponseStarted``, ``UpstreamChunkReceived``,
    ``UpstreamClosed``, ``UpstreamFailed`` (carrying an
    :class:`UpstreamError`), ``ClientDisconnected``, ``LimitsDecided``,
    ``UsageQueried``, ``MetricsCollected``, ``OverviewCollected`` (an
    :class:`OverviewSnapshot`: the status page's data), ``AssetLoaded``,
    ``CatalogueRefreshed``.

Configuration and errors
    :func:`parse_config` (TOML text -> :class:`GatewayConfig`, or a
    :class:`ConfigError` naming the file, key and problem),
    :func:`default_config`; :class:`GatewayError`, the base of every error
    the core renders.

Limits and backend kinds
    :class:`MemoryLimitStore` decides ``CheckLimits``/``CommitLimits`` in
    one process; a :class:`Registry` of :class:`BackendKind` adds a kind of
    backend (the adapters load the ``sansio_gateway.backends`` entry points
    into it).
"""

from __future__ import annotations

from .actions import (
    Action,
    AssetLoaded,
    CancelUpstream,
    CatalogueRefreshed,
    CheckLimits,
    ClientDisconnected,
    CollectMetrics,
    CollectOverview,
    CommitLimits,
    ConfigReloaded,
    CountBackendAttempt,
    EndResponse,
    LimitsDecided,
    LoadAsset,
    MetricsCollected,
    OverviewCollected,
    QueryUsage,
    RecordBackendOutcome,
    RecordUsage,
    RefreshCatalogue,
    ReloadConfig,
    Result,
    SendBody,
    SendUpstream,
    StartResponse,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
    UsageQueried,
    UsageRecord,
)
from .backends.registry import BackendKind, Registry
from .config import ConfigError, GatewayConfig, default_config, parse_config
from .errors import GatewayError, UpstreamError
from .exchange import Exchange, ExchangeState, ExchangeStateError, RequestSummary
from .gateway import Gateway
from .http import Headers, IncomingRequest
from .limits import MemoryLimitStore
from .local.overview_data import OverviewSnapshot
from .reload import ReloadOutcome, ReloadPlan, plan_reload

__version__ = "0.1.0"

__all__ = [
    "Action",
    "AssetLoaded",
    "BackendKind",
    "CancelUpstream",
    "CatalogueRefreshed",
    "CheckLimits",
    "ClientDisconnected",
    "CollectMetrics",
    "CollectOverview",
    "CommitLimits",
    "ConfigError",
    "ConfigReloaded",
    "CountBackendAttempt",
    "EndResponse",
    "Exchange",
    "ExchangeState",
    "ExchangeStateError",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "Headers",
    "IncomingRequest",
    "LimitsDecided",
    "LoadAsset",
    "MemoryLimitStore",
    "MetricsCollected",
    "OverviewCollected",
    "OverviewSnapshot",
    "QueryUsage",
    "RecordBackendOutcome",
    "RecordUsage",
    "RefreshCatalogue",
    "Registry",
    "ReloadConfig",
    "ReloadOutcome",
    "ReloadPlan",
    "RequestSummary",
    "Result",
    "SendBody",
    "SendUpstream",
    "StartResponse",
    "UpstreamChunkReceived",
    "UpstreamClosed",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamResponseStarted",
    "UsageQueried",
    "UsageRecord",
    "__version__",
    "default_config",
    "parse_config",
    "plan_reload",
]
