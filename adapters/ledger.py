"""The usage ledger: every request that reached a backend, kept.

``record`` is called from the request path and must never block it, so
records are queued and written in batches by ``run`` (a background task)
on a worker thread -- at the latest ``FLUSH_INTERVAL`` seconds after they
arrive, sooner when many are waiting.  ``aclose`` writes whatever is left,
so a graceful shutdown loses nothing.  SQLite runs in WAL mode; rows are
keyed by request id, so writing the same record twice is harmless.

Ledgers: :class:`SQLiteLedger` (the default, survives restarts) and
:class:`MemoryLedger` (tests, or ``usage = "memory://"``).  A Redis ledger
lives with the Redis stores.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread

from sansio_gateway.actions import UsageRecord
from sansio_gateway.usage_query import UsageQuery, UsageRow

__all__ = ["MemoryLedger", "SQLiteLedger", "UsageLedger", "open_ledger"]

log = logging.getLogger("sansio_gateway.ledger")

FLUSH_INTERVAL = 0.05
FLUSH_BATCH = 500


class UsageLedger(Protocol):
    def record(self, record: UsageRecord) -> None: ...

    async def query(self, query: UsageQuery) -> list[UsageRow]: ...

    async def run(self) -> None: ...

    async def aclose(self) -> None: ...


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def aggregate(records: Iterable[UsageRecord], query: UsageQuery) -> list[UsageRow]:
    """Group records per (user, model, day) under the query's filters."""
    totals: dict[tuple[str, str, str], list[int]] = {}
    for r in records:
        user = r.user or ""
        if query.user is not None and user != query.user:
            continue
        if query.model is not None and r.model != query.model:
            continue
        if query.since is not None and r.time < query.since:
            continue
        if query.until is not None and r.time >= query.until:
            continue
        t = totals.setdefault((user, r.model, _day(r.time)), [0, 0, 0])
        t[0] += 1
        t[1] += r.prompt_tokens
        t[2] += r.completion_tokens
    return [
        UsageRow(user=u, model=m, day=d, requests=n, prompt_tokens=p, completion_tokens=c)
        for (u, m, d), (n, p, c) in sorted(totals.items())
    ]


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
_INSERT = (
    f"INSERT OR REPLACE INTO usage ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


class SQLiteLedger:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._pending: list[UsageRecord] = []
        self._wake = threading.Event()
        self._lock = threading.Lock()  # one connection, used from worker threads
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        # Several workers may write at once; wait for the lock, don't fail.
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(_SCHEMA)

    def record(self, record: UsageRecord) -> None:
        self._pending.append(record)

    __call__ = record

    def _write(self, batch: list[UsageRecord]) -> None:
        rows = []
        for record in batch:
            values = asdict(record)
            values["day"] = _day(record.time)
            rows.append(tuple(values[c] for c in _COLUMNS))
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(_INSERT, rows)
            self._conn.execute("COMMIT")

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await anyio.to_thread.run_sync(self._write, batch)
        except sqlite3.Error:
            log.exception("usage ledger write failed; keeping %d records for retry", len(batch))
            self._pending[:0] = batch
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

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.flush()
        with self._lock:
            self._conn.close()


def open_ledger(url: str) -> UsageLedger:
    """A ledger from ``store.usage``: ``sqlite:///path`` or ``memory://``."""
    if url.startswith("sqlite:///"):
        return SQLiteLedger(url[len("sqlite:///") :])
    if url == "memory://":
        return MemoryLedger()
    raise ValueError(f"unsupported usage ledger URL: {url!r} (use sqlite:///PATH or memory://)")
