"""The "Used" figure of a 429 (issue 16, item 7; defined in docs/rate-limiting.md):
the admitted cost the limit has not yet refilled, rounded up to whole units."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.config import LimitsConfig
from sansio_gateway.limits import Costs, MemoryLimitStore, build_specs, denial_error

START = 1_800_000_000 * 1_000_000


@given(rpm=st.integers(6, 600), spacing_us=st.integers(0, 999_999))
def test_after_a_burst_used_counts_every_request_of_it(rpm: int, spacing_us: int) -> None:
    """Requests closer together than one unit's refill time: each counts whole."""
    specs = build_specs(LimitsConfig(requests_per_minute=rpm), "u", "m")
    store = MemoryLimitStore()
    unit_us = 60_000_000 // rpm
    spacing = spacing_us % unit_us // (2 * rpm // 6 + 2)  # the whole burst within one unit
    now, admitted = START, 0
    while True:
        decision = store.admit("u", specs, now, Costs(tokens=1), f"r{admitted}")
        if not decision.allowed:
            break
        admitted += 1
        now += spacing
    assert 1 <= admitted <= rpm // 6 + 1
    assert decision.used == admitted
    message = denial_error(decision, model="m", organization="gateway").message
    assert f"Limit {rpm}, Used {admitted}, Requested 1." in message


def test_used_falls_as_the_limit_refills() -> None:
    specs = build_specs(LimitsConfig(requests_per_minute=12), "u", "m")  # one per 5 s, burst 2
    store = MemoryLimitStore()
    assert store.admit("u", specs, START, Costs(tokens=1), "a").allowed
    assert store.admit("u", specs, START, Costs(tokens=1), "b").allowed
    assert store.admit("u", specs, START + 1, Costs(tokens=1), "c").used == 2
    # 5 s later one request has refilled: it passes, and then 2 are unrefilled again
    assert store.admit("u", specs, START + 5_000_000, Costs(tokens=1), "d").allowed
    assert store.admit("u", specs, START + 5_000_001, Costs(tokens=1), "e").used == 2
    # 1 s later still: 1.8 units unrefilled -> Used 2 (rounded up), never 1
    assert store.admit("u", specs, START + 6_000_000, Costs(tokens=1), "f").used == 2
