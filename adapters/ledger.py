"""The usage ledger: every request that reached a backend, kept.

``record`` is called from the request path and must never block it, so
records are queued and written in batches by ``run`` (a background task)
on a worker thread -- at the latest ``FLUSH_INTERVAL`` seconds after they
arrive, sooner when many are waiting.  ``aclose`` writes whatever is left,
so a graceful shutdown loses nothing.  SQLite runs in WAL mode; rows are
keyed by request id, so writing the same record twice is harmless.

Ledgers: :class:`SQLiteLedger` (the default, survives restarts),
:class:`MemoryLedger` (tests, or ``usage = "memory://"``) and
:class:`RedisLedger` (``usage = "redis://..."`` or ``"redis+cluster://..."``:
shared by every gateway process, see its docstring for the key layout).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import parse_qs, quote, unquote, urlencode

import anyio
import anyio.to_thread
import orjson

from sansio_gateway.accounting.usage_query import (
    DaySpan,
    Totals,
    UsageQuery,
    UsageRow,
    add_day_aggregate,
    add_record,
    aggregate,
    day_of,
    day_span,
    rows_from_totals,
)
from sansio_gateway.actions import UsageRecord
from sansio_gateway.config import redact_url

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = [
    "MemoryLedger",
    "RedisLedger",
    "SQLiteLedger",
    "UsageLedger",
    "open_ledger",
]

log = logging.getLogger("sansio_gateway.ledger")

FLUSH_INTERVAL = 0.05
FLUSH_BATCH = 500


class UsageLedger(Protocol):
    def record(self, record: UsageRecord) -> None: ...

    async def query(self, query: UsageQuery) -> list[UsageRow]: ...

    def query_sync(self, query: UsageQuery) -> list[UsageRow]:
        """What is stored (not what is queued), blocking: for the CLI."""
        ...

    def close_sync(self) -> None:
        """Release a ledger opened only to read it (``query_sync``)."""
        ...

    async def run(self) -> None: ...

    async def aclose(self) -> None: ...


_day = day_of  # the ledgers' UTC day, decided in the core


@dataclass
class MemoryLedger:
    """Records in memory (bounded, oldest dropped first)."""

    maxlen: int = 100_000
    records: deque[UsageRecord] = field(default_factory=deque)

    def record(self, record: UsageRecord) -> None:
        if len(self.records) >= self.maxlen:
            self.records.popleft()
        self.records.append(record)

    __call__ = record

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        return aggregate(list(self.records), query)

    def query_sync(self, query: UsageQuery) -> list[UsageRow]:
        return aggregate(list(self.records), query)

    def close_sync(self) -> None:
        return None

    async def run(self) -> None:
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    day TEXT NOT NULL,
    key_id TEXT,
    user TEXT,
    model TEXT NOT NULL,
    resolved_model TEXT NOT NULL,
    backend TEXT NOT NULL,
    surface TEXT NOT NULL,
    route TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    status INTEGER NOT NULL,
    latency REAL NOT NULL,
    ttft REAL,
    outcome TEXT NOT NULL,
    usage_reported INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_day ON usage (day, user, model);
CREATE INDEX IF NOT EXISTS usage_time ON usage (time);
"""

_COLUMNS = (
    "request_id", "time", "day", "key_id", "user", "model", "resolved_model", "backend",
    "surface", "route", "prompt_tokens", "completion_tokens", "status", "latency", "ttft",
    "outcome", "usage_reported",
)  # fmt: skip
_DAY = _COLUMNS.index("day")
_BEFORE_DAY = operator.attrgetter(*_COLUMNS[:_DAY])
_AFTER_DAY = operator.attrgetter(*_COLUMNS[_DAY + 1 :])
# Rows per INSERT statement: one statement for a whole batch, not one step
# per row.  sqlite3 lets go of the GIL around every step, and each time the
# writer thread wants it back it must wait for (or take it from) the event
# loop: one step per row made the ledger thread the loop's most frequent
# interruption.  999 is SQLite's oldest limit on variables per statement.
_ROWS_PER_INSERT = 999 // len(_COLUMNS)
_ROW = f"({', '.join('?' for _ in _COLUMNS)})"


