"""DoneIds: committed ids, immutable, cheap to extend, bounded in bytes (issue 13, item 4)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.limits import Costs, LimitSpecs, LimitState, admit, commit
from sansio_gateway.limits.done_ids import FANOUT, FRESH, MAX_IDS, DoneIds, add_done
from sansio_gateway.limits.specs import MINUTE_US
from tests.core.test_limits_properties import START

SEGMENT = FRESH * FANOUT


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 3), st.integers(1, 2_000)),
        max_size=3 * SEGMENT // 4,
    )
)
def test_behaves_as_a_dict_of_id_to_expiry(ops: list[tuple[int, int, int]]) -> None:
    """Within the bound, a lookup says "committed" exactly when a dict of
    id -> expiry (the structure it replaces) does."""
    done, reference, now = DoneIds(), {}, 0
    for rid, dt, ttl in ops:
        now += dt
        if reference.get(rid, 0) <= now:  # commit adds an id only when not done
            done = add_done(done, f"r{rid}", now, now + ttl)
            reference[rid] = now + ttl
        for probe in (rid, rid + 1, rid // 2):
            assert (done.get(f"r{probe}") > now) == (reference.get(probe, 0) > now)


def test_adding_never_mutates_an_earlier_value() -> None:
    values = [DoneIds()]
    for i in range(2 * SEGMENT + 5):
        values.append(add_done(values[-1], f"r{i}", now=i, expiry=10**9))
    for i in (0, 1, FRESH - 1, FRESH, SEGMENT, SEGMENT + 1, 2 * SEGMENT + 4):
        assert f"r{i}" not in values[i] and f"r{i}" in values[i + 1]
        assert len(values[i]) == i


def test_wholly_expired_segments_are_dropped() -> None:
    done = DoneIds()
    for i in range(20 * SEGMENT):
        done = add_done(done, f"r{i}", now=i, expiry=i + SEGMENT)  # each lives SEGMENT ticks
    assert len(done) <= 3 * SEGMENT  # bounded by the live ids, not by all ever committed
    assert "r0" not in done and f"r{20 * SEGMENT - 1}" in done


def test_bounded_in_bytes_whatever_the_run_length() -> None:
    """Ids that never expire (a run shorter than the lease lifetime, at any
    rate): the count and the bytes stay under the bound, and the newest
    ``max_ids - SEGMENT`` ids are all still recognised."""
    done = DoneIds()
    n = MAX_IDS + 3 * SEGMENT + 17
    for i in range(n):
        done = add_done(done, f"request-{i:08d}-" + "x" * 200, now=i, expiry=10**15)
        assert len(done) <= MAX_IDS
    assert done.nbytes() <= 16 * MAX_IDS  # 1 MiB a user, however long the ids
    assert all(f"request-{i:08d}-" + "x" * 200 in done for i in range(n - (MAX_IDS - SEGMENT), n))
    assert "request-00000000-" + "x" * 200 not in done


def test_is_idle_reads_newest_in_constant_time() -> None:
    done = DoneIds()
    for i in range(3 * SEGMENT):
        done = add_done(done, f"r{i}", now=i, expiry=i + 10**6)
    assert done.newest == 3 * SEGMENT - 1 + 10**6


# ---- commit idempotence through the core, within the guarantee ------------------------


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 50),
    st.integers(0, 599),
    st.integers(0, 1_000),
    st.integers(0, 1_000),
)
def test_commit_idempotence_holds_within_the_guarantee(
    first: int, newer: int, estimate: int, again: int
) -> None:
    """A repeated commit is a no-op -- whatever its arguments -- while fewer
    than ``max_ids - FRESH * FANOUT`` newer ids of the user were committed
    (here a bound of SEGMENT + 600, so eviction happens), within the lease
    lifetime.  Past the guarantee the repeat is charged like a commit whose
    lease expired: never a refund, never the day counter."""
    guarantee = 600
    specs = LimitSpecs(lease_ttl_us=10 * MINUTE_US, tokens_per_day=10**9)
    state = LimitState(done=DoneIds(max_ids=SEGMENT + guarantee))
    rids = [f"r{i}" for i in range(first + 1 + newer + SEGMENT)]
    now = START
    for i, rid in enumerate(rids):
        now += 10
        _, state = admit(specs, state, now, Costs(tokens=estimate), rid)
        state = commit(specs, state, now, rid, estimate, estimate // 2)
        if i == first + newer:
            repeat = commit(specs, state, now + 1, rids[first], estimate, again)
            assert repeat is state  # newer < guarantee: a no-op
    late = commit(specs, state, now + 1, rids[0], estimate, again)
    assert late.day_used == state.day_used and late.inflight == state.inflight
    assert all(late.tats.get(k, 0) >= t for k, t in state.tats.items())
