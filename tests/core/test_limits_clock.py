"""A wall clock stepped forward and then corrected (issue 17, item 10).

Before: the state's clock stayed at the stepped time, so after the
correction the limiter stood still for the whole step while its 429s said
"retry in 1 s".  Now a caller clock further than MAX_CLOCK_LEAD_US behind
the state rebases it: time flows on from where the state was.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.config import LimitsConfig
from sansio_gateway.limits import (
    Costs,
    DenyReason,
    LimitSpecs,
    LimitState,
    admit,
    build_specs,
    commit,
)
from sansio_gateway.limits.core import MAX_CLOCK_LEAD_US, today_of
from tests.core.test_limits_properties import START, limit_specs

HOUR = 3_600_000_000
SPECS = build_specs(LimitsConfig(requests_per_minute=6, tokens_per_minute=600), "alice", "m")


def _burst(state: LimitState, now: int, prefix: str) -> tuple[LimitState, int]:
    """Admit until denied; (state, the denial's Retry-After in us)."""
    for i in range(100):
        decision, state = admit(SPECS, state, now, Costs(tokens=1), f"{prefix}{i}")
        if not decision.allowed:
            assert decision.reason is DenyReason.RATE
            return state, decision.retry_after_us
    raise AssertionError("never denied")


def test_forward_step_then_normal_time_admits_at_the_exact_retry_after() -> None:
    state, _ = _burst(LimitState(), START, "a")
    state, _ = _burst(state, START + HOUR, "b")  # the wall clock jumps 1 h ahead...
    back = START + 1_000_000  # ...and is corrected: normal time again
    decision, state = admit(SPECS, state, back, Costs(tokens=1), "c")
    assert not decision.allowed
    wait = decision.retry_after_us
    assert 0 < wait <= 10_000_000  # one request per 10 s
    assert not admit(SPECS, state, back + wait - 1, Costs(tokens=1), "c")[0].allowed
    decision, state = admit(SPECS, state, back + wait, Costs(tokens=1), "c")
    assert decision.allowed  # not an hour later
    # and then exactly the rate: one more every 10 s of normal time
    t = back + wait
    for k in range(1, 7):
        assert not admit(SPECS, state, t + k * 10_000_000 - 1, Costs(tokens=1), f"d{k}")[0].allowed
        decision, state = admit(SPECS, state, t + k * 10_000_000, Costs(tokens=1), f"d{k}")
        assert decision.allowed


def test_a_user_denied_on_every_call_is_not_frozen_either() -> None:
    state, _ = _burst(LimitState(), START + HOUR, "a")
    now = START
    for _ in range(50):  # only denials: each one returns the rebased state
        decision, state = admit(SPECS, state, now, Costs(tokens=1), "x")
        if decision.allowed:
            break
        now += decision.retry_after_us
    assert decision.allowed and now - START <= 11_000_000


def test_a_small_step_back_still_stands_still() -> None:
    _, state = admit(SPECS, LimitState(), START, Costs(tokens=1), "a")
    _, same = admit(SPECS, state, START - MAX_CLOCK_LEAD_US, Costs(tokens=1), "b")
    assert same.skew_us == 0 and same.clock_us == START


def test_a_step_back_over_midnight_gives_no_fresh_day_quota() -> None:
    specs = LimitSpecs(tokens_per_day=100, lease_ttl_us=HOUR)
    midnight = (START // 86_400_000_000 + 1) * 86_400_000_000
    decision, state = admit(specs, LimitState(), midnight + 1, Costs(tokens=100), "a")
    state = commit(specs, state, midnight + 2, "a", 100, 100)
    decision, state = admit(specs, state, midnight - HOUR, Costs(tokens=1), "b")
    assert not decision.allowed and today_of(state) == midnight // 86_400_000_000


@settings(max_examples=150, deadline=None)
@given(
    limit_specs(),
    st.lists(st.tuples(st.booleans(), st.integers(0, 600)), min_size=1, max_size=20),
    st.integers(MAX_CLOCK_LEAD_US + 20_000 + 1, 10 * HOUR),
)
def test_after_any_step_back_retry_after_is_exact(
    specs: LimitSpecs, ops: list[tuple[bool, int]], step: int
) -> None:
    """Ops at a clock ``step`` ahead and at normal time, mixed: every denial
    passes at now + Retry-After and not 1 us earlier.  (Within a step back
    of at most MAX_CLOCK_LEAD_US the clock stands still, and a Retry-After
    can be late by up to that step: hence steps beyond it.)"""
    state, ids = LimitState(), []
    for i, (ahead, tokens) in enumerate(ops):
        now = START + 1_000 * i + (step if ahead else 0)
        decision, new = admit(specs, state, now, Costs(tokens=tokens), f"r{i}")
        if decision.allowed:
            ids.append(f"r{i}")
        elif decision.reason is not DenyReason.TOO_LARGE:
            at = now + decision.retry_after_us
            assert admit(specs, new, at, Costs(tokens=tokens), f"r{i}")[0].allowed
            assert not admit(specs, new, at - 1, Costs(tokens=tokens), f"r{i}")[0].allowed
        state = new
