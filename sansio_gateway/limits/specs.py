"""Which limits apply to a request, as plain integer specs.

Theory of operation: :func:`build_specs` reads the operator's ``[limits]``
table (docs/rate-limiting.md, "What is limited, and where") for one user and one model and returns a
:class:`LimitSpecs`: the GCRA rate limits (requests and tokens per minute,
per user and per user x model), the UTC-day token quota and the concurrency
cap.  A limit left unset is not enforced.  ``[limits.users.<user>]`` replaces
the defaults key by key; ``[limits.models."<model>"]`` supplies the per-model
rates (its ``tokens_per_day`` and ``concurrent_requests`` are not used: those
two limits are per user only).

Everything is an integer: times in microseconds, costs in requests or
tokens.  The bounds below keep every intermediate value of the algorithm
under 2**53, so the Redis Lua script (whose numbers are doubles) computes
exactly what the Python core computes.

``divisor`` divides every limit by N (never below 1): with ``--workers N``
and the memory store, or when the ``local`` failure policy splits a shared
limit between N gateway instances.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from ..config import LimitsConfig, LimitValues

__all__ = [
    "DAY_US",
    "DEFAULT_LEASE_TTL_US",
    "MAX_COST",
    "MAX_RATE_LIMIT",
    "MINUTE_US",
    "Costs",
    "LimitName",
    "LimitRef",
    "LimitSpecs",
    "RateSpec",
    "Scope",
    "Unit",
    "build_specs",
    "ceil_div",
    "default_burst_us",
    "divide_specs",
    "lease_ttl_for",
]

SECOND_US = 1_000_000
MINUTE_US = 60 * SECOND_US
DAY_US = 86_400 * SECOND_US
# cost * period < 2**53 for every admitted cost: a cost or a per-minute limit
# above this is treated as this (no request or quota of 150M tokens is real).
MAX_COST = 150_000_000
MAX_RATE_LIMIT = MAX_COST
MAX_QUOTA = 2**49
MAX_NOW_US = 2**52  # the year 2112; keeps now + lease + debt under 2**53
MAX_LEASE_TTL_US = 2**40
# Default lease/reservation lifetime: the default upstream total_timeout
# (1800 s) plus a minute; pass lease_ttl_for(...) of the real timeouts.
DEFAULT_LEASE_TTL_US = (1800 + 60) * SECOND_US


class LimitName(enum.Enum):
    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"
    TOKENS_PER_DAY = "tokens_per_day"
    CONCURRENT_REQUESTS = "concurrent_requests"


class Scope(enum.Enum):
    USER = "user"
    MODEL = "model"  # user x model


class Unit(enum.Enum):
    REQUESTS = "requests"
    TOKENS = "tokens"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def default_burst_us(limit: int, period_us: int) -> int:
    """A sixth of the period (ten seconds' worth of a per-minute limit), but
    never less than one unit's increment, so a cost of 1 can always pass."""
    return min(period_us, max(period_us // 6, ceil_div(period_us, limit)))


@dataclass(frozen=True, slots=True, kw_only=True)
class RateSpec:
    """One GCRA limit: ``limit`` units per ``period_us``, ``burst_us`` of
    tolerance.  A cost c adds ``ceil(c * period_us / limit)`` to the TAT."""

    name: LimitName
    scope: Scope
    model: str | None
    limit: int
    period_us: int = MINUTE_US
    burst_us: int = 0  # 0: default_burst_us(limit, period_us)
    # Derived in __post_init__ (hot-path lookups, not recomputed per call):
    unit: Unit = field(init=False, compare=False)
    key: str = field(init=False, compare=False)  # rpm / tpm / rpm@<model> / tpm@<model>
    burst: int = field(init=False, compare=False)  # the largest cost that can ever pass

    def __post_init__(self) -> None:
        if self.name not in (LimitName.REQUESTS_PER_MINUTE, LimitName.TOKENS_PER_MINUTE):
            raise ValueError(f"{self.name.value} is not a rate limit")
        if not 0 < self.period_us <= MINUTE_US:
            raise ValueError("period_us must be in (0, 60 s]")
        if not 0 < self.limit <= MAX_RATE_LIMIT:
            raise ValueError(f"limit must be in [1, {MAX_RATE_LIMIT}]")
        if self.burst_us == 0:
            object.__setattr__(self, "burst_us", default_burst_us(self.limit, self.period_us))
        if not ceil_div(self.period_us, self.limit) <= self.burst_us <= self.period_us:
            raise ValueError("burst_us must hold one unit's increment and at most one period")
        if (self.scope is Scope.MODEL) != (self.model is not None):
            raise ValueError("a model-scope limit names its model, a user-scope one does not")
        unit = Unit.REQUESTS if self.name is LimitName.REQUESTS_PER_MINUTE else Unit.TOKENS
        short = "rpm" if unit is Unit.REQUESTS else "tpm"
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "key", short if self.model is None else f"{short}@{self.model}")
        object.__setattr__(self, "burst", self.burst_us * self.limit // self.period_us)

    def increment(self, cost: int) -> int:
        """TAT increment of ``cost``, rounded up; ``cost <= MAX_COST``."""
        return ceil_div(cost * self.period_us, self.limit)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitRef:
    """What one reading (one limit, in decision order) refers to."""

    name: LimitName
    scope: Scope
    model: str | None
    unit: Unit
    limit: int
    burst: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSpecs:
    """Every limit that applies to one request of one user.

    ``lease_ttl_us`` is how long a concurrency lease and a day reservation
    live without a commit: longer than the longest upstream timeout.
    """

    rates: tuple[RateSpec, ...] = ()
    tokens_per_day: int | None = None
    concurrent_requests: int | None = None
    lease_ttl_us: int = DEFAULT_LEASE_TTL_US
    # Derived: the limits in reading order (rates, day quota, concurrency).
    refs: tuple[LimitRef, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "refs", self._refs())
        pairs = [(r.unit, r.scope) for r in self.rates]
        if len(set(pairs)) != len(pairs):
            raise ValueError("at most one rate limit per unit and scope")
        if self.tokens_per_day is not None and not 0 < self.tokens_per_day <= MAX_QUOTA:
            raise ValueError("tokens_per_day out of range")
        if self.concurrent_requests is not None and self.concurrent_requests <= 0:
            raise ValueError("concurrent_requests must be positive")
        if not 0 < self.lease_ttl_us <= MAX_LEASE_TTL_US:
            raise ValueError("lease_ttl_us out of range")

    def _refs(self) -> tuple[LimitRef, ...]:
        out = [
            LimitRef(
                name=r.name, scope=r.scope, model=r.model, unit=r.unit, limit=r.limit, burst=r.burst
            )
            for r in self.rates
        ]
        for name, unit, limit in (
            (LimitName.TOKENS_PER_DAY, Unit.TOKENS, self.tokens_per_day),
            (LimitName.CONCURRENT_REQUESTS, Unit.REQUESTS, self.concurrent_requests),
        ):
            if limit is not None:
                out.append(
                    LimitRef(
                        name=name, scope=Scope.USER, model=None, unit=unit, limit=limit, burst=None
                    )
                )
        return tuple(out)

    @property
    def empty(self) -> bool:
        return not self.rates and self.tokens_per_day is None and self.concurrent_requests is None

    def requests_only(self) -> LimitSpecs:
        """These limits without the token ones, for a request that uses no
        tokens (a token count): a user over a token budget may still count."""
        rates = tuple(r for r in self.rates if r.unit is Unit.REQUESTS)
        if rates == self.rates and self.tokens_per_day is None:
            return self
        return replace(self, rates=rates, tokens_per_day=None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Costs:
    """What one request costs: ``tokens`` is the estimate (prompt + output
    cap, times n); ``requests`` is 1 for every request."""

    tokens: int
    requests: int = field(default=1)

    def clamped(self) -> Costs:
        """These costs within [0, MAX_COST] (``self`` when they are already)."""
        if 0 <= self.tokens <= MAX_COST and 0 <= self.requests <= MAX_COST:
            return self
        return Costs(tokens=clamp_cost(self.tokens), requests=clamp_cost(self.requests))


def clamp_cost(cost: int) -> int:
    return min(max(cost, 0), MAX_COST)


def lease_ttl_for(timeouts_s: list[float] | tuple[float, ...], margin_s: float = 60.0) -> int:
    """A lease lifetime longer than the longest upstream timeout (seconds)."""
    longest = max(timeouts_s, default=1800.0)
    return min(int((longest + margin_s) * SECOND_US), MAX_LEASE_TTL_US)


def _pick(override: int | None, default: int | None, divisor: int) -> int | None:
    value = override if override is not None else default
    if value is None:
        return None
    return max(1, value // divisor)


def build_specs(
    limits: LimitsConfig,
    user: str,
    model: str,
    *,
    divisor: int = 1,
    lease_ttl_us: int = DEFAULT_LEASE_TTL_US,
    burst_us: int | None = None,
    model_values: LimitValues | None = None,
) -> LimitSpecs:
    """The limits for ``user`` calling ``model``, each divided by ``divisor``.

    ``burst_us`` overrides the GCRA tolerance (default: a sixth of a minute).
    ``model_values`` replaces the lookup of ``limits.models[model]`` (the
    Gateway passes the entry matched by canonical route).
    """
    if divisor < 1:
        raise ValueError("divisor must be >= 1")
    mine = limits.users.get(user) or LimitValues()
    per_model = model_values or limits.models.get(model) or LimitValues()
    rates: list[RateSpec] = []
    table = (
        (
            LimitName.REQUESTS_PER_MINUTE,
            Scope.USER,
            mine.requests_per_minute,
            limits.requests_per_minute,
        ),
        (LimitName.TOKENS_PER_MINUTE, Scope.USER, mine.tokens_per_minute, limits.tokens_per_minute),
        (LimitName.REQUESTS_PER_MINUTE, Scope.MODEL, per_model.requests_per_minute, None),
        (LimitName.TOKENS_PER_MINUTE, Scope.MODEL, per_model.tokens_per_minute, None),
    )
    for name, scope, override, default in table:
        value = _pick(override, default, divisor)
        if value is not None:
            rates.append(_rate(name, scope, model, value, burst_us))
    quota = _pick(mine.tokens_per_day, limits.tokens_per_day, divisor)
    return LimitSpecs(
        rates=tuple(rates),
        tokens_per_day=None if quota is None else min(quota, MAX_QUOTA),
        concurrent_requests=_pick(mine.concurrent_requests, limits.concurrent_requests, divisor),
        lease_ttl_us=lease_ttl_us,
    )


def _rate(name: LimitName, scope: Scope, model: str, value: int, burst_us: int | None) -> RateSpec:
    limit = min(value, MAX_RATE_LIMIT)
    burst = 0
    if burst_us is not None:
        burst = min(MINUTE_US, max(burst_us, ceil_div(MINUTE_US, limit)))
    return RateSpec(
        name=name,
        scope=scope,
        model=model if scope is Scope.MODEL else None,
        limit=limit,
        burst_us=burst,
    )


def divide_specs(specs: LimitSpecs, divisor: int) -> LimitSpecs:
    """Every limit divided by ``divisor`` (never below 1); bursts keep their
    duration, so each share keeps ten seconds' worth of its own rate."""
    if divisor < 1:
        raise ValueError("divisor must be >= 1")
    if divisor == 1:
        return specs
    rates = []
    for rate in specs.rates:
        limit = max(1, rate.limit // divisor)
        burst = min(rate.period_us, max(rate.burst_us, ceil_div(rate.period_us, limit)))
        rates.append(replace(rate, limit=limit, burst_us=burst))
    quota, conc = specs.tokens_per_day, specs.concurrent_requests
    return replace(
        specs,
        rates=tuple(rates),
        tokens_per_day=None if quota is None else max(1, quota // divisor),
        concurrent_requests=None if conc is None else max(1, conc // divisor),
    )
