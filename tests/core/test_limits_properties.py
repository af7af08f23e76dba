"""The limiter's properties (docs/rate-limiting.md, "The algorithms and their bounds"), by
Hypothesis.

Each test runs random histories of admits and commits at explicit times
through the pure functions and checks one invariant along the way.  The
strategies here are shared with the Redis differential tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.limits import (
    DAY_US,
    MINUTE_US,
    Costs,
    Decision,
    DenyReason,
    LimitName,
    LimitSpecs,
    LimitState,
    RateSpec,
    Scope,
    Unit,
    admit,
    commit,
)
from sansio_gateway.limits.core import MAX_CLOCK_LEAD_US, today_of
from sansio_gateway.limits.specs import ceil_div

START = 1_764_028_800_000_000 - 90 * 1_000_000  # 90 s before a UTC midnight
RATE_KINDS = [
    (LimitName.REQUESTS_PER_MINUTE, Scope.USER),
    (LimitName.TOKENS_PER_MINUTE, Scope.USER),
    (LimitName.REQUESTS_PER_MINUTE, Scope.MODEL),
    (LimitName.TOKENS_PER_MINUTE, Scope.MODEL),
]


@st.composite
def rate_specs(draw: st.DrawFn, name: LimitName, scope: Scope, model: str = "m") -> RateSpec:
    top = 30 if name is LimitName.REQUESTS_PER_MINUTE else 3000
    limit = draw(st.integers(1, top))
    burst = draw(st.one_of(st.just(0), st.integers(ceil_div(MINUTE_US, limit), MINUTE_US)))
    return RateSpec(
        name=name,
        scope=scope,
        model=model if scope is Scope.MODEL else None,
        limit=limit,
        burst_us=burst,
    )


@st.composite
def limit_specs(draw: st.DrawFn, model: str = "m") -> LimitSpecs:
    rates = [draw(rate_specs(n, s, model)) for n, s in RATE_KINDS if draw(st.booleans())]
    return LimitSpecs(
        rates=tuple(rates),
        tokens_per_day=draw(st.none() | st.integers(1, 4000)),
        concurrent_requests=draw(st.none() | st.integers(1, 4)),
        lease_ttl_us=draw(st.integers(1, 90) | st.integers(1_000_000, 120_000_000)),
    )


@dataclass(frozen=True)
class Admit:
    dt: int  # microseconds after the previous operation (may be negative)
    tokens: int


@dataclass(frozen=True)
class Commit:
    dt: int
    which: int  # index into the ids admitted so far (modulo)
    fraction: int  # actual = estimate * fraction // 100


def deltas(backwards: bool = False) -> st.SearchStrategy[int]:
    forward = st.one_of(st.integers(0, 3), st.integers(0, 2_000_000), st.integers(0, 40_000_000))
    return st.one_of(forward, st.integers(-5_000_000, -1)) if backwards else forward


def operations(
    *, backwards: bool = False, overage: bool = False, max_size: int = 40
) -> st.SearchStrategy[list[Admit | Commit]]:
    admit_op = st.builds(
        Admit, dt=deltas(backwards), tokens=st.integers(0, 600) | st.integers(0, 20)
    )
    top = 300 if overage else 100
    commit_op = st.builds(
        Commit, dt=deltas(backwards), which=st.integers(0, 1000), fraction=st.integers(0, top)
    )
    return st.lists(st.one_of(admit_op, admit_op, commit_op), max_size=max_size)


@dataclass
class Step:
    """One operation as run: the state before, what happened, the state after."""

    op: Admit | Commit
    now: int
    before: LimitState
    after: LimitState
    rid: str
    decision: Decision | None = None
    estimate: int = 0
    actual: int = 0


def run(specs: LimitSpecs, ops: list[Admit | Commit]) -> Iterator[Step]:
    """Run ``ops`` from a fresh state; yields every step."""
    state, now = LimitState(), START
    ids: list[tuple[str, int]] = []
    for i, op in enumerate(ops):
        now = max(0, now + op.dt)
        if isinstance(op, Admit):
            rid = f"r{i}"
            decision, new = admit(specs, state, now, Costs(tokens=op.tokens), rid)
            if decision.allowed:
                ids.append((rid, op.tokens))
            yield Step(op=op, now=now, before=state, after=new, rid=rid, decision=decision)
        else:
            if not ids:
                continue
            rid, est = ids[op.which % len(ids)]
            actual = est * op.fraction // 100
            new = commit(specs, state, now, rid, est, actual)
            yield Step(
                op=op, now=now, before=state, after=new, rid=rid, estimate=est, actual=actual
            )
        state = new


FAST = settings(max_examples=150, deadline=None)


def _admits(specs: LimitSpecs, ops: list[Admit | Commit]) -> Iterator[tuple[Step, Decision]]:
    for step in run(specs, ops):
        if step.decision is not None:
            yield step, step.decision


# ---- window bound -------------------------------------------------------------


def _charges(specs: LimitSpecs, ops: list[Admit | Commit]) -> list[tuple[int, int, int]]:
    """(time, requests, final tokens) of every admitted request."""
    admitted: dict[str, list[int]] = {}
    for step in run(specs, ops):
        if step.decision is not None and step.decision.allowed:
            admitted[step.rid] = [step.decision.now_us, 1, step.op.tokens]  # type: ignore[union-attr]
        elif step.decision is None:
            lease = step.before.inflight.get(step.rid)
            live = lease is not None and lease.expiry_us > max(step.now, step.before.clock_us)
            if live and step.rid not in step.before.done:
                admitted[step.rid][2] = step.actual  # refunded down to the actual
    return [(t, r, k) for t, r, k in admitted.values()]


@FAST
@given(limit_specs(), operations())
def test_window_bound_admitted_cost_within_burst_plus_rate(
    specs: LimitSpecs, ops: list[Admit | Commit]
) -> None:
    """In any window [t0, t1]: cost * P <= (t1 - t0 + burst_us) * L, with
    committed requests counted at their actual cost."""
    charges = sorted(_charges(specs, ops))
    for rate in specs.rates:
        for i, (t0, *_) in enumerate(charges):
            total = 0
            for t1, requests, tokens in charges[i:]:
                total += requests if rate.unit is Unit.REQUESTS else tokens
                assert total * rate.period_us <= (t1 - t0 + rate.burst_us) * rate.limit


@st.composite
def tight_histories(draw: st.DrawFn) -> tuple[LimitSpecs, list[Admit | Commit]]:
    """One token limit of 1 token/s, costs and gaps on the scale of its
    burst, in whole seconds: where refunds and clamps interact."""
    burst_s = draw(st.integers(5, 60))
    rate = RateSpec(
        name=LimitName.TOKENS_PER_MINUTE,
        scope=Scope.USER,
        model=None,
        limit=60,
        burst_us=burst_s * 1_000_000,
    )
    seconds = st.integers(0, burst_s).map(lambda s: s * 1_000_000)
    admit_op = st.builds(Admit, dt=seconds, tokens=st.integers(0, burst_s))
    commit_op = st.builds(
        Commit, dt=seconds, which=st.integers(0, 1000), fraction=st.sampled_from([0, 25, 50, 100])
    )
    ops = draw(st.lists(st.one_of(admit_op, commit_op), max_size=30))
    return LimitSpecs(rates=(rate,)), ops


@settings(max_examples=400, deadline=None)
@given(tight_histories())
def test_window_bound_holds_when_refunds_and_clamps_interact(
    history: tuple[LimitSpecs, list[Admit | Commit]],
) -> None:
    test_window_bound_admitted_cost_within_burst_plus_rate.hypothesis.inner_test(*history)  # type: ignore[attr-defined]


def test_a_full_bucket_admits_exactly_its_burst() -> None:
    """No leaked capacity either: a burst of size ``burst`` passes at once."""
    for limit in (1, 5, 7, 60, 61, 1000):
        rate = RateSpec(
            name=LimitName.REQUESTS_PER_MINUTE, scope=Scope.USER, model=None, limit=limit
        )
        specs = LimitSpecs(rates=(rate,))
        state, passed = LimitState(), 0
        for i in range(rate.burst + 1):
            decision, state = admit(specs, state, START, Costs(tokens=0), f"r{i}")
            passed += decision.allowed
        assert passed == rate.burst == max(1, limit // 6)


# ---- day quota and leases ----------------------------------------------------------


@FAST
@given(limit_specs(), operations(backwards=True))
def test_day_quota_reserved_plus_committed_within_quota(
    specs: LimitSpecs, ops: list[Admit | Commit]
) -> None:
    quota = specs.tokens_per_day
    for step in run(specs, ops):
        if quota is None:
            continue
        state = step.after
        today = today_of(state)
        used = state.day_used if state.day == today else 0
        pending = sum(
            lease.tokens
            for lease in state.inflight.values()
            if lease.day == today and lease.expiry_us > state.clock_us
        )
        assert used + pending <= quota


@FAST
@given(limit_specs(), operations(backwards=True, overage=True))
def test_day_quota_holds_when_actual_exceeds_estimate(
    specs: LimitSpecs, ops: list[Admit | Commit]
) -> None:
    """With actual > estimate (a backend that over-ran its cap), the day may
    end above the quota only by the overage committed that day, and nothing
    is admitted once the quota is spent."""
    quota = specs.tokens_per_day
    if quota is None:
        return
    overage: dict[int, int] = {}
    for step in run(specs, ops):
        state = step.after
        today = state.clock_us // DAY_US
        if step.decision is None:
            lease = step.before.inflight.get(step.rid)
            live = lease is not None and lease.expiry_us > state.clock_us
            if live and step.rid not in step.before.done and lease is not None:
                over = max(0, step.actual - lease.tokens)
                overage[lease.day] = overage.get(lease.day, 0) + over
        total = _day_total(state)
        assert total <= quota + overage.get(today, 0)
        if step.decision is not None and step.decision.allowed and quota is not None:
            before = _day_total(replace(step.before, clock_us=state.clock_us))
            assert before + step.op.tokens <= quota  # type: ignore[union-attr]


def test_a_commit_after_midnight_is_charged_to_the_day_it_was_admitted() -> None:
    specs = LimitSpecs(tokens_per_day=1000, lease_ttl_us=600_000_000)
    day = START // DAY_US
    midnight = (day + 1) * DAY_US
    _, state = admit(specs, LimitState(), midnight - 10, Costs(tokens=400), "a")
    _, state = admit(specs, state, midnight - 5, Costs(tokens=400), "b")
    state = commit(specs, state, midnight + 10, "a", 400, 300)
    assert (state.day, state.day_used) == (day, 300)  # was (day, 0): charged to neither day
    state = commit(specs, state, midnight + 20, "b", 400, 500)  # actual > estimate too
    assert (state.day, state.day_used) == (day, 800)
    # The next day starts from zero: yesterday's requests do not count today.
    decision, state = admit(specs, state, midnight + 30, Costs(tokens=1000), "c")
    assert decision.allowed and (state.day, state.day_used) == (day + 1, 0)
    # Once the counter has moved on, a late commit of yesterday adds nothing today.
    _, state2 = admit(specs, LimitState(), midnight - 10, Costs(tokens=400), "d")
    _, state2 = admit(specs, state2, midnight + 1, Costs(tokens=100), "e")
    state2 = commit(specs, state2, midnight + 2, "d", 400, 400)
    assert (state2.day, state2.day_used) == (day + 1, 0)


@FAST
@given(limit_specs(), operations(backwards=True))
def test_leases_are_taken_released_and_expire(specs: LimitSpecs, ops: list[Admit | Commit]) -> None:
    for step in run(specs, ops):
        now = step.after.clock_us
        live = {rid for rid, lease in step.after.inflight.items() if lease.expiry_us > now}
        if step.decision is not None and step.decision.allowed:
            assert step.after.inflight[step.rid].expiry_us == now + specs.lease_ttl_us
        if step.decision is None:
            assert step.rid not in step.after.inflight
        if specs.concurrent_requests is not None:
            assert len(live) <= specs.concurrent_requests
        # Expired leases are dropped as soon as the state is written.
        if step.after is not step.before:
            assert all(lease.expiry_us > now for lease in step.after.inflight.values())


def test_a_lease_expires_and_frees_its_slot_and_reservation() -> None:
    specs = LimitSpecs(tokens_per_day=100, concurrent_requests=1, lease_ttl_us=1_000)
    d1, state = admit(specs, LimitState(), START, Costs(tokens=100), "a")
    assert d1.allowed
    d2, _ = admit(specs, state, START + 999, Costs(tokens=1), "b")
    assert d2.retry_after_us == 1  # both the slot and the quota free up then
    d3, state = admit(specs, state, START + 1_000, Costs(tokens=100), "b")
    assert d3.allowed and "a" not in state.inflight
    # A commit after the lease expired refunds nothing and leaves the day alone.
    late = commit(specs, state, START + 1_500, "b", 100, 0)
    assert late.day_used == 0 and "b" not in late.inflight


# ---- denials, monotonicity, exact retry -------------------------------------------


@FAST
@given(limit_specs(), operations(backwards=True))
def test_denials_are_free(specs: LimitSpecs, ops: list[Admit | Commit]) -> None:
    """A denied admit returns the state itself -- or, when it rebased the
    clock (a step back beyond MAX_CLOCK_LEAD_US), the state with only its
    skew moved."""
    for step, decision in _admits(specs, ops):
        if not decision.allowed:
            before, after = step.before, step.after
            assert after is before or after == replace(before, skew_us=after.skew_us)


def _raised(specs: LimitSpecs, k: int) -> LimitSpecs:
    return replace(
        specs,
        rates=tuple(replace(r, limit=r.limit + k) for r in specs.rates),
        tokens_per_day=None if specs.tokens_per_day is None else specs.tokens_per_day + k,
        concurrent_requests=None
        if specs.concurrent_requests is None
        else specs.concurrent_requests + k,
    )


@FAST
@given(limit_specs(), operations(backwards=True), st.integers(1, 10**8), st.integers(1, 50))
def test_monotone_more_time_smaller_cost_higher_limit(
    specs: LimitSpecs, ops: list[Admit | Commit], later: int, k: int
) -> None:
    for step, decision in _admits(specs, ops):
        if not decision.allowed:
            continue
        tokens, now, s, rid = step.op.tokens, step.now, step.before, step.rid  # type: ignore[union-attr]

        def allowed(sp: LimitSpecs, t: int, c: int, s: LimitState = s, rid: str = rid) -> bool:
            return admit(sp, s, t, Costs(tokens=c), rid)[0].allowed

        assert allowed(specs, now + later, tokens)
        assert allowed(specs, now, tokens // 2)
        assert allowed(specs, now, 0)
        assert allowed(_raised(specs, k), now, tokens)


@FAST
@given(limit_specs(), operations(backwards=True))
def test_retry_after_is_exact(specs: LimitSpecs, ops: list[Admit | Commit]) -> None:
    """The denied request passes at now + retry_after, not 1 us earlier."""
    for step, decision in _admits(specs, ops):
        if decision.allowed or decision.reason is DenyReason.TOO_LARGE:
            continue
        assert decision.retry_after_us > 0
        costs = Costs(tokens=step.op.tokens)  # type: ignore[union-attr]
        # decision.now_us is the state's time; the caller's is that - skew
        at = decision.now_us - step.after.skew_us + decision.retry_after_us
        assert admit(specs, step.after, at, costs, step.rid)[0].allowed
        assert not admit(specs, step.after, at - 1, costs, step.rid)[0].allowed


def test_too_large_is_never_retryable() -> None:
    rate = RateSpec(name=LimitName.TOKENS_PER_MINUTE, scope=Scope.USER, model=None, limit=600)
    specs = LimitSpecs(rates=(rate,), tokens_per_day=50)
    decision, _ = admit(specs, LimitState(), START, Costs(tokens=101), "r")
    assert decision.reason is DenyReason.TOO_LARGE and not decision.retryable
    assert decision.limit is LimitName.TOKENS_PER_MINUTE  # first too-large limit in order
    for t in (START, START + DAY_US, START + 100 * DAY_US):
        assert not admit(specs, LimitState(), t, Costs(tokens=101), "r")[0].allowed


# ---- commit algebra and clock -------------------------------------------------------


def _commits(specs: LimitSpecs, ops: list[Admit | Commit]) -> Iterator[Step]:
    for step in run(specs, ops):
        if step.decision is None:
            yield step


def _day_total(state: LimitState) -> int:
    today = today_of(state)
    used = state.day_used if state.day == today else 0
    return used + sum(
        lease.tokens
        for lease in state.inflight.values()
        if lease.day == today and lease.expiry_us > state.clock_us
    )


@FAST
@given(limit_specs(), operations(backwards=True, overage=True))
def test_commit_algebra(specs: LimitSpecs, ops: list[Admit | Commit]) -> None:
    for step in _commits(specs, ops):
        before, after = step.before, step.after
        # Idempotent: committing again changes nothing at all.
        again = commit(specs, after, step.now, step.rid, step.estimate, step.actual)
        assert again is after
        # actual == estimate is a no-op on every TAT and on the day total.
        same = commit(specs, before, step.now, step.rid, step.estimate, step.estimate)
        assert same.tats == before.tats or same is before
        quota = specs.tokens_per_day is not None
        if quota and step.rid in before.inflight and step.rid not in before.done:
            assert _day_total(same) == _day_total(replace(before, clock_us=same.clock_us))
        # A refund never makes a bucket better than full.
        for key, tat in after.tats.items():
            if tat < before.tats.get(key, 0):
                assert tat >= after.clock_us
        assert all(tat < 2**53 for tat in after.tats.values())


@FAST
@given(limit_specs(), operations(backwards=True), st.integers(1, 10**9))
def test_clock_going_backwards_never_adds_capacity(
    specs: LimitSpecs, ops: list[Admit | Commit], back: int
) -> None:
    """Earlier than the state's clock by up to MAX_CLOCK_LEAD_US behaves
    exactly as at the clock; further back (a rebase), the same TATs and
    leases are charged, and an allow implies an allow at the clock."""
    for step, _ in _admits(specs, ops):
        s = step.before
        costs = Costs(tokens=step.op.tokens)  # type: ignore[union-attr]
        clock = s.clock_us - s.skew_us  # the state's clock, in the caller's time
        at_clock = admit(specs, s, clock, costs, step.rid)
        earlier = admit(specs, s, max(0, clock - back), costs, step.rid)
        if back <= MAX_CLOCK_LEAD_US or clock - back < 0:
            assert earlier == at_clock
        else:
            assert earlier[0].now_us == at_clock[0].now_us
            assert at_clock[0].allowed or not earlier[0].allowed
            if earlier[0].allowed and at_clock[1].day == earlier[1].day:
                assert earlier[1].tats == at_clock[1].tats


def test_commit_refunds_only_the_unused_future_part() -> None:
    """The case a naive refund gets wrong: an old request's refund must not
    give back capacity that time has already given back."""
    rate = RateSpec(
        name=LimitName.TOKENS_PER_MINUTE,
        scope=Scope.USER,
        model=None,
        limit=60,
        burst_us=60_000_000,
    )  # 1 token/s, burst 60 tokens
    specs = LimitSpecs(rates=(rate,))
    s = LimitState()
    _, s = admit(specs, s, START, Costs(tokens=20), "j")  # slice [0 s, 20 s]
    _, s = admit(specs, s, START, Costs(tokens=20), "i")  # slice [20 s, 40 s]
    s = commit(specs, s, START, "j", 20, 0)  # full refund: i's slice drops to [0, 20 s]
    t = START + 15_000_000
    d, s = admit(specs, s, t, Costs(tokens=40), "k")  # tat 60 s
    assert d.allowed
    # Of i's 10 unused tokens, only 5 are still in the future.
    s = commit(specs, s, t, "i", 20, 10)
    assert s.tats["tpm"] == START + 55_000_000  # charging 10 at admission gives the same
    assert not admit(specs, s, t, Costs(tokens=21), "l")[0].allowed  # k + l > 60 at one instant
    assert admit(specs, s, t, Costs(tokens=20), "l")[0].allowed


def test_surcharge_lands_now_and_stays_bounded() -> None:
    rate = RateSpec(name=LimitName.TOKENS_PER_MINUTE, scope=Scope.USER, model=None, limit=1)
    specs = LimitSpecs(rates=(rate,), tokens_per_day=10**6)
    s = LimitState()
    _, s = admit(specs, s, START, Costs(tokens=0), "a")
    s = commit(specs, s, START + 5, "a", 0, 10**12)  # a wildly wrong estimate
    assert START + 5 < s.tats["tpm"] <= START + 5 + 2**40
    assert s.day_used == 150_000_000  # clamped to MAX_COST
