"""The Redis limit store against a real redis-server started by these tests.

The differential test is the heart of it: Hypothesis generates histories of
admits, commits and peeks at explicit times for several users and models;
the pure memory store and the Lua script must agree on every decision,
retry-after and header value.  (Not against an in-process fake: its Lua
differs from Redis's in exactly the number handling that matters.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sansio_gateway.adapters.limit_stores import (
    LimitStoreConfigError,
    LimitStoreUnavailable,
    MemoryStore,
    RedisLimitStore,
    ResilientLimitStore,
    open_limit_store,
)

from sansio_gateway.config import LimitsConfig, LimitValues, StoreConfig
from sansio_gateway.limits import (
    DAY_US,
    Breaker,
    BreakerState,
    Costs,
    Decision,
    DenyReason,
    Fallback,
    LimitSpecs,
    MemoryLimitStore,
    build_specs,
)

# Never skipped: .ci/run installs redis-server where it is missing, and a
# machine without it should fail these tests loudly rather than pass them.

T = TypeVar("T")
START = 1_764_028_800_000_000 - 90 * 1_000_000  # 90 s before a UTC midnight


from tests.redis_servers import REDIS_SERVER, RedisServer, free_port, redis_server, wait_until  # noqa: E402,F401


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


@pytest.fixture(scope="module")
def store(server: RedisServer, loop: asyncio.AbstractEventLoop) -> Iterator[RedisLimitStore]:
    store = RedisLimitStore.from_url(server.url)
    yield store
    loop.run_until_complete(store.aclose())


def run(loop: asyncio.AbstractEventLoop, call: Awaitable[T]) -> T:
    return loop.run_until_complete(call)


# ---- the differential test ------------------------------------------------------------

USERS = ("alice", "b}o{b", "çé:ü")  # hash-tag braces and non-ASCII must be harmless
MODELS = ("gpt-4o-mini", "llama3.2:1b q4")


def limit_values(rpm: int, tpm: int) -> st.SearchStrategy[LimitValues]:
    return st.builds(
        LimitValues,
        requests_per_minute=st.none() | st.integers(1, rpm),
        tokens_per_minute=st.none() | st.integers(1, tpm),
        tokens_per_day=st.none() | st.integers(1, 4000),
        concurrent_requests=st.none() | st.integers(1, 4),
    )


@st.composite
def limits_configs(draw: st.DrawFn) -> LimitsConfig:
    base = draw(limit_values(30, 3000))
    users = draw(st.dictionaries(st.sampled_from(USERS), limit_values(30, 3000), max_size=2))
    models = draw(st.dictionaries(st.sampled_from(MODELS), limit_values(20, 2000), max_size=2))
    return LimitsConfig(**base.model_dump(), users=users, models=models)


@dataclass(frozen=True)
class Op:
    kind: str  # admit | commit | peek
    dt: int
    user: int
    model: int
    tokens: int = 0
    which: int = 0
    percent: int = 100


def ops_strategy(max_size: int, clock_steps: bool = False) -> st.SearchStrategy[list[Op]]:
    dt = st.one_of(
        st.integers(0, 2),
        st.integers(0, 3_000_000),
        st.integers(0, 40_000_000),
        st.integers(-3_000_000, -1),
    )
    if clock_steps:  # a wall clock stepped by hours, either way (the "Clock" rule)
        dt = dt | st.integers(-10 * 3_600_000_000, -1) | st.integers(0, 10 * 3_600_000_000)
    who = {"user": st.integers(0, len(USERS) - 1), "model": st.integers(0, len(MODELS) - 1)}
    admit = st.builds(
        Op, kind=st.just("admit"), dt=dt, tokens=st.integers(0, 700) | st.integers(0, 30), **who
    )
    commit = st.builds(
        Op,
        kind=st.just("commit"),
        dt=dt,
        which=st.integers(0, 10_000),
        percent=st.integers(0, 100) | st.integers(0, 300),
        **who,
    )
    peek = st.builds(Op, kind=st.just("peek"), dt=dt, **who)
    return st.lists(st.one_of(admit, admit, commit, peek), min_size=1, max_size=max_size)


async def differential(
    shared: RedisLimitStore,
    limits: LimitsConfig,
    lease_ttl_us: int,
    ops: list[Op],
    users: tuple[str, ...] = USERS,
    burst_us: int | None = None,
) -> int:
    """Run ``ops`` on both stores and assert they agree; returns decisions compared."""
    memory = MemoryLimitStore()
    now, compared = START, 0
    admitted: list[tuple[str, LimitSpecs, str, int]] = []
    held: set[str] = set()  # users the memory store holds a state for
    for i, op in enumerate(ops):
        # A state the memory store swept as idle is one whose Redis keys have
        # expired by then (their TTL ends when the state goes idle); Redis
        # counts TTLs in its own time, not this simulated clock, so expire
        # them here.  (A rebased state's skew lives only as long as it does.)
        for gone in [u for u in held if u not in memory._states]:
            await shared.client.delete(*shared.keys(gone))
        held = {u for u in users if u in memory._states}
        now = max(0, now + op.dt)
        user = users[op.user % len(users)]
        specs = build_specs(
            limits, user, MODELS[op.model], lease_ttl_us=lease_ttl_us, burst_us=burst_us
        )
        if op.kind == "admit":
            rid, costs = f"req-{i}", Costs(tokens=op.tokens)
            expected = memory.admit(user, specs, now, costs, rid)
            got = await shared.admit(user, specs, costs, rid, now_us=now)
            assert got == expected, (i, op)
            admitted.append((user, specs, rid, op.tokens))
            compared += 1
        elif op.kind == "commit" and admitted:
            user, specs, rid, est = admitted[op.which % len(admitted)]
            actual = est * op.percent // 100
            memory.commit(user, specs, now, rid, est, actual)
            await shared.commit(user, specs, rid, est, actual, now_us=now)
        elif op.kind == "peek":
            assert await shared.peek(user, specs, now_us=now) == memory.peek(user, specs, now), (
                i,
                op,
            )
            compared += 1
    await _day_counters_agree(shared, memory, users)
    return compared


async def _day_counters_agree(
    shared: RedisLimitStore, memory: MemoryLimitStore, users: tuple[str, ...]
) -> None:
    """The committed day counters agree too: after UTC midnight a lease is
    charged to the day it was admitted, in both stores (issue 17 item 9)."""
    for user in users:
        if user not in memory._states:  # swept as idle: nothing to compare
            continue
        state = memory.state(user)
        day, used = await shared.client.hmget(shared.keys(user)[0], ["dd", "du"])
        got = (int(day or 0), int(used or 0))
        # where nothing is committed, which day the counter names is moot
        assert got[1] == state.day_used and (not got[1] or got[0] == state.day), user


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limits=limits_configs(),
    lease_ttl_us=st.integers(1, 50) | st.integers(1_000_000, 100_000_000),
    ops=ops_strategy(max_size=40),
)
def test_differential_memory_and_redis_agree(
    store: RedisLimitStore,
    loop: asyncio.AbstractEventLoop,
    limits: LimitsConfig,
    lease_ttl_us: int,
    ops: list[Op],
) -> None:
    run(loop, store.client.flushdb())
    run(loop, differential(store, limits, lease_ttl_us, ops))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limits=limits_configs(),
    lease_ttl_us=st.integers(1, 50) | st.integers(1_000_000, 100_000_000),
    ops=ops_strategy(max_size=40, clock_steps=True),
)
def test_differential_agree_across_clock_steps(
    store: RedisLimitStore,
    loop: asyncio.AbstractEventLoop,
    limits: LimitsConfig,
    lease_ttl_us: int,
    ops: list[Op],
) -> None:
    """Steps of hours back and forth: both stores rebase the same way."""
    run(loop, store.client.flushdb())
    run(loop, differential(store, limits, lease_ttl_us, ops))


def test_a_forward_step_then_normal_time_does_not_freeze_redis(
    store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    """Redis TIME stepped 1 h ahead and back: the 429's Retry-After is exact."""
    run(loop, store.client.flushdb())
    specs = build_specs(LimitsConfig(requests_per_minute=6), "step", "m")

    def admit(rid: str, now: int) -> Decision:
        return run(loop, store.admit("step", specs, Costs(tokens=1), rid, now_us=now))

    hour = 3_600_000_000
    assert admit("a", START).allowed
    assert admit("b", START + hour).allowed  # TIME jumps ahead
    denied = admit("c", START + 1_000_000)  # and is corrected
    assert not denied.allowed and 0 < denied.retry_after_us <= 10_000_000
    at = START + 1_000_000 + denied.retry_after_us
    assert not admit("c", at - 1).allowed
    assert admit("c", at).allowed  # not an hour later
    skew = run(loop, store.client.hget(store.keys("step")[0], "k"))
    assert skew is not None and int(skew) > hour - 2_000_000


