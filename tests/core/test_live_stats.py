"""LiveStats: bounded per-minute counts, per-backend samples and per-user totals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.local.live_stats import LiveStats, percentile

T0 = 1_764_000_000.0  # a whole minute


def _observe(
    stats: LiveStats,
    now: float,
    *,
    user: str = "alice",
    model: str = "llama3.2:1b",
    backend: str = "local",
    status: int = 200,
    tokens: int = 10,
    latency: float = 0.1,
) -> None:
    stats.observe(
        now=now,
        user=user,
        model=model,
        backend=backend,
        status=status,
        tokens=tokens,
        latency=latency,
    )


def test_counts_land_in_their_minute_and_every_minute_of_the_window_is_present() -> None:
    stats = LiveStats(window=5)
    _observe(stats, T0 + 1)
    _observe(stats, T0 + 59, status=503, tokens=0)
    _observe(stats, T0 + 61, status=429, tokens=0)
    snap = stats.snapshot(T0 + 62)
    assert [m.minute * 60 for m in snap.minutes] == [T0 + 60 * k for k in range(-3, 2)]
    first, second = snap.minutes[-2], snap.minutes[-1]
    assert (first.requests, first.tokens, first.errors, first.limited) == (2, 10, 1, 0)
    assert (second.requests, second.tokens, second.errors, second.limited) == (1, 0, 0, 1)
    assert all(m.requests == 0 for m in snap.minutes[:-2])


def test_minutes_older_than_the_window_are_forgotten() -> None:
    stats = LiveStats(window=3)
    _observe(stats, T0)
    _observe(stats, T0 + 10 * 60)
    assert sum(m.requests for m in stats.snapshot(T0 + 10 * 60).minutes) == 1
    assert len(stats._minutes) == 1  # the old bucket was dropped, not just hidden


def test_backend_error_rate_and_latency_percentiles_over_recent_samples() -> None:
    stats = LiveStats(window=5, samples=100)
    for i in range(100):
        _observe(stats, T0 + i * 0.1, latency=(i + 1) / 1000, status=502 if i < 5 else 200)
    _observe(stats, T0 + 11, backend="", status=401)  # reached no backend
    backend = stats.snapshot(T0 + 12).backends["local"]
    assert (backend.requests, backend.errors) == (100, 5)
    assert backend.latency_p50 == pytest.approx(0.050)
    assert backend.latency_p99 == pytest.approx(0.099)
    assert set(stats.snapshot(T0 + 12).backends) == {"local"}


def test_backend_samples_are_bounded_and_age_out_of_the_window() -> None:
    stats = LiveStats(window=2, samples=3)
    for i in range(10):
        _observe(stats, T0 + i, latency=float(i))
    assert stats.snapshot(T0 + 10).backends["local"].requests == 3
    old = stats.snapshot(T0 + 5 * 60).backends["local"]
    assert (old.requests, old.latency_p50, old.latency_p99) == (0, None, None)


def test_users_count_requests_tokens_and_429s() -> None:
    stats = LiveStats()
    _observe(stats, T0, user="alice", tokens=5)
    _observe(stats, T0 + 1, user="alice", status=429, tokens=0)
    _observe(stats, T0 + 2, user="bob", tokens=7)
    users = stats.snapshot(T0 + 3).users
    assert (users["alice"].requests, users["alice"].tokens, users["alice"].limited) == (2, 5, 1)
    assert users["alice"].last_seen == T0 + 1
    assert (users["bob"].requests, users["bob"].limited) == (1, 0)
    assert stats.users() == ("bob", "alice")  # most recently seen first


def test_users_are_bounded_forgetting_the_least_recently_seen() -> None:
    stats = LiveStats(max_users=2)
    _observe(stats, T0, user="a")
    _observe(stats, T0 + 1, user="b")
    _observe(stats, T0 + 2, user="a")
    _observe(stats, T0 + 3, user="c")
    assert set(stats.snapshot(T0 + 4).users) == {"a", "c"}


def test_requests_without_a_model_are_not_counted() -> None:
    stats = LiveStats()
    _observe(stats, T0, model="-", backend="", user="anonymous")  # /ui, /health, a 401
    snap = stats.snapshot(T0)
    assert sum(m.requests for m in snap.minutes) == 0
    assert snap.users == {} and snap.backends == {}


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LiveStats(window=0)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1), st.floats(0.01, 1.0))
def test_percentile_is_one_of_the_values_with_enough_at_or_below(
    values: list[float], fraction: float
) -> None:
    p = percentile(values, fraction)
    assert p in values
    assert sum(v <= p for v in values) >= fraction * len(values)
    assert sum(v < p for v in values) < fraction * len(values)


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 0.5) is None
