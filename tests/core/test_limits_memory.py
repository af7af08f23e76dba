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


def _committed(store: MemoryLimitStore, specs: LimitSpecs, user: str, rid: str, now: int) -> None:
    decision = store.admit(user, specs, now, Costs(tokens=10), rid)
    assert decision.allowed
    store.commit(user, specs, now, rid, 10, 10)


def test_committed_ids_stay_within_the_store_budget_however_many_users_commit() -> None:
    """Issue 13 item 4: bounded in bytes whatever the run length, not only
    per user (16 bytes x rate x lease lifetime before)."""
    from sansio_gateway.config import LimitsConfig
    from sansio_gateway.limits import build_specs
    from sansio_gateway.limits.done_ids import FRESH

    budget_ids = 3_000
    store = MemoryLimitStore(max_done_bytes=16 * budget_ids, min_sweep_size=10**9)
    users = [f"u{i}" for i in range(12)]
    specs = {
        u: build_specs(LimitsConfig(requests_per_minute=10**9), u, "m", lease_ttl_us=3_600 * 10**6)
        for u in users
    }
    now = START
    most = 0
    for n in range(24_000):  # 2,000 commits a user, all within one lease lifetime
        user = users[n % len(users)]
        now += 1_000
        _committed(store, specs[user], user, f"{user}-{n}", now)
        held = sum(len(store.state(u).done) for u in users)
        assert store.done_ids == held  # the running total is exact
        most = max(most, held)
    # Each state keeps at least its unfrozen newest ids (FRESH), which a trim
    # never drops; beyond those, the budget holds.
    assert most <= budget_ids + FRESH * len(users)
    assert store.done_ids <= budget_ids + FRESH * len(users)
    # ... and a bigger budget keeps them all.
    roomy = MemoryLimitStore(min_sweep_size=10**9)
    for n in range(24_000):
        user = users[n % len(users)]
        _committed(roomy, specs[user], user, f"{user}-{n}", START + 1_000 * (n + 1))
    assert roomy.done_ids == 24_000


def test_a_repeat_of_an_id_trimmed_for_the_budget_charges_nothing_but_its_surcharge() -> None:
    """The budget's guarantee is the per-user bound's (limits/done_ids.py):
    a repeated commit the store no longer recognises counts as a commit whose
    lease expired -- no refund, no day counter, no lease; only a surcharge."""
    from sansio_gateway.config import LimitsConfig
    from sansio_gateway.limits import build_specs

    store = MemoryLimitStore(max_done_bytes=16 * 1_000, min_sweep_size=10**9)
    specs = build_specs(
        LimitsConfig(tokens_per_minute=10**9, tokens_per_day=10**12),
        "alice",
        "m",
        lease_ttl_us=3_600 * 10**6,
    )
    now = START + 60 * 10**6
    for n in range(5_000):
        now += 1_000
        _committed(store, specs, "alice", f"r{n}", now)
    state = store.state("alice")
    assert "r0" not in state.done and "r4999" in state.done  # the oldest went first
    now += 1_000
    store.commit("alice", specs, now, "r0", 10, 10)  # a repeat, no overage
    after = store.state("alice")
    assert (after.tats, after.day_used, after.inflight) == (
        state.tats,
        state.day_used,
        state.inflight,
    )
    store.commit("alice", specs, now, "r1", 10, 500)  # a repeat with overage
    charged = store.state("alice")
    assert charged.day_used == state.day_used and not charged.inflight
    assert any(charged.tats[k] > after.tats.get(k, 0) for k in charged.tats)