@st.composite
def refund_heavy(draw: st.DrawFn) -> tuple[LimitsConfig, int, list[Op]]:
    """One user and model at 1 token/s, costs and gaps on the scale of the
    burst, in whole seconds: where refunds, shifts and clamps interact."""
    burst_s = draw(st.integers(5, 60))
    limits = LimitsConfig(
        tokens_per_minute=60,
        tokens_per_day=draw(st.none() | st.integers(1, 300)),
        models={MODELS[0]: LimitValues(tokens_per_minute=draw(st.sampled_from([60, 120])))},
    )
    seconds = st.integers(0, burst_s).map(lambda s: s * 1_000_000)
    one = {"user": st.just(0), "model": st.just(0)}
    admit = st.builds(Op, kind=st.just("admit"), dt=seconds, tokens=st.integers(0, burst_s), **one)
    commit = st.builds(
        Op,
        kind=st.just("commit"),
        dt=seconds,
        which=st.integers(0, 1000),
        percent=st.sampled_from([0, 25, 50, 100, 150]),
        **one,
    )
    peek = st.builds(Op, kind=st.just("peek"), dt=seconds, **one)
    ops = draw(st.lists(st.one_of(admit, admit, commit, commit, peek), min_size=1, max_size=40))
    return limits, burst_s * 1_000_000, ops


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=refund_heavy())
def test_differential_refunds_agree(
    store: RedisLimitStore,
    loop: asyncio.AbstractEventLoop,
    history: tuple[LimitsConfig, int, list[Op]],
) -> None:
    limits, burst_us, ops = history
    run(loop, store.client.flushdb())
    run(loop, differential(store, limits, 60_000_000, ops, burst_us=burst_us))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limit=st.sampled_from([1, 7, 59, 149_999_999, 150_000_000, 10**12]),
    quota=st.sampled_from([None, 1, 150_000_000, 2**49]),
    tokens=st.lists(
        st.sampled_from([0, 1, 2, 149_999_999, 150_000_000, 10**15]), min_size=1, max_size=8
    ),
    start=st.sampled_from([0, 2**52 - 10**12, 2**52]),
)
def test_differential_extreme_values_agree(
    store: RedisLimitStore,
    loop: asyncio.AbstractEventLoop,
    limit: int,
    quota: int | None,
    tokens: list[int],
    start: int,
) -> None:
    """Values near the 2**53 bounds: where doubles would first go wrong."""
    limits = LimitsConfig(tokens_per_minute=limit, requests_per_minute=limit, tokens_per_day=quota)
    memory = MemoryLimitStore()
    run(loop, store.client.flushdb())
    specs = build_specs(limits, "x", "m", lease_ttl_us=2**40)
    for i, t in enumerate(tokens):
        now = min(start + i, 2**52)
        costs = Costs(tokens=t)
        assert run(loop, store.admit("x", specs, costs, f"r{i}", now_us=now)) == memory.admit(
            "x", specs, now, costs, f"r{i}"
        )
        memory.commit("x", specs, now, f"r{i}", t, 10**15 - t)
        run(loop, store.commit("x", specs, f"r{i}", t, 10**15 - t, now_us=now))
        assert run(loop, store.peek("x", specs, now_us=now)) == memory.peek("x", specs, now)


