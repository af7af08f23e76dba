"""Decisions: what a limit check concluded, and the headers it implies.

Theory of operation: the admission step (the Python core, or the Redis Lua
script that mirrors it) reads every limit of a request and produces one
:class:`Reading` per limit, in a fixed order: the rate specs in
``LimitSpecs.rates`` order, then the day quota, then the concurrency cap
(each only if configured).  :func:`decide` turns those integers into a
:class:`Decision`; both stores share this code, so they can only disagree
on the integers, which the differential test compares.

* Any limit that can never pass ("too large") denies at once, not retryable.
* Otherwise the limit with the longest wait is reported; the request passes
  at ``now + retry_after_us`` and not one microsecond earlier (each limit's
  passing times form an up-set, so the latest of them is exact).
* Header values come from the most constraining limit of each unit: the
  smallest ``remaining``, then the longest ``reset``, then spec order.
  Concurrency has no reset, so it is not reported in headers.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .specs import Costs, LimitName, LimitSpecs, Scope, Unit

__all__ = [
    "Decision",
    "DenyReason",
    "Fallback",
    "RateHeaders",
    "Reading",
    "UnitHeaders",
    "Verdict",
    "decide",
    "headers_from",
]


class Verdict(enum.IntEnum):
    PASS = 0
    WAIT = 1
    TOO_LARGE = 2


class DenyReason(enum.Enum):
    RATE = "rate"  # a per-minute limit: 429 rate_limit_exceeded
    DAILY_QUOTA = "daily_quota"  # tokens_per_day: 429 insufficient_quota, no retry
    CONCURRENCY = "concurrency"  # concurrent_requests: 429 rate_limit_exceeded
    TOO_LARGE = "too_large"  # can never pass: 429, x-should-retry: false
    STORE_UNAVAILABLE = "store_unavailable"  # on_error = "closed": 503


class Fallback(enum.Enum):
    """Set on a Decision that did not come from the configured store."""

    OPEN = "open"  # store failed, request admitted unchecked
    CLOSED = "closed"  # store failed, request refused (503)
    LOCAL = "local"  # store failed, per-process memory store with divided limits


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """One limit at one instant.  ``wait_us`` > 0 only for ``WAIT``."""

    verdict: Verdict
    wait_us: int
    used: int
    remaining: int
    reset_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitHeaders:
    """``x-ratelimit-{limit,remaining,reset}-<unit>`` values."""

    limit: int
    remaining: int
    reset_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RateHeaders:
    requests: UnitHeaders | None = None
    tokens: UnitHeaders | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The answer to one admission.

    ``now_us`` is the time the store decided at (Redis ``TIME``, or the
    override): headers and ``retry_after_us`` are relative to it.  When
    denied, ``limit``/``scope``/``model`` name the limit reported in the 429,
    with ``limit_value``, ``used`` and ``requested`` for its message, and
    ``burst`` (the largest cost that can ever pass) for rate limits.
    """

    allowed: bool
    now_us: int
    retry_after_us: int = 0
    retryable: bool = True
    reason: DenyReason | None = None
    limit: LimitName | None = None
    scope: Scope | None = None
    model: str | None = None
    limit_value: int | None = None
    burst: int | None = None
    used: int | None = None
    requested: int | None = None
    headers: RateHeaders = RateHeaders()
    fallback: Fallback | None = None


def headers_from(specs: LimitSpecs, readings: Sequence[Reading]) -> RateHeaders:
    best: dict[Unit, tuple[Reading, int]] = {}
    for target, reading in zip(specs.refs, readings, strict=True):
        if target.name is LimitName.CONCURRENT_REQUESTS:
            continue
        current = best.get(target.unit)
        if current is None or _tighter(reading, current[0]):
            best[target.unit] = (reading, target.limit)

    def unit(u: Unit) -> UnitHeaders | None:
        if u not in best:
            return None
        reading, limit = best[u]
        return UnitHeaders(limit=limit, remaining=reading.remaining, reset_us=reading.reset_us)

    return RateHeaders(requests=unit(Unit.REQUESTS), tokens=unit(Unit.TOKENS))


def _tighter(a: Reading, b: Reading) -> bool:
    return (a.remaining, -a.reset_us) < (b.remaining, -b.reset_us)


def decide(specs: LimitSpecs, now_us: int, costs: Costs, readings: Sequence[Reading]) -> Decision:
    """The Decision for these readings (see the module docstring)."""
    targets = specs.refs
    if len(targets) != len(readings):
        raise ValueError("one reading per limit")
    headers = headers_from(specs, readings)
    worst: int | None = None
    for i, reading in enumerate(readings):
        if reading.verdict is Verdict.TOO_LARGE:
            worst = i
            break
        if reading.verdict is Verdict.WAIT and (
            worst is None or reading.wait_us > readings[worst].wait_us
        ):
            worst = i
    if worst is None:
        return Decision(allowed=True, now_us=now_us, headers=headers)
    target, reading = targets[worst], readings[worst]
    reason = _reason(target.name, reading.verdict)
    requested = costs.requests if target.unit is Unit.REQUESTS else costs.tokens
    if target.name is LimitName.CONCURRENT_REQUESTS:
        requested = 1
    return Decision(
        allowed=False,
        now_us=now_us,
        retry_after_us=reading.wait_us,
        retryable=reason not in (DenyReason.TOO_LARGE, DenyReason.DAILY_QUOTA),
        reason=reason,
        limit=target.name,
        scope=target.scope,
        model=target.model,
        limit_value=target.limit,
        burst=target.burst,
        used=reading.used,
        requested=requested,
        headers=headers,
    )


def _reason(name: LimitName, verdict: Verdict) -> DenyReason:
    if verdict is Verdict.TOO_LARGE:
        return DenyReason.TOO_LARGE
    if name is LimitName.TOKENS_PER_DAY:
        return DenyReason.DAILY_QUOTA
    if name is LimitName.CONCURRENT_REQUESTS:
        return DenyReason.CONCURRENCY
    return DenyReason.RATE
