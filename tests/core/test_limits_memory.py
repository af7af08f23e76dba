"""The memory store as a state machine: many users, invariants after every step."""

from __future__ import annotations

import copy
from dataclasses import replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from sansio_gateway.limits import (
    DAY_US,
    Costs,
    LimitSpecs,
    LimitState,
    MemoryLimitStore,
    Unit,
    is_idle,
)
from sansio_gateway.limits.core import today_of
from tests.core.test_limits_properties import START, limit_specs

USERS = ("alice", "bob", "carol")


class MemoryStoreMachine(RuleBasedStateMachine):
    """Admits and commits for several users, the clock mostly moving forward.

    Invariants: the day quota (reserved + committed <= quota, with actual <=
    estimate), the window bound per rate limit, values under 2**53, states
    never mutated once handed out, and idle states swept away.
    """

    admitted = Bundle("admitted")

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryLimitStore(
            min_sweep_size=2, sweep_interval_us=30_000_000, idle_grace_us=5_000_000
        )
        self.now = START
        self.specs = LimitSpecs()
        self.n = 0
        self.history: dict[str, list[tuple[int, int, int, str]]] = {u: [] for u in USERS}
        self.final: dict[str, int] = {}
        self.snapshots: list[tuple[LimitState, LimitState]] = []

    @initialize(specs=limit_specs())
    def setup(self, specs: LimitSpecs) -> None:
        self.specs = specs

    @rule(dt=st.integers(0, 30_000_000) | st.integers(-2_000_000, 0))
    def tick(self, dt: int) -> None:
        self.now = max(0, self.now + dt)

    @rule(target=admitted, user=st.sampled_from(USERS), tokens=st.integers(0, 500))
    def admit(self, user: str, tokens: int) -> tuple[str, str, int]:
        self.n += 1
        rid = f"r{self.n}"
        before = self.store.state(user)
        self.snapshots.append((before, copy.deepcopy(before)))
        decision = self.store.admit(user, self.specs, self.now, Costs(tokens=tokens), rid)
        if decision.allowed:
            self.history[user].append((decision.now_us, 1, tokens, rid))
            self.final[rid] = tokens
        else:
            # Denials are free: the state is unchanged -- or, if this call's
            # periodic sweep dropped it as idle, equivalent to a fresh one.
            after = self.store.state(user)
            swept = after == LimitState() and is_idle(before, self.now - 5_000_000)
            rebased = after == replace(before, skew_us=after.skew_us)  # a clock step back
            assert after == before or swept or rebased
        return user, rid, tokens

    @rule(entry=admitted, percent=st.integers(0, 100))
    def commit(self, entry: tuple[str, str, int], percent: int) -> None:
        user, rid, tokens = entry
        state = self.store.state(user)
        lease = state.inflight.get(rid)
        now = max(self.now, state.clock_us)
        refundable = lease is not None and lease.expiry_us > now and rid not in state.done
        actual = tokens * percent // 100
        self.store.commit(user, self.specs, self.now, rid, tokens, actual)
        if refundable:
            self.final[rid] = actual

    @rule()
    def sweep(self) -> None:
        held = {u: self.store.state(u) for u in USERS}
        self.store.sweep(self.now)
        for user, state in held.items():
            if self.store.state(user) is not state:  # dropped: it was idle
                assert is_idle(state, self.now - 5_000_000)

    @invariant()
    def day_quota(self) -> None:
        quota = self.specs.tokens_per_day
        if quota is None:
            return
        for user in USERS:
            s = self.store.state(user)
            today = today_of(s)
            used = s.day_used if s.day == today else 0
            pending = sum(
                lease.tokens
                for lease in s.inflight.values()
                if lease.day == today and lease.expiry_us > s.clock_us
            )
            assert used + pending <= quota

    @invariant()
    def window_bound(self) -> None:
        for user in USERS:
            charges = sorted(self.history[user])
            for rate in self.specs.rates:
                for i, (t0, *_rest) in enumerate(charges):
                    total = 0
                    for t1, requests, _tokens, rid in charges[i:]:
                        total += requests if rate.unit is Unit.REQUESTS else self.final[rid]
                        assert total * rate.period_us <= (t1 - t0 + rate.burst_us) * rate.limit

    @invariant()
    def bounded_values_and_immutable_states(self) -> None:
        for user in USERS:
            s = self.store.state(user)
            assert all(0 <= v < 2**53 for v in s.tats.values())
            assert all(lease.expiry_us < 2**53 for lease in s.inflight.values())
        for held, snapshot in self.snapshots[-5:]:
            assert held == snapshot


MemoryStoreMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestMemoryStore = MemoryStoreMachine.TestCase


def test_idle_states_are_dropped_after_the_grace() -> None:
    store = MemoryLimitStore(min_sweep_size=1, sweep_interval_us=1, idle_grace_us=1_000)
    specs = LimitSpecs(concurrent_requests=1, lease_ttl_us=10)
    assert store.admit("a", specs, START, Costs(tokens=1), "r").allowed
    assert len(store) == 1
    store.sweep(START + 500)  # lease expired at +10, but not idle for the grace yet
    assert len(store) == 1
    assert store.sweep(START + 2_000) == 1 and len(store) == 0
    assert store.state("a") == LimitState()


def test_a_state_with_todays_usage_is_kept_until_the_day_ends() -> None:
    store = MemoryLimitStore(idle_grace_us=0)
    specs = LimitSpecs(tokens_per_day=100, lease_ttl_us=10)
    store.admit("a", specs, START, Costs(tokens=30), "r")
    store.commit("a", specs, START + 1, "r", 30, 30)
    assert store.sweep(START + 1_000) == 0
    day_end = (START // DAY_US + 1) * DAY_US
    assert store.sweep(day_end) == 1


def test_sweeps_keep_memory_bounded() -> None:
    store = MemoryLimitStore(min_sweep_size=64, idle_grace_us=0)
    specs = LimitSpecs(concurrent_requests=1, lease_ttl_us=1)
    for i in range(10_000):
        store.admit(f"user{i}", specs, START + 10 * i, Costs(tokens=1), "r")
    assert len(store) <= 128
    assert store.peek("user9999", specs, START + 10 * 9999).requests is None


# ---- the idle sweep stays cheap (issue 17, item 6) ---------------------------


def test_is_idle_reads_the_newest_expiry_not_every_committed_id(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sansio_gateway.limits import commit
    from sansio_gateway.limits.done_ids import DoneIds

    specs = LimitSpecs(lease_ttl_us=1_000)
    state = LimitState()
    for i in range(3_000):
        state = commit(specs, state, START + i, f"r{i}", 0, 0)
    assert not is_idle(state, START + 3_000)

    def iterated(self: DoneIds, *args: object) -> None:
        raise AssertionError("is_idle read the committed ids one by one")

    for name in ("__iter__", "__getitem__", "_lookup", "get"):
        monkeypatch.setattr(DoneIds, name, iterated, raising=False)
    assert not is_idle(state, START + 3_000)
    assert is_idle(state, START + 3_000 + 1_000)


def test_one_operation_examines_a_bounded_number_of_states(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sansio_gateway.limits import memory

    store = MemoryLimitStore(min_sweep_size=64, idle_grace_us=0, sweep_batch=32)
    specs = LimitSpecs(concurrent_requests=1, lease_ttl_us=1)
    examined: list[int] = []
    real = memory.is_idle

    def counting(state: LimitState, now: int) -> bool:
        examined[-1] += 1
        return real(state, now)

    monkeypatch.setattr(memory, "is_idle", counting)
    for i in range(5_000):
        examined.append(0)
        store.admit(f"user{i}", specs, START + 10 * i, Costs(tokens=1), "r")
    assert max(examined) <= 32
    assert len(store) <= 256  # still bounded: the sweep keeps up with the growth