@pytest.mark.parametrize("commit_at_s", [0, 15, 19, 20, 21, 40])
def test_differential_refund_of_a_shifted_slice(
    store: RedisLimitStore, loop: asyncio.AbstractEventLoop, commit_at_s: int
) -> None:
    """core's test_commit_refunds_only_the_unused_future_part, on both
    stores, with the refund anchor binding on either side of zero."""
    limits = LimitsConfig(tokens_per_minute=60)
    second = 1_000_000

    def op(kind: str, dt: int = 0, **kw: int) -> Op:
        return Op(kind=kind, dt=dt, user=0, model=0, **kw)

    ops = [
        op("admit", tokens=20),  # j: slice [0, 20 s]
        op("admit", tokens=20),  # i: slice [20 s, 40 s]
        op("commit", which=0, percent=0),  # j refunded: i's slice drops to [0, 20 s]
        op("admit", dt=commit_at_s * second, tokens=40),  # k
        op("peek"),
        op("commit", which=1, percent=50),  # i: only its future part comes back
        op("peek"),
        op("admit", tokens=21),
        op("admit", tokens=20),
        op("peek"),
    ]
    run(loop, store.client.flushdb())
    assert run(loop, differential(store, limits, 60_000_000, ops, burst_us=60 * second)) == 8


