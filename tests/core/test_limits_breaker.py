"""The store circuit breaker: every (state, event) pair, and a random walk."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.limits import Breaker, BreakerState, attempt, failed, succeeded
from sansio_gateway.limits.breaker import _TRANSITIONS, BreakerEvent, step

T0 = 1_000_000_000


def test_every_state_event_pair_has_a_transition() -> None:
    assert set(_TRANSITIONS) == {(s, e) for s in BreakerState for e in BreakerEvent}


def test_opens_after_threshold_failures_and_refuses_calls() -> None:
    b = Breaker(failure_threshold=3, cooldown_us=1_000)
    for _ in range(2):
        b = failed(b, T0)
        assert b.state is BreakerState.CLOSED
        assert attempt(b, T0)[0]
    b = failed(b, T0)
    assert b.state is BreakerState.OPEN
    permit, b = attempt(b, T0 + 999)
    assert not permit and b.state is BreakerState.OPEN


def test_success_resets_the_failure_count() -> None:
    b = failed(failed(Breaker(failure_threshold=3), T0), T0)
    b = succeeded(b, T0)
    assert b.failures == 0
    b = failed(failed(b, T0), T0)
    assert b.state is BreakerState.CLOSED


def test_half_open_probe_closes_or_reopens() -> None:
    b = failed(Breaker(failure_threshold=1, cooldown_us=1_000), T0)
    permit, b = attempt(b, T0 + 1_000)
    assert permit and b.state is BreakerState.HALF_OPEN
    # Only the probe goes through while it is outstanding.
    assert not attempt(b, T0 + 1_001)[0]
    assert succeeded(b, T0 + 1_002).state is BreakerState.CLOSED
    reopened = failed(b, T0 + 1_002)
    assert reopened.state is BreakerState.OPEN and reopened.since_us == T0 + 1_002
    assert not attempt(reopened, T0 + 1_500)[0]


def test_a_lost_probe_is_replaced_after_a_cooldown() -> None:
    b = failed(Breaker(failure_threshold=1, cooldown_us=1_000), T0)
    _, b = attempt(b, T0 + 1_000)  # the probe's caller is cancelled: no report
    permit, b = attempt(b, T0 + 2_000)
    assert permit and b.state is BreakerState.HALF_OPEN and b.since_us == T0 + 2_000


def test_late_results_while_open() -> None:
    b = failed(Breaker(failure_threshold=1), T0)
    assert failed(b, T0 + 5).state is BreakerState.OPEN
    assert failed(b, T0 + 5).since_us == T0  # a late failure does not extend the cooldown
    assert succeeded(b, T0 + 5).state is BreakerState.CLOSED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(BreakerEvent)), st.integers(0, 3_000)), max_size=50))
def test_random_walk_never_lets_calls_through_while_cooling_down(
    events: list[tuple[BreakerEvent, int]],
) -> None:
    b, now = Breaker(failure_threshold=2, cooldown_us=1_000), T0
    for event, dt in events:
        now += dt
        before = b
        permit, b = step(b, event, now)
        if event is BreakerEvent.ATTEMPT:
            if before.state is BreakerState.CLOSED:
                assert permit
            elif now - before.since_us < before.cooldown_us:
                assert not permit and b == before
            else:
                assert permit and b.state is BreakerState.HALF_OPEN
        if event is BreakerEvent.SUCCEEDED:
            assert b.state is BreakerState.CLOSED and b.failures == 0


# ---- readiness: connect-phase errors are not decision failures ---------------------

from sansio_gateway.limits.breaker import (  # noqa: E402
    Phase,
    StoreHealth,
    call_failed,
    call_succeeded,
    counts_as_decision_failure,
    may_call,
    warmed,
)

_health_events = st.lists(
    st.tuples(st.sampled_from(["call", "ok", "connect_fail", "decision_fail", "warmed"]),
              st.integers(0, 3_000_000)),
    max_size=60,
)  # fmt: skip


@settings(max_examples=300)
@given(_health_events)
def test_a_connect_timeout_is_never_counted_as_a_decision_failure(
    events: list[tuple[str, int]],
) -> None:
    """Replay the same events with every CONNECT failure removed: the breaker
    ends identical, so connection setup, slot refreshes and pool growth can
    never open it nor count towards opening it."""
    with_connect = StoreHealth(ready=True, reason=None)
    without = StoreHealth(ready=True, reason=None)
    now = T0
    for kind, dt in events:
        now += dt
        if kind == "connect_fail":
            before = with_connect.breaker
            with_connect = call_failed(with_connect, Phase.CONNECT, now, "connect timed out")
            assert with_connect.breaker == before and not with_connect.ready
            continue
        for name in ("with", "without"):
            h = with_connect if name == "with" else without
            if kind == "call":
                _, h = may_call(replace(h, ready=True), now)
            elif kind == "ok":
                h = call_succeeded(h, now)
            elif kind == "decision_fail":
                h = call_failed(h, Phase.DECISION, now, "timed out")
            else:
                h = warmed(h, now)
            if name == "with":
                with_connect = h
            else:
                without = h
    assert with_connect.breaker == without.breaker
    assert not counts_as_decision_failure(Phase.CONNECT)
    assert counts_as_decision_failure(Phase.DECISION)


def test_a_store_not_warmed_is_never_called_and_warming_readies_it() -> None:
    cold = StoreHealth()
    assert not cold.ready and cold.reason == "not yet connected" and not cold.serving
    assert may_call(cold, T0) == (False, cold)
    hot = warmed(cold, T0)
    assert hot.ready and hot.reason is None and hot.serving
    assert may_call(hot, T0)[0]
    lost = call_failed(hot, Phase.CONNECT, T0, "connection refused")
    assert not lost.ready and lost.reason == "connection refused"
    assert not may_call(lost, T0)[0]
    # decision failures open the breaker as before; warming closes it
    tripped = hot
    for _ in range(3):
        tripped = call_failed(tripped, Phase.DECISION, T0, "timeout")
    assert tripped.breaker.state is BreakerState.OPEN and not tripped.serving
    assert warmed(tripped, T0).serving
