"""The Redis limit store across an outage: warm-up, queued commits, replay.

Real redis-servers on free ports.  Redis here keeps an append-only file, so
a killed and restarted server comes back with the leases and day counters
it had: exactly the state a commit made during the outage must settle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
import redis
from sansio_gateway.adapters.limit_stores import (
    LimitStoreNotReady,
    RedisLimitStore,
    ResilientLimitStore,
)

from sansio_gateway.config import LimitsConfig
from sansio_gateway.limits import Breaker, Costs, DenyReason, Fallback, build_specs
from tests.redis_servers import free_port, redis_server

PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


async def poll(check: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``check`` (never a blind wait for the condition)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def _day_used(port: int, user: str) -> int:
    with redis.Redis(port=port) as r:
        return int(r.hget(f"rl:v1:{{u:{user}}}:g", "du") or 0)


def _leases(port: int, user: str) -> int:
    with redis.Redis(port=port) as r:
        return int(r.hlen(f"rl:v1:{{u:{user}}}:inflight"))


def test_commits_made_during_an_outage_are_replayed_when_redis_returns() -> None:
    """Issue 17 item 8: a lease from before the outage is released and the
    tokens used reach day_used; concurrent_requests works again within 2 s
    of Redis coming back (before, the commit was dropped: the lease stayed
    for its ~31-minute TTL and every request got 429 concurrency)."""
    specs = build_specs(LimitsConfig(concurrent_requests=1, tokens_per_day=10_000), "outage", "m")
    with redis_server(extra=PERSISTENT, port=free_port()) as server:

        async def scenario() -> float:
            store = ResilientLimitStore(
                RedisLimitStore.from_url(server.url),
                policy="local",
                breaker=Breaker(failure_threshold=1, cooldown_us=100_000),
            )
            runner = asyncio.get_running_loop().create_task(store.run())
            try:
                await poll(lambda: store.ready)
                first = await store.admit("outage", specs, Costs(tokens=500), "before")
                assert first.allowed and first.fallback is None
                assert _leases(server.port, "outage") == 1

                server.kill()
                await store.commit("outage", specs, "before", 500, 120)  # used 120 tokens
                assert store.pending_commits == 1 and store.commits_dropped == 0
                assert store.fallback_mode == "local"

                server.start()  # same port, the append-only file reloaded
                back = time.monotonic()
                await poll(lambda: store.pending_commits == 0)
                assert store.commits_replayed == 1
                while True:
                    d = await store.admit(
                        "outage", specs, Costs(tokens=10), f"after{time.monotonic()}"
                    )
                    if d.fallback is None:
                        break
                    await store.commit("outage", specs, "x", 0, 0)
                    await asyncio.sleep(0.01)
                took = time.monotonic() - back
                assert d.allowed, d  # the old lease is gone: one slot free again
                assert d.reason is not DenyReason.CONCURRENCY
                return took
            finally:
                runner.cancel()
                await store.aclose()

        took = asyncio.run(scenario())
        assert took < 2.0, took
        assert _day_used(server.port, "outage") == 120


def test_the_queue_of_pending_commits_is_bounded_and_counts_what_it_drops() -> None:
    specs = build_specs(LimitsConfig(concurrent_requests=5), "q", "m")

    async def scenario() -> ResilientLimitStore:
        dead = RedisLimitStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
        store = ResilientLimitStore(dead, policy="open", max_pending_commits=3)
        assert not await store.warm()
        for i in range(5):
            await store.commit("q", specs, f"r{i}", 10, 5)
        await store.aclose()
        return store

    store = asyncio.run(scenario())
    assert store.pending_commits == 3 and store.commits_dropped == 2
    assert list(store._pending) == ["r2", "r3", "r4"]  # the oldest go first


def test_a_store_that_is_not_warm_is_not_ready_and_says_why() -> None:
    async def scenario() -> None:
        port = free_port()
        store = ResilientLimitStore(
            RedisLimitStore.from_url(f"redis://127.0.0.1:{port}/0"), policy="closed"
        )
        assert not store.ready and store.not_ready_reason == "not yet connected"
        d = await store.admit("u", build_specs(LimitsConfig(requests_per_minute=6), "u", "m"),
                              Costs(tokens=1), "a")  # fmt: skip
        assert not d.allowed and d.fallback is Fallback.CLOSED
        assert store.breaker.failures == 0  # never tried: nothing to count
        assert not await store.warm()
        assert "redis unreachable" in (store.not_ready_reason or "")
        with redis_server(port=port):
            assert await store.warm() and store.ready and store.not_ready_reason is None
        await store.aclose()

    asyncio.run(scenario())


def test_a_connection_that_cannot_be_opened_is_not_a_failed_decision() -> None:
    """A connect-phase error marks the store not ready; the breaker is untouched."""

    async def scenario() -> None:
        with redis_server() as server:
            primary = RedisLimitStore.from_url(server.url, pool_size=2)
            store = ResilientLimitStore(primary, policy="local")
            assert await store.warm()
            server.kill()
            specs = build_specs(LimitsConfig(requests_per_minute=60), "c", "m")
            for i in range(5):
                d = await store.admit("c", specs, Costs(tokens=1), f"r{i}")
                assert d.fallback is Fallback.LOCAL
            assert store.breaker.failures <= 1  # at most the stale connection's send
            assert not store.ready and store.connect_errors >= 1
            with pytest.raises(LimitStoreNotReady):
                await primary.warm()
            await store.aclose()

    asyncio.run(scenario())


def _connections_received(port: int) -> int:
    with redis.Redis(port=port) as r:
        return int(r.info("stats")["total_connections_received"])


@pytest.mark.parametrize("burst", [30, 512])
def test_a_burst_of_concurrent_admits_does_not_open_a_connection_each(burst: int) -> None:
    """Issue 11: 30-500 concurrent admits on one process wait for one of
    ``pool_size`` (16) connections instead of opening one each (before: one
    connection per concurrent admit)."""
    specs = build_specs(LimitsConfig(requests_per_minute=10**6), "b", "m")
    with redis_server() as server:

        async def scenario() -> tuple[int, int]:
            # The wait for a pooled connection is not what is measured here:
            # a slow machine may take longer than the default 0.5 s to serve
            # 512 admits through 16 connections.
            store = RedisLimitStore.from_url(server.url, connect_timeout=60.0)
            await store.admit("b", specs, Costs(tokens=1), "first")
            before = _connections_received(server.port)
            trips = store.round_trips
            decisions = await asyncio.gather(
                *(store.admit("b", specs, Costs(tokens=1), f"r{i}") for i in range(burst))
            )
            assert all(d.allowed for d in decisions)
            opened = _connections_received(server.port) - before
            await store.aclose()
            return opened, store.round_trips - trips

        opened, trips = asyncio.run(scenario())
        assert opened <= 16, opened
        assert trips == burst  # one round trip per admit


def test_a_busy_pool_is_not_a_store_failure() -> None:
    """Every pooled connection held (here: one, by a call a paused Redis
    answers late) past connect_timeout: that caller gets the policy, and neither
    the breaker nor readiness changes."""
    specs = build_specs(LimitsConfig(requests_per_minute=10**6), "busy", "m")
    with redis_server() as server:

        async def scenario() -> ResilientLimitStore:
            primary = RedisLimitStore.from_url(server.url, pool_size=1)
            store = ResilientLimitStore(
                primary, policy="open", decision_timeout=2.0, connect_timeout=0.05
            )
            assert await store.warm()
            server.pause()  # the holder's round trip waits (within decision_timeout)
            holder = asyncio.ensure_future(store.admit("busy", specs, Costs(tokens=1), "holder"))
            await poll(lambda: primary._pool_gate().locked())
            waiter = await store.admit("busy", specs, Costs(tokens=1), "waiter")
            assert waiter.fallback is Fallback.OPEN
            server.resume()
            assert (await holder).fallback is None  # Redis answered, just late
            await store.aclose()
            return store

        store = asyncio.run(scenario())
        assert store.store_busy == 1 and store.store_errors == 0
        assert store.breaker.failures == 0 and store.ready
