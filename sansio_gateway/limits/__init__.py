"""Rate limiting and accounting limits: the pure core.

Build the limits of a request with :func:`build_specs`; decide with
:func:`admit`, settle with :func:`commit`, read headers with :func:`peek`
(or let :class:`MemoryLimitStore` hold the states); render headers and 429s
with :func:`rate_limit_headers` and :func:`render_denial`.  The design is
``docs/rate-limiting.md``; the Redis store in ``adapters/limit_stores.py`` runs
the same integer steps in Lua.
"""

from __future__ import annotations

from .breaker import Breaker, BreakerState, attempt, failed, succeeded
from .core import Lease, LimitState, admit, commit, peek
from .decision import (
    Decision,
    DenyReason,
    Fallback,
    RateHeaders,
    Reading,
    UnitHeaders,
    Verdict,
    decide,
)
from .headers import (
    CONCURRENCY_RETRY_HINT_US,
    denial_error,
    denial_headers,
    go_duration,
    rate_limit_headers,
    render_denial,
    reset_duration,
)
from .memory import MemoryLimitStore, is_idle
from .specs import (
    DAY_US,
    DEFAULT_LEASE_TTL_US,
    MAX_COST,
    MINUTE_US,
    Costs,
    LimitName,
    LimitSpecs,
    RateSpec,
    Scope,
    Unit,
    build_specs,
    divide_specs,
    lease_ttl_for,
)

__all__ = [
    "CONCURRENCY_RETRY_HINT_US",
    "DAY_US",
    "DEFAULT_LEASE_TTL_US",
    "MAX_COST",
    "MINUTE_US",
    "Breaker",
    "BreakerState",
    "Costs",
    "Decision",
    "DenyReason",
    "Fallback",
    "Lease",
    "LimitName",
    "LimitSpecs",
    "LimitState",
    "MemoryLimitStore",
    "RateHeaders",
    "RateSpec",
    "Reading",
    "Scope",
    "Unit",
    "UnitHeaders",
    "Verdict",
    "admit",
    "attempt",
    "build_specs",
    "commit",
    "decide",
    "denial_error",
    "denial_headers",
    "divide_specs",
    "failed",
    "go_duration",
    "is_idle",
    "lease_ttl_for",
    "peek",
    "rate_limit_headers",
    "render_denial",
    "reset_duration",
    "succeeded",
]
