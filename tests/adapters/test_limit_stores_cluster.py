"""The Redis limit store on a three-primary Redis Cluster started by these tests.

Every key of a user shares the hash tag ``{u:<user>}``, so each script call
touches one slot; the users here are chosen to land on all three nodes.
The differential test is the same as against a single server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sansio_gateway.adapters.limit_stores import LimitStoreConfigError, RedisLimitStore

from sansio_gateway.config import LimitsConfig
from sansio_gateway.limits import Costs, build_specs
from tests.adapters.test_limit_stores_redis import (
    Op,
    differential,
    limits_configs,
    ops_strategy,
    redis,
    run,
)
from tests.redis_servers import SLOT_RANGES, redis_cluster

# Never skipped: .ci/run installs redis-server where it is missing, and a
# machine without it should fail these tests loudly rather than pass them.


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[int]]:
    with redis_cluster() as ports:
        yield ports


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="module")
def store(cluster: list[int], loop: asyncio.AbstractEventLoop) -> Iterator[RedisLimitStore]:
    store = RedisLimitStore.from_url(f"redis+cluster://127.0.0.1:{cluster[0]}")
    yield store
    run(loop, store.aclose())


def _node_of(user: str) -> int:
    slot = redis.crc.key_slot(f"{{u:{user}}}".encode())
    return next(i for i, (lo, hi) in enumerate(SLOT_RANGES) if lo <= slot <= hi)


def _spread_users() -> tuple[str, ...]:
    """One user per node (by hash slot), plus one with awkward characters."""
    chosen: dict[int, str] = {}
    for i in range(1000):
        chosen.setdefault(_node_of(f"user{i}"), f"user{i}")
        if len(chosen) == 3:
            break
    return (*chosen.values(), "b}o{b")


USERS = _spread_users()


def test_users_cover_every_node() -> None:
    assert {_node_of(u) for u in USERS[:3]} == {0, 1, 2}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limits=limits_configs(),
    lease_ttl_us=st.integers(1, 50) | st.integers(1_000_000, 100_000_000),
    ops=ops_strategy(max_size=25),
)
def test_differential_memory_and_cluster_agree(
    store: RedisLimitStore,
    loop: asyncio.AbstractEventLoop,
    limits: LimitsConfig,
    lease_ttl_us: int,
    ops: list[Op],
) -> None:
    run(loop, store.client.flushdb())
    run(loop, differential(store, limits, lease_ttl_us, ops, users=USERS))


def test_each_user_state_lives_on_its_own_node(
    cluster: list[int], store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    specs = build_specs(
        LimitsConfig(requests_per_minute=60, tokens_per_day=1000, concurrent_requests=2), "x", "m"
    )
    for user in USERS[:3]:
        assert run(loop, store.admit(user, specs, Costs(tokens=5), "r1")).allowed
        run(loop, store.commit(user, specs, "r1", 5, 3))
    for port, user in zip(cluster, sorted(USERS[:3], key=_node_of), strict=True):
        with redis.Redis(port=port) as c:
            keys = {k.decode() for k in c.keys("rl:v1:*")}
        assert f"rl:v1:{{u:{user}}}:g" in keys
        assert all(f"{{u:{user}}}" in k for k in keys)


def test_cross_slot_keys_are_a_configuration_error(
    store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    broken = RedisLimitStore(store.client)
    broken.keys = lambda user_key: (  # type: ignore[method-assign]
        f"rl:v1:{{u:{user_key}}}:g",
        f"rl:v1:{{other:{user_key}}}:inflight",
    )
    specs = build_specs(LimitsConfig(requests_per_minute=6), "x", "m")
    with pytest.raises(LimitStoreConfigError):
        run(loop, broken.admit("x", specs, Costs(tokens=1), "r"))
