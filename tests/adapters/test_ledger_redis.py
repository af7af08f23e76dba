"""The Redis usage ledger against a real redis-server and a 3-primary cluster.

The heart of it is a differential test: Hypothesis writes the same records
(duplicates included) to the SQLite ledger and to the Redis ledger, then
asks both the same queries; they must return the same rows.  Times cluster
around UTC midnights, so ``since``/``until`` bounds cut days in two and the
Redis ledger has to choose between its aggregates and its raw records.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sansio_gateway.adapters.ledger import (
    DEFAULT_RETENTION_DAYS,
    RedisLedger,
    SQLiteLedger,
    open_ledger,
)

from sansio_gateway.accounting.usage_query import UsageQuery
from sansio_gateway.actions import UsageRecord
from tests.redis_servers import SLOT_RANGES, RedisServer, redis_cluster, redis_server

# Never skipped: a machine without redis-server should fail these loudly.

T = TypeVar("T")
DAY = 86_400
TODAY = int(time.time()) // DAY * DAY  # midnight UTC today: well inside the retention
USERS = ("alice", "b}o{b", "çé:ü", "user7")
MODELS = ("gpt-4o-mini", "llama3.2:1b", "n:x", "t0")  # "n:x"/"t0" look like hash fields


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def run(loop: asyncio.AbstractEventLoop, call: Awaitable[T]) -> T:
    return loop.run_until_complete(call)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[int]]:
    with redis_cluster() as ports:
        yield ports


@pytest.fixture(scope="module", params=["redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("server").url)
    ports = request.getfixturevalue("cluster")
    return f"redis+cluster://127.0.0.1:{ports[0]}"


@pytest.fixture(scope="module")
def shared(url: str, loop: asyncio.AbstractEventLoop) -> Iterator[RedisLedger]:
    """One client for the module; tests build ledgers on it with their own prefix."""
    ledger = RedisLedger.from_url(url)
    yield ledger
    run(loop, ledger.aclose())


_prefixes = itertools.count()


def fresh(shared: RedisLedger, **kwargs: Any) -> RedisLedger:
    """A ledger on the shared client whose keys no other test has used."""
    return RedisLedger(shared.client, prefix=f"t{next(_prefixes)}:usage", **kwargs)


def rec(
    request_id: str,
    *,
    user: str | None = "alice",
    model: str = "gpt-4o-mini",
    at: float = TODAY + 3600.0,
    prompt: int = 10,
    completion: int = 5,
) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        time=at,
        key_id="k",
        user=user,
        model=model,
        resolved_model=model,
        backend="b",
        surface="openai",
        route="chat.completions",
        prompt_tokens=prompt,
        completion_tokens=completion,
        status=200,
        latency=0.1,
        ttft=0.05,
        outcome="ok",
        usage_reported=True,
    )


def rows(result: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (r.user, r.model, r.day, r.requests, r.prompt_tokens, r.completion_tokens) for r in result
    ]


# ---- the differential test ------------------------------------------------------------

# Instants near midnights (exactly on them, a hair before and after) and anywhere.
_EDGES = [TODAY + d * DAY + e for d in (-1, 0, 1, 2) for e in (-1e-6, -2e-7, 0.0, 2e-7, 1e-3)]
times = st.one_of(
    st.sampled_from(_EDGES),
    st.floats(TODAY - DAY, TODAY + 3 * DAY, allow_nan=False),
    st.integers(TODAY - DAY, TODAY + 3 * DAY).map(float),
)


@st.composite
def record_sets(draw: st.DrawFn) -> list[UsageRecord]:
    out: list[UsageRecord] = []
    for i in range(draw(st.integers(0, 25))):
        out.append(
            rec(
                f"r{i}",
                user=draw(st.sampled_from((*USERS, None))),
                model=draw(st.sampled_from(MODELS)),
                at=draw(times),
                prompt=draw(st.integers(0, 5000)),
                completion=draw(st.integers(0, 5000)),
            )
        )
    # Duplicates: the same record written again, later (a retried flush).
    if out:
        out += draw(st.lists(st.sampled_from(out), max_size=5))
    return out


queries = st.builds(
    UsageQuery,
    user=st.none() | st.sampled_from(USERS),
    model=st.none() | st.sampled_from(MODELS),
    since=st.none() | times,
    until=st.none() | times,
)


async def both(
    ledger: RedisLedger, sqlite: SQLiteLedger, records: list[UsageRecord], qs: list[UsageQuery]
) -> None:
    half = len(records) // 2
    for r in records[:half]:
        ledger.record(r)
        sqlite.record(r)
    await ledger.flush()  # two flushes: duplicates may cross batches
    for r in records[half:]:
        ledger.record(r)
        sqlite.record(r)
    for q in [UsageQuery(), *qs]:
        assert await ledger.query(q) == await sqlite.query(q), q


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(records=record_sets(), qs=st.lists(queries, max_size=6))
def test_redis_ledger_agrees_with_sqlite(
    shared: RedisLedger,
    loop: asyncio.AbstractEventLoop,
    records: list[UsageRecord],
    qs: list[UsageQuery],
) -> None:
    sqlite = SQLiteLedger(":memory:")
    try:
        run(loop, both(fresh(shared), sqlite, records, qs))
    finally:
        run(loop, sqlite.aclose())


# ---- idempotence, restarts, failures ------------------------------------------------------


def test_a_record_written_twice_counts_once(
    shared: RedisLedger, loop: asyncio.AbstractEventLoop
) -> None:
    ledger = fresh(shared)
    same = rec("same", prompt=7, completion=3)

    async def go() -> list[Any]:
        ledger.record(same)
        ledger.record(same)  # twice in one batch
        await ledger.flush()
        ledger.record(same)  # and again in a later one
        # ... and from another gateway with its own client and queue
        other = RedisLedger(shared.client, prefix=ledger.prefix)
        other.record(same)
        await other.flush()
        return await ledger.query(UsageQuery())

    assert rows(run(loop, go())) == [("alice", "gpt-4o-mini", _day(same.time), 1, 7, 3)]
    assert ledger.written == 1


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def test_records_survive_a_client_restart(url: str, loop: asyncio.AbstractEventLoop) -> None:
    prefix = f"t{next(_prefixes)}:usage"

    async def write() -> None:
        ledger = RedisLedger.from_url(url, prefix=prefix)
        for i in range(30):
            ledger.record(rec(f"x{i}", user=USERS[i % 4], prompt=i, completion=1))
        await ledger.aclose()  # never flushed before: aclose writes them

    async def read() -> list[Any]:
        ledger = RedisLedger.from_url(url, prefix=prefix)
        try:
            return await ledger.query(UsageQuery(user="alice"))
        finally:
            await ledger.aclose()

    run(loop, write())
    day = _day(TODAY + 3600)
    assert rows(run(loop, read())) == [("alice", "gpt-4o-mini", day, 8, sum(range(0, 30, 4)), 8)]


def test_records_wait_for_redis_and_are_written_when_it_returns(
    loop: asyncio.AbstractEventLoop,
) -> None:
    with redis_server() as server:
        ledger = RedisLedger.from_url(server.url)

        async def go() -> None:
            ledger.record(rec("before"))
            await ledger.flush()
            server.kill()
            ledger.record(rec("during", completion=100))
            with pytest.raises(redis.RedisError):
                await ledger.flush()
            assert ledger.pending == 1  # kept, not lost
            server.start()  # same port, empty: the script cache is gone too
            ledger.record(rec("after"))
            result = await ledger.query(UsageQuery())
            assert ledger.pending == 0
            assert rows(result) == [("alice", "gpt-4o-mini", _day(TODAY + 3600), 2, 20, 105)]
            await ledger.aclose()

        run(loop, go())


def test_the_queue_is_bounded_while_redis_is_away(loop: asyncio.AbstractEventLoop) -> None:
    ledger = RedisLedger.from_url("redis://127.0.0.1:1/0", max_pending=3)
    for i in range(5):
        ledger.record(rec(f"r{i}"))
    assert ledger.pending == 3 and ledger.dropped == 2
    run(loop, ledger.aclose())  # gives up quietly (logged), does not hang


# ---- key layout, retention, cost of a query ---------------------------------------------


def test_keys_share_one_hash_tag_per_user_and_expire_after_the_retention(
    shared: RedisLedger, loop: asyncio.AbstractEventLoop
) -> None:
    ledger = fresh(shared)
    at = TODAY + 100.0
    for user in USERS:
        ledger.record(rec(f"k-{user}", user=user, at=at))
    ledger.record(rec("ancient", at=TODAY - (DEFAULT_RETENTION_DAYS + 2) * DAY))
    run(loop, ledger.flush())
    day = _day(at)
    expected_expiry_ms = (TODAY + DAY + DEFAULT_RETENTION_DAYS * DAY) * 1000
    for user in USERS:
        keys = [ledger.raw_key(user, day), ledger.aggregate_key(user, day), ledger.days_key(user)]
        assert len({redis.crc.key_slot(k.encode()) for k in keys}) == 1, keys
        for key in keys:
            expiry = shared.client.pexpiretime(key)
            assert expiry == expected_expiry_ms, (key, expiry)
    # A record already past the retention is not written at all.
    assert rows(run(loop, ledger.query(UsageQuery(user="alice")))) == [
        ("alice", "gpt-4o-mini", day, 1, 10, 5)
    ]


def test_users_spread_over_the_cluster_nodes(
    cluster: list[int], loop: asyncio.AbstractEventLoop
) -> None:
    ledger = RedisLedger.from_url(f"redis+cluster://127.0.0.1:{cluster[0]}", prefix="spread")
    users = [f"user{i}" for i in range(12)]
    for user in users:
        ledger.record(rec(f"s-{user}", user=user))
    assert len(run(loop, ledger.query(UsageQuery()))) == 12
    run(loop, ledger.aclose())
    nodes = set()
    for user in users:
        slot = redis.crc.key_slot(f"{{u:{user}}}".encode())
        nodes.add(next(i for i, (lo, hi) in enumerate(SLOT_RANGES) if lo <= slot <= hi))
    assert nodes == {0, 1, 2}
    for port in cluster:
        with redis.Redis(port=port) as c:
            keys = [k.decode() for k in c.keys("spread:{u:*")]
        for key in keys:  # every user's keys live on the node that owns its tag
            assert key.split("}")[0] in {k.split("}")[0] for k in keys}


def _calls(port: int) -> dict[str, int]:
    with redis.Redis(port=port) as c:
        stats = c.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_a_whole_day_query_reads_aggregates_and_a_cut_day_reads_raw_records(
    loop: asyncio.AbstractEventLoop,
) -> None:
    with redis_server() as server:
        ledger = RedisLedger.from_url(server.url)
        for i in range(200):
            ledger.record(rec(f"q{i}", at=TODAY + 10.0 + i, model=MODELS[i % 2]))
        run(loop, ledger.flush())
        before = _calls(server.port)
        result = run(loop, ledger.query(UsageQuery(since=TODAY, until=TODAY + DAY)))
        after = _calls(server.port)
        assert sum(r.requests for r in result) == 200
        assert after.get("hvals", 0) == before.get("hvals", 0)  # no raw record read
        assert after["hgetall"] - before.get("hgetall", 0) == 1  # one aggregate hash
        result = run(loop, ledger.query(UsageQuery(since=TODAY + 110.0)))  # cuts the day
        assert sum(r.requests for r in result) == 100
        assert _calls(server.port)["hvals"] - after.get("hvals", 0) == 1
        run(loop, ledger.aclose())


def test_the_ledger_runs_on_trio_too(server: RedisServer) -> None:
    """The redis-py calls run in worker threads: no asyncio loop needed."""
    import anyio

    async def go() -> list[Any]:
        ledger = RedisLedger.from_url(server.url, prefix=f"t{next(_prefixes)}:usage")
        ledger.record(rec("trio-1"))
        with anyio.move_on_after(0.2):
            await ledger.run()  # flushes in the background
        assert ledger.pending == 0
        rows_ = await ledger.query(UsageQuery())
        await ledger.aclose()
        return rows_

    assert rows(anyio.run(go, backend="trio")) == [
        ("alice", "gpt-4o-mini", _day(TODAY + 3600), 1, 10, 5)
    ]


def test_open_ledger_understands_redis_urls(server: RedisServer, tmp_path: Path) -> None:
    ledger = open_ledger(server.url)
    assert isinstance(ledger, RedisLedger)
    assert ledger.retention_days == DEFAULT_RETENTION_DAYS
    ledger = open_ledger(f"redis+cluster://127.0.0.1:{server.port}?retention_days=30")
    assert isinstance(ledger, RedisLedger) and ledger.retention_days == 30
    with pytest.raises(ValueError, match="retention_days"):
        open_ledger(f"{server.url}?retention_days=soon")
    with pytest.raises(ValueError, match="unsupported"):
        open_ledger("postgres://nope")
