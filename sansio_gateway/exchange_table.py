"""The Exchange's states and its table, apart from the handlers (as h11
keeps ``_state.py`` apart from ``_connection.py``).

Each wait is a state, and one table gives for every (state, result type)
pair the name of the Exchange method that handles it and the states it may
lead to.  A pair missing from the table is an adapter bug and raises
:class:`ExchangeStateError`.  Handlers are named, not imported, so this
module does not depend on the Exchange.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import assert_never, get_args

from .actions import (
    Action,
    AssetLoaded,
    CatalogueRefreshed,
    ClientDisconnected,
    CollectMetrics,
    CollectOverview,
    ConfigReloaded,
    LimitsDecided,
    LoadAsset,
    MetricsCollected,
    OverviewCollected,
    QueryUsage,
    ReloadConfig,
    Result,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
    UsageQueried,
)

__all__ = [
    "AWAITS",
    "STARTS",
    "STREAMED",
    "ExchangeState",
    "ExchangeStateError",
    "Row",
    "Step",
    "handler_names",
    "next_states",
    "row",
]


class ExchangeStateError(RuntimeError):
    """The adapter reported a result the Exchange cannot accept now."""


class ExchangeState(enum.Enum):
    IDLE = "idle"
    AWAITING_CATALOGUE = "awaiting_catalogue"  # RefreshCatalogue issued
    AWAITING_LIMITS = "awaiting_limits"  # CheckLimits issued
    AWAITING_LIMITS_CLIENT_GONE = "awaiting_limits_client_gone"  # ... and the client left
    AWAITING_LEDGER = "awaiting_ledger"  # QueryUsage issued
    AWAITING_METRICS = "awaiting_metrics"  # CollectMetrics issued
    AWAITING_ADAPTER_DATA = "awaiting_adapter_data"  # an AdapterAnswer's action issued
    AWAITING_UPSTREAM = "awaiting_upstream"  # SendUpstream issued, no head yet
    BUFFERING = "buffering"  # non-stream answer being collected
    BUFFERING_ERROR = "buffering_error"  # upstream error body being collected
    STREAMING = "streaming"  # client response started, translating chunks
    DONE = "done"

    # Hot path: every step checks its state against a frozenset.  Enum's
    # own __hash__ hashes the name in Python; members are singletons, so
    # identity is equality and the C-level identity hash is as good.
    __hash__ = object.__hash__


_S = ExchangeState
# A handler's outcome: the next state and the actions that get there.
Step = tuple[ExchangeState, list[Action]]

# ---- the table -----------------------------------------------------------
#
# For each state, the results it accepts: the handler's method name on the
# Exchange, and the states it may lead to.

Row = tuple[str, frozenset[ExchangeState]]
_to = frozenset
_DONE = _to({_S.DONE})
_ATTEMPTED = _to({_S.AWAITING_UPSTREAM, _S.DONE})  # an attempt was sent, or the request ended
# Where ``Exchange.start`` may lead.
STARTS = _ATTEMPTED | {_S.AWAITING_CATALOGUE, _S.AWAITING_LIMITS, _S.AWAITING_LEDGER}
STARTS |= {_S.AWAITING_METRICS, _S.AWAITING_ADAPTER_DATA}
# The state a local route waits in after asking the adapter (local/pending.py).
AWAITS: Mapping[type, ExchangeState] = {
    QueryUsage: _S.AWAITING_LEDGER,
    CollectMetrics: _S.AWAITING_METRICS,
    CollectOverview: _S.AWAITING_ADAPTER_DATA,
    LoadAsset: _S.AWAITING_ADAPTER_DATA,
    ReloadConfig: _S.AWAITING_ADAPTER_DATA,
}
_GONE: Row = ("_on_client_gone", _DONE)  # a backend may have the request: cancel, record
_GONE_EARLY: Row = ("_on_client_gone_early", _DONE)  # nothing was sent yet
_LOCAL: Row = ("_on_local_data", _DONE)  # what a local route waited for: its answer
_LATE: tuple[type, ...] = get_args(Result)  # every result type


def _rows(state: ExchangeState) -> Mapping[type, Row]:
    # One case per state, so mypy proves none is forgotten.
    match state:
        case _S.IDLE:
            return {ClientDisconnected: _GONE_EARLY}
        case _S.AWAITING_CATALOGUE:
            routed = _ATTEMPTED | {_S.AWAITING_LIMITS}
            return {
                CatalogueRefreshed: ("_on_catalogue_refreshed", routed),
                ClientDisconnected: _GONE_EARLY,
            }
        case _S.AWAITING_LIMITS:
            gone = ("_on_limits_client_gone", _to({_S.AWAITING_LIMITS_CLIENT_GONE}))
            return {LimitsDecided: ("_on_limits_decided", _ATTEMPTED), ClientDisconnected: gone}
        case _S.AWAITING_LIMITS_CLIENT_GONE:
            decided = ("_on_limits_decided_client_gone", _DONE)
            return {LimitsDecided: decided, ClientDisconnected: ("_stay", _to({state}))}
        case _S.AWAITING_LEDGER:
            return {UsageQueried: _LOCAL, ClientDisconnected: _GONE_EARLY}
        case _S.AWAITING_METRICS:
            return {MetricsCollected: _LOCAL, ClientDisconnected: _GONE_EARLY}
        case _S.AWAITING_ADAPTER_DATA:
            return {
                OverviewCollected: _LOCAL,
                AssetLoaded: _LOCAL,
                ConfigReloaded: _LOCAL,
                ClientDisconnected: _GONE_EARLY,
            }
        case _S.AWAITING_UPSTREAM:
            answered = _to({_S.BUFFERING, _S.BUFFERING_ERROR, _S.STREAMING})
            return {
                UpstreamResponseStarted: ("_on_head", answered),
                UpstreamFailed: ("_on_upstream_failed", _ATTEMPTED),
                ClientDisconnected: _GONE,
            }
        case _S.BUFFERING | _S.BUFFERING_ERROR:
            # An error answer may be retried; a whole answer is final.
            error = state is _S.BUFFERING_ERROR
            closed = ("_on_error_closed", _ATTEMPTED) if error else ("_on_buffer_closed", _DONE)
            return {
                UpstreamChunkReceived: ("_on_buffer_chunk", _DONE | {state}),
                UpstreamClosed: closed,
                UpstreamFailed: ("_on_upstream_failed", _ATTEMPTED),
                ClientDisconnected: _GONE,
            }
        case _S.STREAMING:
            return {
                UpstreamChunkReceived: ("_on_stream_chunk", _DONE | {state}),
                UpstreamClosed: ("_on_stream_closed", _DONE),
                UpstreamFailed: ("_on_stream_failed", _DONE),
                ClientDisconnected: _GONE,
            }
        case _S.DONE:
            # Late results are ignored: the response may end at Ollama's
            # done line before the upstream socket closes.
            return {kind: ("_stay", _DONE) for kind in _LATE}
        case _:
            assert_never(state)


_TABLE = {(state, kind): row for state in ExchangeState for kind, row in _rows(state).items()}

# Where a stream chunk may lead: the row the Exchange's hot path knows.
STREAMED = _TABLE[(_S.STREAMING, UpstreamChunkReceived)][1]


def row(state: ExchangeState, result: type) -> Row | None:
    """The handler's name and the states ``result`` may lead to from
    ``state`` (None: not accepted)."""
    return _TABLE.get((state, result))


def next_states(state: ExchangeState, result: type) -> frozenset[ExchangeState] | None:
    """The states ``result`` may lead to from ``state`` (None: not accepted)."""
    found = _TABLE.get((state, result))
    return None if found is None else found[1]


def handler_names() -> frozenset[str]:
    """Every handler the table names (each must be a method of the Exchange)."""
    return frozenset(name for name, _ in _TABLE.values())