def test_differential_long_history_single_limit(
    store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    """A long deterministic history where every refund path is exercised."""
    limits = LimitsConfig(tokens_per_minute=120, tokens_per_day=3000, concurrent_requests=3)
    ops = [
        Op(kind=k, dt=dt, user=0, model=0, tokens=tok, which=w, percent=p)
        for k, dt, tok, w, p in [
            (kind, (i * 7919) % 4_000_000, (i * 37) % 25, (i * 13) % 97, (i * 29) % 130)
            for i, kind in enumerate(["admit", "admit", "commit", "peek"] * 60)
        ]
    ]
    run(loop, store.client.flushdb())
    assert run(loop, differential(store, limits, 30_000_000, ops)) == 180


# ---- one round trip, expiry, NOSCRIPT ----------------------------------------------


def _commandstats(port: int) -> dict[str, int]:
    with redis.Redis(port=port) as c:
        info = c.info("commandstats")
    return {name: int(v["calls"]) for name, v in info.items()}


def test_a_commit_after_midnight_is_charged_to_the_day_it_was_admitted(
    store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    run(loop, store.client.flushdb())
    specs = build_specs(LimitsConfig(tokens_per_day=1000), "night", "m")
    memory = MemoryLimitStore()
    admitted_day = START // DAY_US
    for rid in ("late", "later"):
        assert memory.admit("night", specs, START, Costs(tokens=400), rid).allowed
        assert run(loop, store.admit("night", specs, Costs(tokens=400), rid, now_us=START)).allowed
    after_midnight = (admitted_day + 1) * DAY_US + 5_000_000
    for rid, actual in (("late", 300), ("later", 200)):
        memory.commit("night", specs, after_midnight, rid, 400, actual)
        run(loop, store.commit("night", specs, rid, 400, actual, now_us=after_midnight))
    state = memory.state("night")
    assert (state.day, state.day_used) == (admitted_day, 500)
    run(loop, _day_counters_agree(store, memory, ("night",)))


def test_one_evalsha_per_admit_and_per_commit(
    server: RedisServer, store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    specs = build_specs(
        LimitsConfig(
            requests_per_minute=60,
            tokens_per_minute=10_000,
            tokens_per_day=10**6,
            concurrent_requests=5,
            models={"m": LimitValues(tokens_per_minute=5000)},
        ),
        "counted",
        "m",
    )
    run(loop, store.admit("warm", specs, Costs(tokens=1), "w"))  # script loaded
    trips = store.round_trips
    before = _commandstats(server.port)
    for i in range(5):
        assert run(loop, store.admit("counted", specs, Costs(tokens=10), f"r{i}")).allowed
        run(loop, store.commit("counted", specs, f"r{i}", 10, 7))
    after = _commandstats(server.port)
    assert store.round_trips - trips == 10  # one round trip each
    assert after["cmdstat_evalsha"] - before["cmdstat_evalsha"] == 10
    for name in ("cmdstat_eval", "cmdstat_script|load"):
        assert after.get(name, 0) == before.get(name, 0)


def test_every_key_expires(
    server: RedisServer, store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    run(loop, store.client.flushdb())
    specs = build_specs(
        LimitsConfig(
            requests_per_minute=60,
            tokens_per_minute=6000,
            tokens_per_day=1000,
            concurrent_requests=2,
        ),
        "ttl",
        "m",
        lease_ttl_us=5_000_000,
    )
    run(loop, store.admit("ttl", specs, Costs(tokens=100), "a"))
    run(loop, store.admit("ttl", specs, Costs(tokens=100), "b"))
    run(loop, store.commit("ttl", specs, "a", 100, 50))
    with redis.Redis(port=server.port) as c:
        keys = sorted(k.decode() for k in c.keys("*"))
        assert keys == [
            "rl:v1:{u:ttl}:done:a",
            "rl:v1:{u:ttl}:g",
            "rl:v1:{u:ttl}:inflight",
        ]
        ttls = {k: c.pttl(k) for k in keys}
    assert all(ttl > 0 for ttl in ttls.values()), ttls
    assert ttls["rl:v1:{u:ttl}:done:a"] <= 65_000  # lease lifetime + a minute
    # The TAT hash lives until the day's committed tokens stop mattering.
    assert ttls["rl:v1:{u:ttl}:g"] > 65_000


def test_noscript_recovery(store: RedisLimitStore, loop: asyncio.AbstractEventLoop) -> None:
    specs = build_specs(LimitsConfig(requests_per_minute=6), "flush", "m")
    assert run(loop, store.admit("flush", specs, Costs(tokens=1), "a", now_us=START)).allowed
    run(loop, store.client.script_flush())
    decision = run(loop, store.admit("flush", specs, Costs(tokens=1), "b", now_us=START))
    assert not decision.allowed and decision.retry_after_us == 10_000_000
    run(loop, store.client.script_flush())
    run(loop, store.commit("flush", specs, "a", 1, 1, now_us=START))


def test_thousands_of_expired_leases_are_swept(
    server: RedisServer, store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    """More dead leases (a crashed gateway's) than Lua's unpack() takes at once."""
    specs = build_specs(LimitsConfig(tokens_per_day=10**9), "many", "m")
    _, inflight = store.keys("many")
    dead = {f"r{i}": f"{START - 1} {START // 86_400_000_000} 7 -1 -1" for i in range(9000)}
    run(loop, store.client.hset(inflight, mapping=dead))  # type: ignore[arg-type]
    d = run(loop, store.admit("many", specs, Costs(tokens=1), "last", now_us=START))
    assert d.allowed and d.headers.tokens is not None and d.headers.tokens.remaining == 10**9 - 1
    assert run(loop, store.client.hlen(inflight)) == 1


def test_redis_time_is_used_and_returned(
    store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    specs = build_specs(LimitsConfig(requests_per_minute=6), "clock", "m")
    before = time.time_ns() // 1000
    decision = run(loop, store.admit("clock", specs, Costs(tokens=1), "a"))
    after = time.time_ns() // 1000
    assert before - 1_000_000 <= decision.now_us <= after + 1_000_000
    assert (
        decision.headers.requests is not None and decision.headers.requests.reset_us == 10_000_000
    )


# ---- configuration errors are loud -----------------------------------------------------


def test_script_errors_are_configuration_errors(
    server: RedisServer, store: RedisLimitStore, loop: asyncio.AbstractEventLoop
) -> None:
    specs = build_specs(LimitsConfig(requests_per_minute=6), "wrongtype", "m")
    g_key, _ = store.keys("wrongtype")
    run(loop, store.client.set(g_key, "not a hash"))
    with pytest.raises(LimitStoreConfigError, match="WRONGTYPE"):
        run(loop, store.admit("wrongtype", specs, Costs(tokens=1), "a"))
    broken = RedisLimitStore(store.client, admit_lua="return redis.call('NOSUCHCOMMAND')")
    with pytest.raises(LimitStoreConfigError):
        run(loop, broken.admit("u", specs, Costs(tokens=1), "a"))
    # Behind the failure policy, a config error is still raised, never allowed.
    for policy in ("open", "closed", "local"):
        resilient = ResilientLimitStore(store, policy=policy)
        assert run(loop, resilient.warm())
        with pytest.raises(LimitStoreConfigError):
            run(loop, resilient.admit("wrongtype", specs, Costs(tokens=1), "a"))
        assert resilient.config_errors == 1 and resilient.store_errors == 0
        assert resilient.breaker.state is BreakerState.CLOSED


# ---- the failure policy -----------------------------------------------------------------


async def _timed(call: Awaitable[T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    result = await call
    return result, time.perf_counter() - t0


@pytest.mark.parametrize("policy", ["local", "closed", "open"])
def test_redis_killed_mid_run_policy_applies_fast_then_recovers(
    policy: str, loop: asyncio.AbstractEventLoop
) -> None:
    specs = build_specs(
        LimitsConfig(requests_per_minute=600, tokens_per_minute=60_000, concurrent_requests=8),
        "kill",
        "m",
    )
    with redis_server() as server:
        primary = RedisLimitStore.from_url(server.url)
        resilient = ResilientLimitStore(
            primary,
            policy=policy,  # type: ignore[arg-type]
            instances=4,
            decision_timeout=0.05,
            breaker=Breaker(failure_threshold=2, cooldown_us=50_000),
        )
        try:
            assert run(loop, resilient.warm())
            d = run(loop, resilient.admit("kill", specs, Costs(tokens=10), "r0"))
            assert d.allowed and d.fallback is None and resilient.fallback_mode is None
            run(loop, resilient.commit("kill", specs, "r0", 10, 10))

            server.kill()
            for i in range(1, 6):
                d, elapsed = run(
                    loop, _timed(resilient.admit("kill", specs, Costs(tokens=10), f"r{i}"))
                )
                assert elapsed < 0.2, elapsed  # the decision timeout bounds it
                assert d.fallback is Fallback(policy)
                if policy == "closed":
                    assert not d.allowed and d.reason is DenyReason.STORE_UNAVAILABLE
                else:
                    assert d.allowed
                run(loop, resilient.commit("kill", specs, f"r{i}", 10, 5))
            assert resilient.store_errors >= 2
            assert not resilient.health.serving
            assert resilient.fallback_mode == policy
            assert resilient.fallback_decisions[Fallback(policy)] == 5
            if policy == "local":  # the local share is a quarter of the limit
                local = resilient.local.memory.state("kill")
                assert local.inflight == {}  # committed locally
                h = run(loop, resilient.peek("kill", specs))
                assert h.requests is not None and h.requests.limit == 150

            server.start()  # a new redis-server on the same port

            def recovered() -> bool:
                d = run(loop, resilient.admit("kill", specs, Costs(tokens=1), "probe"))
                return d.fallback is None

            wait_until(recovered, what="the breaker to close again")
            assert resilient.fallback_mode is None
        finally:
            run(loop, resilient.aclose())


def test_a_hung_redis_costs_one_decision_timeout(loop: asyncio.AbstractEventLoop) -> None:
    specs = build_specs(LimitsConfig(requests_per_minute=600), "hung", "m")
    with redis_server() as server:
        primary = RedisLimitStore.from_url(server.url, socket_timeout=5)
        resilient = ResilientLimitStore(
            primary, policy="local", decision_timeout=0.05, breaker=Breaker(failure_threshold=1)
        )
        try:
            assert run(loop, resilient.warm())
            assert run(loop, resilient.admit("hung", specs, Costs(tokens=1), "a")).fallback is None
            server.pause()
            d, elapsed = run(loop, _timed(resilient.admit("hung", specs, Costs(tokens=1), "b")))
            assert d.allowed and d.fallback is Fallback.LOCAL and elapsed < 0.2
            d, elapsed = run(loop, _timed(resilient.admit("hung", specs, Costs(tokens=1), "c")))
            assert d.fallback is Fallback.LOCAL and elapsed < 0.01  # breaker open: no wait at all
            server.resume()
        finally:
            run(loop, resilient.aclose())


def test_unavailable_errors_are_mapped(loop: asyncio.AbstractEventLoop) -> None:
    port = free_port()
    dead = RedisLimitStore.from_url(f"redis://127.0.0.1:{port}/0")
    specs = build_specs(LimitsConfig(requests_per_minute=6), "u", "m")
    with pytest.raises(LimitStoreUnavailable):
        run(loop, dead.admit("u", specs, Costs(tokens=1), "a"))
    with pytest.raises(LimitStoreUnavailable):
        run(loop, dead.commit("u", specs, "a", 1, 1))
    run(loop, dead.aclose())


def test_open_limit_store_from_config(server: RedisServer, loop: asyncio.AbstractEventLoop) -> None:
    assert isinstance(open_limit_store(StoreConfig()), MemoryStore)
    store = open_limit_store(StoreConfig(url=server.url, on_error="closed"), instances=3)
    assert isinstance(store, ResilientLimitStore) and store.policy == "closed"
    assert not store.ready and store.not_ready_reason == "not yet connected"
    assert run(loop, store.warm()) and store.ready
    specs = build_specs(LimitsConfig(requests_per_minute=6), "cfg", "m")
    assert run(loop, store.admit("cfg", specs, Costs(tokens=1), "a")).allowed
    run(loop, store.aclose())
    with pytest.raises(ValueError):
        open_limit_store(StoreConfig(url="etcd://x"))