@functools.cache
def _insert_rows(n: int) -> str:
    return f"INSERT OR REPLACE INTO usage ({', '.join(_COLUMNS)}) VALUES {', '.join([_ROW] * n)}"


SQLITE_MAX_PENDING = 100_000


def _while_locked(run: Callable[[], object], within: float = 10.0) -> None:
    """Run ``run``, again while SQLite says the database is locked (for up
    to ``within`` seconds, as the busy timeout would)."""
    deadline = time.monotonic() + within
    pause = 0.005
    while True:
        try:
            run()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)  # a worker's startup, off any event loop
        pause = min(pause * 2, 0.2)


class SQLiteLedger:
    """The usage ledger in one SQLite file (WAL), shared by ``--workers``.

    **Durability** (docs/deployment.md, "What a crash can lose: the usage ledger"): records
    wait in memory for at most ``FLUSH_INTERVAL`` (50 ms) and are then
    committed in one transaction.  While SQLite keeps failing they stay
    queued, at most ``max_pending`` (the oldest are dropped beyond, counted
    in ``dropped`` and logged).  ``synchronous="normal"`` (the default)
    survives a process crash but may lose the last commits on power loss or
    an OS crash; ``"full"`` syncs every commit (``?synchronous=full`` in
    ``store.usage``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        max_pending: int = SQLITE_MAX_PENDING,
    ) -> None:
        self.path = str(path)
        self.synchronous = synchronous
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: list[UsageRecord] = []
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one connection, used from worker threads
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # Several workers may write at once; wait for the lock, don't fail.
        self._conn.execute("PRAGMA busy_timeout=10000")
        # Switching a new file to WAL can fail at once with "database is
        # locked" while another worker opens it too: SQLite does not wait on
        # the busy timeout there.  So the opening steps are tried again.
        _while_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        _while_locked(lambda: self._conn.executescript(_SCHEMA))

    def record(self, record: UsageRecord) -> None:
        self._pending.append(record)
        self._bound()

    __call__ = record

    def _bound(self) -> None:
        excess = len(self._pending) - self.max_pending
        if excess <= 0:
            return
        del self._pending[:excess]  # the oldest go first, as in the Redis ledger
        before = self.dropped
        self.dropped += excess
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.error(
                "usage ledger %s: SQLite failing and %d records waiting; %d dropped so far",
                self.path,
                len(self._pending),
                self.dropped,
            )

    def _write(self, batch: list[UsageRecord]) -> None:
        # attrgetter, not dataclasses.asdict: asdict deep-copies every field
        # and was most of this thread's CPU (it holds the GIL the loop needs).
        values = [v for r in batch for v in (*_BEFORE_DAY(r), _day(r.time), *_AFTER_DAY(r))]
        width = len(_COLUMNS) * _ROWS_PER_INSERT
        with self._lock:
            self._conn.execute("BEGIN")
            for start in range(0, len(values), width):
                part = values[start : start + width]
                self._conn.execute(_insert_rows(len(part) // len(_COLUMNS)), part)
            self._conn.execute("COMMIT")

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            # Shielded: the batch has left _pending, and a cancellation (the
            # writer task stopped at shutdown) before the thread starts would
            # drop it.  The write is one short transaction.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._write, batch)
        except sqlite3.Error:
            log.exception("usage ledger write failed; keeping %d records for retry", len(batch))
            self._pending[:0] = batch
            self._bound()
            raise

    async def run(self) -> None:
        while True:
            await anyio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except sqlite3.Error:
                await anyio.sleep(1.0)

    def _query(self, query: UsageQuery) -> list[UsageRow]:
        where, args = [], []
        for column, op, value in (
            ("user", "=", query.user),
            ("model", "=", query.model),
            ("time", ">=", query.since),
            ("time", "<", query.until),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        sql = (
            "SELECT COALESCE(user, ''), model, day, COUNT(*), SUM(prompt_tokens),"
            " SUM(completion_tokens) FROM usage"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [
            UsageRow(user=u, model=m, day=d, requests=n, prompt_tokens=p, completion_tokens=c)
            for u, m, d, n, p, c in rows
        ]

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        await self.flush()
        return await anyio.to_thread.run_sync(self._query, query)

    def query_sync(self, query: UsageQuery) -> list[UsageRow]:
        return self._query(query)

    def close_sync(self) -> None:
        with self._lock:
            self._conn.close()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.flush()
        with self._lock:
            self._conn.close()


# ---- redis -------------------------------------------------------------------

DEFAULT_RETENTION_DAYS = 400
REDIS_PREFIX = "usage:v1"
REDIS_MAX_PENDING = 100_000
_DAY_S = 86_400

# One record, written only if its request id is new in its user-day: the raw
# record, the day's aggregates and the user's day index change together or
# not at all, so a record written twice (a retried flush, a second gateway
# replaying it) counts once.
_RECORD_LUA = r"""
-- KEYS: raw hash, aggregate hash, day index (all of one user: one hash tag)
-- ARGV: request id, record JSON, model, prompt, completion, time, day,
--       day number, expire-at (ms), first day number kept, now (ms)
local raw, agg, days = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HSETNX', raw, ARGV[1], ARGV[2]) == 0 then return 0 end
local model = ARGV[3]
redis.call('HINCRBY', agg, 'n:' .. model, 1)
redis.call('HINCRBY', agg, 'p:' .. model, ARGV[4])
redis.call('HINCRBY', agg, 'c:' .. model, ARGV[5])
local t = tonumber(ARGV[6])
local lo = redis.call('HGET', agg, 't0')
if not lo or t < tonumber(lo) then redis.call('HSET', agg, 't0', ARGV[6]) end
local hi = redis.call('HGET', agg, 't1')
if not hi or t > tonumber(hi) then redis.call('HSET', agg, 't1', ARGV[6]) end
redis.call('ZADD', days, ARGV[8], ARGV[7])
redis.call('ZREMRANGEBYSCORE', days, '-inf', '(' .. ARGV[10])
local expire_at = tonumber(ARGV[9])
redis.call('PEXPIREAT', raw, expire_at)
redis.call('PEXPIREAT', agg, expire_at)
local ttl = redis.call('PTTL', days)
if ttl == -1 or ttl < expire_at - tonumber(ARGV[11]) then
  redis.call('PEXPIREAT', days, expire_at)
