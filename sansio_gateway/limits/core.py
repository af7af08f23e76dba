"""The rate limiter: three pure functions over one user's state.

Theory of operation (docs/rate-limiting.md describes the behaviour):

* **GCRA, one TAT per rate limit.**  A cost c adds ``ceil(c * P / L)`` us to
  the limit's theoretical arrival time; the request passes when
  ``max(tat, now) + inc - now <= burst_us``.  In any window of W us the
  admitted cost is then at most ``(W + burst_us) * L / P``.
* **Day quota.**  A UTC-day counter of committed tokens plus the estimates
  of live leases admitted that day ("pending").  Passes while
  ``used + pending + estimate <= quota``.
* **Leases.**  Every admitted request holds a lease keyed by its id until
  commit or ``now + lease_ttl_us``; live leases count against
  ``concurrent_requests`` and carry the day reservation, so a crashed
  gateway leaks nothing for longer than the lease lifetime.
* **All or nothing.**  :func:`admit` reads every limit first; if any denies,
  the state is returned unchanged (the very same object).
* **Commit** (idempotent by request id) charges ``inc(actual) - inc(estimate)``
  to each token limit.  A surcharge lands at ``max(tat, now)``.  A refund
  only gives back the part of the request's own GCRA slice that is still in
  the future: the lease remembers ``anchor = tat_at_admission + R`` where R
  counts every microsecond refunded from that limit, so the slice's end is
  now at least ``anchor - R_now`` (refunds below it can only have shifted
  it down by that much).  This keeps the window bound true for actual costs
  and never takes a TAT below ``now`` ("never better than full").
* **Clock.**  The state keeps its own time: ``now = max(now_us + skew,
  clock)``, where ``clock`` is the latest time it saw and ``skew`` starts
  at 0.  A caller clock going back by up to ``MAX_CLOCK_LEAD_US`` behaves
  like a clock standing still.  Further back (a wall clock stepped forward
  and then corrected), the state is *rebased*: ``skew`` grows so that this
  call's time is ``clock`` again, and from then on the state's time flows
  with the caller's -- nothing is charged or given back by the step, and a
  Retry-After computed now is exact instead of frozen for the whole step
  (issue 17, item 10).  A clock going backwards never adds capacity.  The
  UTC day is that of ``now - skew`` (the caller's own date), never earlier
  than the state's day (a clock going back over midnight gets no fresh
  quota); every stored time, TATs and expiries, is in the state's time.
  A deny that rebases stores the new skew (and nothing else), so time moves
  on even for a user whose every request is denied.

Every value is an integer below 2**53; the Lua script in
``adapters/limits_lua.py`` performs these same steps integer for integer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from .decision import (
    Decision,
    RateHeaders,
    Reading,
    UnitHeaders,
    Verdict,
    decide,
    headers_from,
)
from .done_ids import DoneIds, add_digest, id_digest
from .specs import DAY_US, MAX_NOW_US, Costs, LimitSpecs, RateSpec, Scope, Unit, clamp_cost

__all__ = ["Lease", "LimitState", "admit", "commit", "peek", "readings", "today_of"]

MAX_DEBT_US = 2**40  # a surcharge never pushes a TAT further than ~12.7 days ahead
MAX_DAY_USED = 2**50
# How far a state's clock may lead the caller's before the state is rebased.
MAX_CLOCK_LEAD_US = 1_000_000
NO_ANCHOR = -1
NO_LEASE = 2**62  # ``soonest_us`` of a state without leases: later than any time


class Lease(NamedTuple):
    """One admitted, uncommitted request: its concurrency slot, its day
    reservation and its refund anchors (``NO_ANCHOR`` when absent).

    A named tuple, not a frozen dataclass: one is built per admission, and
    a tuple is built in a quarter of the time (hot path)."""

    expiry_us: int
    day: int
    tokens: int
    anchor_user: int = NO_ANCHOR
    anchor_model: int = NO_ANCHOR


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitState:
    """Everything the limiter knows about one user.  Treat as immutable."""

    clock_us: int = 0
    tats: Mapping[str, int] = field(default_factory=dict)
    refunded: Mapping[str, int] = field(default_factory=dict)
    day: int = 0
    day_used: int = 0
    inflight: Mapping[str, Lease] = field(default_factory=dict)
    done: DoneIds = field(default_factory=DoneIds)
    skew_us: int = 0  # the state's time minus the caller's (see "Clock")
    # No lease of ``inflight`` expires before this time (a lower bound of
    # their expiries; 0: not known).  Hot path: while the state's time is
    # below it, the live leases are ``inflight`` itself, found by a C-level
    # copy instead of a pass over thousands of concurrent requests' leases.
    # Derived from ``inflight``, so not compared.
    soonest_us: int = field(default=0, compare=False, repr=False)


def _rebased(state: LimitState, now_us: int) -> tuple[LimitState, int]:
    """``state`` (rebased if the caller is too far behind it) and its now."""
    now = min(now_us + state.skew_us, MAX_NOW_US)
    if now >= state.clock_us:
        return state, now
    if state.clock_us - now <= MAX_CLOCK_LEAD_US:
        return state, state.clock_us
    return replace(state, skew_us=state.clock_us - now_us), state.clock_us


def today_of(state: LimitState, now: int | None = None) -> int:
    """The UTC day index at the state's time ``now`` (default: its clock):
    the caller's date, never earlier than a day the state already used."""
    now = state.clock_us if now is None else now
    return max(state.day, (now - state.skew_us) // DAY_US)


def _check(now_us: int, request_id: str | None = None) -> None:
    if not 0 <= now_us <= MAX_NOW_US:
        raise ValueError(f"now_us out of range: {now_us}")
    if request_id is not None and not 0 < len(request_id) <= 256:
        raise ValueError("request_id must be 1..256 characters")


def _live(state: LimitState, now: int, exclude: str) -> tuple[dict[str, Lease], int]:
    """The leases of ``state`` live at ``now``, but ``exclude``'s, in a new
    dict; and a lower bound of their expiries (``soonest_us``)."""
    if now < state.soonest_us:  # none has expired: no pass over them
        live = dict(state.inflight)
        live.pop(exclude, None)
        return live, state.soonest_us
    live = {
        rid: lease
        for rid, lease in state.inflight.items()
        if lease.expiry_us > now and rid != exclude
    }
    return live, min([lease.expiry_us for lease in live.values()], default=NO_LEASE)


# ---- readings ---------------------------------------------------------------


def _rate_status(spec: RateSpec, tat: int, now: int, cost: int) -> tuple[Verdict, int]:
    if cost > spec.burst:
        return Verdict.TOO_LARGE, 0
    new = max(tat, now) + spec.increment(cost)
    if new - now <= spec.burst_us:
        return Verdict.PASS, 0
    return Verdict.WAIT, new - spec.burst_us - now


def _rate_level(spec: RateSpec, tat: int, now: int) -> tuple[int, int, int]:
    debt = max(tat - now, 0)
    period, limit = spec.period_us, spec.limit
    # "Used" (docs/rate-limiting.md): the admitted cost not yet refilled, rounded
    # up, so a burst of 2 reads "Used 2" (flooring said 1).  Each charge was
    # rounded up to the microsecond, at most 1 us per unit: that slack is
    # taken off first so that it never rounds up into a phantom unit.
    # Products split so that none reaches 2**53.
    whole = (debt // period) * limit + (debt % period) * limit // period
    net = max(debt - whole, 0)
    used = (net // period) * limit + ((net % period) * limit + period - 1) // period
    remaining = max(spec.burst_us - debt, 0) * limit // period
    return used, remaining, debt


def _day_pending(live: Mapping[str, Lease], day: int) -> list[Lease]:
    return [lease for lease in live.values() if lease.day == day]


def _day_status(
    quota: int, used: int, pending: list[Lease], now: int, day_end: int, tokens: int
) -> tuple[Verdict, int]:
    if tokens > quota:
        return Verdict.TOO_LARGE, 0
    running = used + sum(lease.tokens for lease in pending)
    if running + tokens <= quota:
        return Verdict.PASS, 0
    for lease in sorted(pending, key=lambda lease: lease.expiry_us):
        if lease.expiry_us >= day_end:
            break
        running -= lease.tokens
        if running + tokens <= quota:
            return Verdict.WAIT, lease.expiry_us - now
    return Verdict.WAIT, day_end - now


def _day_level(
    quota: int, used: int, pending: list[Lease], now: int, day_end: int
) -> tuple[int, int, int]:
    total = used + sum(lease.tokens for lease in pending)
    reset = day_end - now if total > 0 else 0
    return total, max(quota - total, 0), reset


def _conc_status(limit: int, live: Mapping[str, Lease], now: int) -> tuple[Verdict, int]:
    count = len(live)
    if count + 1 <= limit:
        return Verdict.PASS, 0
    expiries = sorted(lease.expiry_us for lease in live.values())
    return Verdict.WAIT, expiries[count - limit] - now


def readings(
    specs: LimitSpecs,
    state: LimitState,
    now: int,
    costs: Costs,
    live: Mapping[str, Lease],
    *,
    judge: bool = True,
) -> list[Reading]:
    """One reading per limit, in decision order.  ``live`` holds the live
    leases other than the request's own; ``judge=False`` only measures."""
    out: list[Reading] = []

    def add(status: tuple[Verdict, int], level: tuple[int, int, int]) -> None:
        verdict, wait = status if judge else (Verdict.PASS, 0)
        used, remaining, reset = level
        out.append(
            Reading(verdict=verdict, wait_us=wait, used=used, remaining=remaining, reset_us=reset)
        )

    for spec in specs.rates:
        tat = state.tats.get(spec.key, 0)
        cost = costs.requests if spec.unit is Unit.REQUESTS else costs.tokens
        add(_rate_status(spec, tat, now, cost), _rate_level(spec, tat, now))
    if specs.tokens_per_day is not None:
        quota, day = specs.tokens_per_day, today_of(state, now)
        day_end = (day + 1) * DAY_US + state.skew_us  # in the state's time
        used = state.day_used if state.day == day else 0
        pending = _day_pending(live, day)
        add(
            _day_status(quota, used, pending, now, day_end, costs.tokens),
            _day_level(quota, used, pending, now, day_end),
        )
    if specs.concurrent_requests is not None:
        limit = specs.concurrent_requests
        add(_conc_status(limit, live, now), (len(live), max(limit - len(live), 0), 0))
    return out


# ---- the three functions ----------------------------------------------------


def admit(
    specs: LimitSpecs, state: LimitState, now_us: int, costs: Costs, request_id: str
) -> tuple[Decision, LimitState]:
    """Admit or deny one request.  On a deny the returned state *is* ``state``
    (unless the call rebased the clock: then it differs in ``skew_us`` only).

    After an allow, call :func:`commit` with the same ``request_id`` when the
    request ends (however it ends); without one, the lease expires.
    """
    _check(now_us, request_id)
    state, now = _rebased(state, now_us)
    costs = costs.clamped()
    live, soonest = _live(state, now, request_id)
    # Hot path: one pass that only says pass or fail (what readings(...) says
    # as verdicts), then the charge and the headers straight from the new
    # TATs.  A deny takes the full readings: they name the limit and wait.
    tats = _passing_tats(specs, state.tats, now, costs)
    today = today_of(state, now)
    day_used = state.day_used if state.day == today else 0
    pending = 0
    quota = specs.tokens_per_day
    if quota is not None:
        pending = sum([lease.tokens for lease in live.values() if lease.day == today])
    conc = specs.concurrent_requests
    if (
        tats is None
        or (quota is not None and day_used + pending + costs.tokens > quota)
        or (conc is not None and len(live) + 1 > conc)
    ):
        pre = readings(specs, state, now, costs, live)
        return decide(specs, now, costs, pre), state
    new_state = _charge(specs, state, now, costs, request_id, live, soonest, tats, today)
    headers = _admitted_headers(specs, tats, now, day_used + pending + costs.tokens, today, state)
    return Decision(allowed=True, now_us=now, headers=headers), new_state


def _passing_tats(
    specs: LimitSpecs, tats: Mapping[str, int], now: int, costs: Costs
) -> list[int] | None:
    """Each rate limit's TAT once charged ``costs`` (in ``specs.rates``
    order), or None when one of them does not pass (:func:`_rate_status`:
    a cost above the burst fails its increment test too)."""
    out: list[int] = []
    for spec in specs.rates:
        cost = costs.tokens if spec.unit is Unit.TOKENS else costs.requests
        tat = tats.get(spec.key, 0)
        # spec.increment(cost), inlined (hot path)
        new = (tat if tat > now else now) - (-cost * spec.period_us // spec.limit)
        if new - now > spec.burst_us:
            return None
        out.append(new)
    return out


def _admitted_headers(
    specs: LimitSpecs, tats: list[int], now: int, day_total: int, today: int, state: LimitState
) -> RateHeaders:
    """``headers_from`` of the readings after an admission (``judge=False``):
    each unit's tightest limit, from the charged ``tats`` and the day's
    ``day_total`` (committed + pending, this request's included).  Tightest
    as ``_tighter`` says: the fewest remaining, then the longest reset, then
    the first in spec order."""
    requests: tuple[int, int, int] | None = None  # (remaining, -reset, limit)
    tokens: tuple[int, int, int] | None = None
    for spec, tat in zip(specs.rates, tats, strict=True):
        debt = tat - now  # never negative: tat >= now once charged
        here = (max(spec.burst_us - debt, 0) * spec.limit // spec.period_us, -debt, spec.limit)
        if spec.unit is Unit.TOKENS:
            if tokens is None or here[:2] < tokens[:2]:
                tokens = here
        elif requests is None or here[:2] < requests[:2]:
            requests = here
    quota = specs.tokens_per_day
    if quota is not None:
        day_end = (today + 1) * DAY_US + state.skew_us  # in the state's time
        reset = day_end - now if day_total > 0 else 0
        here = (max(quota - day_total, 0), -reset, quota)
        if tokens is None or here[:2] < tokens[:2]:
            tokens = here
    return RateHeaders(
        requests=None if requests is None else _unit_headers(requests),
        tokens=None if tokens is None else _unit_headers(tokens),
    )


def _unit_headers(best: tuple[int, int, int]) -> UnitHeaders:
    remaining, minus_reset, limit = best
    return UnitHeaders(limit=limit, remaining=remaining, reset_us=-minus_reset)


def _charge(
    specs: LimitSpecs,
    state: LimitState,
    now: int,
    costs: Costs,
    request_id: str,
    live: dict[str, Lease],
    soonest: int,
    charged: list[int],
    today: int,
) -> LimitState:
    """``state`` once the request is admitted: the rate limits' TATs are
    ``charged`` (from :func:`_passing_tats`), ``live`` (a dict of its own)
    takes the request's lease."""
    tats = {key: tat for key, tat in state.tats.items() if tat > now}
    # R only matters relative to live leases' anchors: reset it when none.
    refunded = dict(state.refunded) if live else {}
    anchor_user = anchor_model = NO_ANCHOR
    for spec, tat in zip(specs.rates, charged, strict=True):
        tats[spec.key] = tat
        if spec.unit is Unit.TOKENS:
            if spec.scope is Scope.USER:
                anchor_user = tat + refunded.get(spec.key, 0)
            else:
                anchor_model = tat + refunded.get(spec.key, 0)
    day, day_used = state.day, state.day_used
    if specs.tokens_per_day is not None and day != today:
        day, day_used = today, 0
    expiry = now + specs.lease_ttl_us
    live[request_id] = Lease(expiry, today, costs.tokens, anchor_user, anchor_model)
    return LimitState(
        clock_us=now,
        tats=tats,
        refunded=refunded,
        day=day,
        day_used=day_used,
        inflight=live,
        done=state.done,
        skew_us=state.skew_us,
        soonest_us=min(soonest, expiry),
    )


def commit(
    specs: LimitSpecs,
    state: LimitState,
    now_us: int,
    request_id: str,
    estimate: int,
    actual: int,
) -> LimitState:
    """Settle a request: charge ``actual - estimate`` tokens, move the day
    reservation to the committed counter, release the lease.

    Idempotent by ``request_id``: a second commit returns ``state`` itself.
    ``estimate`` is used only when the lease is gone (expired): then a
    surcharge is still charged to the TATs, but nothing is refunded and the
    day counter is left alone.  ``actual`` is what to charge (on a client
    disconnect: prompt + output so far; on an upstream error before any
    token: 0).
    """
    _check(now_us, request_id)
    original = state
    state, now = _rebased(state, now_us)
    digest = id_digest(request_id)  # hashed once: looked up, then added
    if state.done.lookup(digest) > now:
        return original
    lease = state.inflight.get(request_id)
    if lease is not None and lease.expiry_us <= now:
        lease = None
    est = lease.tokens if lease is not None else clamp_cost(estimate)
    act = clamp_cost(actual)
    tats, refunded = state.tats, state.refunded
    if act != est:  # hot path: a request that cost its estimate moves no TAT
        tats, refunded = dict(tats), dict(refunded)
        for spec in specs.rates:
            if spec.unit is Unit.TOKENS:
                delta = spec.increment(act) - spec.increment(est)
                _settle(spec, tats, refunded, now, delta, _anchor(lease, spec.scope))
    day, day_used = _charge_day(specs, state, lease, act)
    live, soonest = _live(state, now, request_id)
    done = add_digest(state.done, digest, now, now + specs.lease_ttl_us)
    return LimitState(
        clock_us=now,
        tats=tats,
        refunded=refunded if live else {},
        day=day,
        day_used=day_used,
        inflight=live,
        done=done,
        skew_us=state.skew_us,
        soonest_us=soonest,
    )


def _charge_day(
    specs: LimitSpecs, state: LimitState, lease: Lease | None, act: int
) -> tuple[int, int]:
    """The day counter after a commit of ``act`` tokens.

    A live lease is charged to the day it was admitted (the day of its
    reservation), even when it commits after UTC midnight.  When the
    counter has already moved on to a later day, the lease's day is closed
    and has nothing left to limit: nothing is added (the usage ledger still
    records the request under the day it started).  An expired reservation
    has already been given back and cannot be re-charged without breaking
    committed + reserved <= quota.
    """
    day, day_used = state.day, state.day_used
    if specs.tokens_per_day is None or lease is None or lease.day < day:
        return day, day_used
    if lease.day > day:
        day, day_used = lease.day, 0
    return day, min(day_used + act, MAX_DAY_USED)


def _anchor(lease: Lease | None, scope: Scope) -> int:
    if lease is None:
        return NO_ANCHOR
    return lease.anchor_user if scope is Scope.USER else lease.anchor_model


def _settle(
    spec: RateSpec,
    tats: dict[str, int],
    refunded: dict[str, int],
    now: int,
    delta: int,
    anchor: int,
) -> None:
    tat = tats.get(spec.key, 0)
    if delta > 0:
        base = max(tat, now)
        tats[spec.key] = now + MAX_DEBT_US if delta > now + MAX_DEBT_US - base else base + delta
    elif delta < 0 and anchor != NO_ANCHOR:
        spent = refunded.get(spec.key, 0)
        # never below now ("a refund never fills the bucket beyond full")
        give = min(-delta, anchor - spent - now, tat - now)
        if give > 0:
            tats[spec.key] = tat - give
            refunded[spec.key] = spent + give


def peek(specs: LimitSpecs, state: LimitState, now_us: int) -> RateHeaders:
    """The rate-limit header values at ``now_us``, charging nothing."""
    _check(now_us)
    state, now = _rebased(state, now_us)
    live, _ = _live(state, now, "")
    return headers_from(specs, readings(specs, state, now, Costs(tokens=0), live, judge=False))