end
return 1
"""


def _day_number(day: str) -> int:
    return (date.fromisoformat(day) - _EPOCH).days


_EPOCH = date(1970, 1, 1)


class RedisLedger:
    """The usage ledger on Redis or Redis Cluster, shared by every gateway.

    **Keys.**  Everything about one user shares the hash tag ``{u:<user>}``
    (the user name percent-encoded, ``""`` for anonymous requests), so one
    record touches one cluster slot and no write needs a cross-slot
    transaction::

        usage:v1:{u:alice}:r:2026-11-26   hash  request id -> the record (JSON)
        usage:v1:{u:alice}:a:2026-11-26   hash  n:<model> requests, p:<model>
                                                prompt and c:<model> completion
                                                tokens; t0 / t1 the earliest and
                                                latest record time that day
        usage:v1:{u:alice}:days           zset  the user's days (score: days
                                                since 1970-01-01)
        usage:v1:users                    set   every user seen (percent-encoded)

    Days are UTC days of the request's start, as in the SQLite ledger.

    **Writes.**  :meth:`record` only queues (it never blocks the request
    path); :meth:`run` flushes every ``FLUSH_INTERVAL`` seconds, up to
    ``FLUSH_BATCH`` records per pipeline: one ``SADD`` of the batch's users
    and one ``EVALSHA`` per record (the script above: ``HSETNX`` of the raw
    record and, only if the request id is new there, the aggregates), sent
    in one round trip (on a cluster, one per node).  A failed flush keeps
    its records and is retried whole, which is safe because writes are
    idempotent by request id; after ``NOSCRIPT`` (a restarted server) the
    script is loaded again.  Records wait in memory meanwhile, at most
    ``max_pending`` of them (the oldest are dropped beyond, counted in
    ``dropped`` and logged).  :meth:`aclose` flushes what is left.

    **Reads.**  :meth:`query` reads the users' day indexes, then one
    aggregate hash per user and day; a day that a ``since``/``until`` bound
    cuts through (its ``t0``..``t1`` span is not wholly inside the filter)
    is answered from its raw records instead.  At most four round trips,
    whatever the number of records.

    **Retention.**  A day's raw records and aggregates expire
    ``retention_days`` (default 400, ``?retention_days=N`` in the URL)
    after the day ends; the user's day index drops older days.  The ledger
    is only as durable as Redis is configured to be (AOF or RDB); gateways
    themselves can restart at any time.  Memory: about 500 bytes per request
    (its raw record), plus about 100 bytes per user, model and day.

    **I/O.**  The synchronous redis-py client runs in worker threads (as
    the SQLite ledger does), so the ledger works on asyncio and trio alike
    and never holds the event loop.
    """

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster | Callable[[], Any],
        *,
        prefix: str = REDIS_PREFIX,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        max_pending: int = REDIS_MAX_PENDING,
        clock: Callable[[], float] = time.time,
        label: str = "usage ledger",
    ) -> None:
        if retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        # A client, or a factory called at first use: a cluster client
        # connects when built, and a gateway must start while Redis is away.
        self._client: Any = None if callable(client) else client
        self._factory = client if callable(client) else None
        self.prefix = prefix
        # Names the ledger in log lines, password redacted (see from_url).
        self.label = label
        self.retention_days = retention_days
        self.max_pending = max_pending
        self._clock = clock
        self._pending: deque[UsageRecord] = deque()
        self._sha: str | None = None
        self._lock: anyio.Lock | None = None
        self.dropped = 0
        self.written = 0  # records that were new to the ledger

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisLedger:
        """``redis://host:port/db``, ``rediss://...``, ``redis+cluster://host:port``,
        optionally with ``?retention_days=N``.  Other keyword arguments go to
        the redis-py client."""
        import redis
        import redis.cluster
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        base, _, query = url.partition("?")
        params = parse_qs(query, keep_blank_values=True)
        retention = params.pop("retention_days", None)
        if retention is not None:
            try:
                kwargs.setdefault("retention_days", int(retention[-1]))
            except ValueError:
                raise ValueError(f"retention_days must be a whole number in {url!r}") from None
        rest = urlencode(params, doseq=True)
        plain = base + (f"?{rest}" if rest else "")
        mine = ("prefix", "retention_days", "max_pending", "clock", "label")
        own = {k: kwargs.pop(k) for k in mine if k in kwargs}
        own.setdefault("label", f"usage ledger {redact_url(url)} (store.usage)")
        options: dict[str, Any] = {
            "socket_connect_timeout": 2.0,
            "socket_timeout": 5.0,
            "retry": Retry(NoBackoff(), 1),  # once at once; run() retries later
            **kwargs,
        }
        for scheme in ("redis+cluster://", "rediss+cluster://"):
            if plain.startswith(scheme):
                plain = scheme.replace("+cluster", "") + plain[len(scheme) :]
                factory = partial(redis.cluster.RedisCluster.from_url, plain, **options)
                return cls(factory, **own)
        return cls(redis.Redis.from_url(plain, **options), **own)

    @property
    def client(self) -> Any:
        """The redis-py client (built on first use from a URL)."""
        if self._client is None:
            assert self._factory is not None
            self._client = self._factory()
        return self._client

    # ---- keys ------------------------------------------------------------

    def _base(self, user: str) -> str:
        return f"{self.prefix}:{{u:{quote(user, safe='')}}}"

    def raw_key(self, user: str, day: str) -> str:
        return f"{self._base(user)}:r:{day}"

    def aggregate_key(self, user: str, day: str) -> str:
        return f"{self._base(user)}:a:{day}"

    def days_key(self, user: str) -> str:
        return f"{self._base(user)}:days"

    @property
    def users_key(self) -> str:
        return f"{self.prefix}:users"

    # ---- writing ---------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self._count_drop(1)
        self._pending.append(record)

    __call__ = record

    def _count_drop(self, n: int) -> None:
        before = self.dropped
        self.dropped += n
        if before == 0 or before // 1000 != self.dropped // 1000:
            log.error(
                "%s: Redis unreachable and %d records waiting; %d dropped so far",
                self.label,
                len(self._pending),
                self.dropped,
            )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _pipeline(self) -> Any:
        import redis.cluster

        if isinstance(self.client, redis.cluster.RedisCluster):
            return self.client.pipeline()  # type: ignore[no-untyped-call]
        return self.client.pipeline(transaction=False)

    def _record_call(self, record: UsageRecord, now_ms: int) -> tuple[list[str], list[Any]] | None:
        user = record.user or ""
        day = _day(record.time)
        number = _day_number(day)
        expire_at_ms = (number + 1 + self.retention_days) * _DAY_S * 1000
        if expire_at_ms <= now_ms:
            return None  # older than the retention: it would expire at once
        keys = [self.raw_key(user, day), self.aggregate_key(user, day), self.days_key(user)]
        args: list[Any] = [
            record.request_id,
            orjson.dumps(record),  # orjson writes a dataclass as asdict would, without the copy
            record.model,
            int(record.prompt_tokens),
            int(record.completion_tokens),
            repr(float(record.time)),
            day,
            number,
            expire_at_ms,
            now_ms // 1000 // _DAY_S - self.retention_days,
            now_ms,
        ]
        return keys, args

    def _write(self, batch: list[UsageRecord]) -> int:
        """Write one batch (worker thread); returns how many records were new."""
        from redis.exceptions import NoScriptError

        now_ms = int(self._clock() * 1000)
        calls = [c for c in (self._record_call(r, now_ms) for r in batch) if c is not None]
        if not calls:
            return 0
        users = sorted({quote(r.user or "", safe="") for r in batch})
        for attempt in range(2):
            if self._sha is None:
                self._sha = str(self.client.script_load(_RECORD_LUA))
            pipe = self._pipeline()
            pipe.sadd(self.users_key, *users)
            for keys, args in calls:
                pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
            results = pipe.execute(raise_on_error=False)
            errors = [r for r in results if isinstance(r, BaseException)]
            if not errors:
                return sum(1 for r in results[1:] if r == 1)
            if attempt == 0 and all(isinstance(e, NoScriptError) for e in errors):
                self._sha = None  # the server lost its script cache: load it, rewrite all
                continue
            raise errors[0]
        raise AssertionError("unreachable")

    def _flush_lock(self) -> anyio.Lock:
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    async def flush(self) -> None:
        """Write every queued record; on failure they stay queued and it raises."""
        async with self._flush_lock():
            while self._pending:
                size = min(FLUSH_BATCH, len(self._pending))
                batch = [self._pending.popleft() for _ in range(size)]
                try:
                    self.written += await anyio.to_thread.run_sync(self._write, batch)
                except BaseException:
                    self._pending.extendleft(reversed(batch))
                    excess = len(self._pending) - self.max_pending
                    if excess > 0:
                        for _ in range(excess):
                            self._pending.popleft()
                        self._count_drop(excess)
                    raise

    async def run(self) -> None:
        failing = False
        while True:
            await anyio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception as exc:
                if not failing:
                    log.error(
                        "%s: write failed (%r); keeping %d records for retry",
                        self.label,
                        exc,
                        len(self._pending),
                    )
                failing = True
                await anyio.sleep(1.0)
            else:
                if failing:
                    log.warning("%s: writes recovered", self.label)
                failing = False

    # ---- reading ---------------------------------------------------------

    async def query(self, query: UsageQuery) -> list[UsageRow]:
        try:
            await self.flush()
        except Exception as exc:  # answer from what is stored; the records stay queued
            log.warning("%s: flush before a query failed: %r", self.label, exc)
        return await anyio.to_thread.run_sync(self.query_sync, query)

    def query_sync(self, query: UsageQuery) -> list[UsageRow]:
        """The rows for ``query`` from what is stored (not what is queued)."""
        if query.user is not None:
            users = [query.user]
        else:
            users = sorted(unquote(_text(m)) for m in self.client.smembers(self.users_key))
        if not users:
            return []
        # Widened by a day each way: a record's day is that of its rounded
        # timestamp; the t0..t1 spans below decide exactly.
        lo = "-inf" if query.since is None else str(math.floor(query.since / _DAY_S) - 1)
        hi = "+inf" if query.until is None else str(math.ceil(query.until / _DAY_S) + 1)
        pipe = self._pipeline()
        for user in users:
            pipe.zrangebyscore(self.days_key(user), lo, hi)
        user_days = [
            (user, _text(day))
            for user, days in zip(users, pipe.execute(), strict=True)
            for day in days
        ]
        if not user_days:
            return []
        pipe = self._pipeline()
        for user, day in user_days:
            pipe.hgetall(self.aggregate_key(user, day))
        totals: Totals = {}
        partial: list[tuple[str, str]] = []
        for (user, day), agg in zip(user_days, pipe.execute(), strict=True):
            fields = {_text(k): v for k, v in agg.items()}
            if "t0" not in fields:
                continue  # expired meanwhile
            span = day_span(query, float(fields["t0"]), float(fields["t1"]))
            if span is DaySpan.RAW:
                partial.append((user, day))
            elif span is DaySpan.WHOLE:
                add_day_aggregate(totals, query, user, day, fields)
        if partial:
            pipe = self._pipeline()
            for user, day in partial:
                pipe.hvals(self.raw_key(user, day))
            for (user, day), raws in zip(partial, pipe.execute(), strict=True):
                for raw in raws:
                    r = orjson.loads(raw)
                    add_record(
                        totals, query, user=user, model=r["model"], ts=r["time"],
                        prompt=r["prompt_tokens"], completion=r["completion_tokens"], day=day,
                    )  # fmt: skip
        return rows_from_totals(totals)

    def close_sync(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.flush()
            except Exception as exc:
                log.error("%s: %d records not written at close: %r", self.label, self.pending, exc)
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(self._client.close)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


_REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")


def open_ledger(url: str) -> UsageLedger:
    """A ledger from ``store.usage``: ``sqlite:///path``, ``memory://``, or a
    Redis URL (``redis://host:port/db``, ``redis+cluster://host:port``)."""
    if url.startswith("sqlite:///"):
        path, _, query = url[len("sqlite:///") :].partition("?")
        mode = parse_qs(query).get("synchronous", ["normal"])[-1].lower()
        return SQLiteLedger(path, synchronous="full" if mode == "full" else "normal")
    if url == "memory://":
        return MemoryLedger()
    if url.startswith(_REDIS_SCHEMES):
        return RedisLedger.from_url(url)
    raise ValueError(
        f"unsupported usage ledger URL: {url!r}"
        " (use sqlite:///PATH, memory://, redis://HOST:PORT/DB or redis+cluster://HOST:PORT)"
    )
