"""The SQLite usage ledger: batching, filters, restart survival, idempotence."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest
from sansio_gateway.adapters.ledger import MemoryLedger, SQLiteLedger, open_ledger

from sansio_gateway.accounting.usage_query import UsageQuery, aggregate, parse_time
from sansio_gateway.actions import UsageRecord

DAY1 = parse_time("2026-11-25", param="t") + 3600
DAY2 = parse_time("2026-11-26", param="t") + 3600


def rec(
    request_id: str,
    *,
    user: str = "alice",
    model: str = "m1",
    time: float = DAY1,
    prompt: int = 10,
    completion: int = 5,
) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        time=time,
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


RECORDS = [
    rec("1"),
    rec("2", completion=7),
    rec("3", user="bob"),
    rec("4", model="m2"),
    rec("5", time=DAY2),
]


def run(coro_fn, *args):  # type: ignore[no-untyped-def]
    return anyio.run(coro_fn, *args)


def test_sqlite_ledger_groups_per_user_model_day_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"

    async def write_and_read() -> list:  # type: ignore[type-arg]
        ledger = SQLiteLedger(path)
        for r in RECORDS:
            ledger.record(r)
        rows = await ledger.query(UsageQuery())
        await ledger.aclose()
        return rows

    rows = run(write_and_read)
    assert [
        (r.user, r.model, r.day, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows
    ] == [
        ("alice", "m1", "2026-11-25", 2, 20, 12),
        ("alice", "m1", "2026-11-26", 1, 10, 5),
        ("alice", "m2", "2026-11-25", 1, 10, 5),
        ("bob", "m1", "2026-11-25", 1, 10, 5),
    ]
    reopened = SQLiteLedger(path)
    assert reopened.query_sync(UsageQuery()) == rows
    assert reopened.query_sync(UsageQuery(user="bob"))[0].user == "bob"
    assert [r.day for r in reopened.query_sync(UsageQuery(since=DAY2 - 3600))] == ["2026-11-26"]
    assert len(reopened.query_sync(UsageQuery(until=DAY2 - 3600))) == 3
    assert [r.model for r in reopened.query_sync(UsageQuery(model="m2"))] == ["m2"]


def test_writing_a_record_twice_counts_it_once(tmp_path: Path) -> None:
    async def go() -> int:
        ledger = SQLiteLedger(tmp_path / "u.db")
        ledger.record(rec("same"))
        await ledger.flush()
        ledger.record(rec("same"))
        rows = await ledger.query(UsageQuery())
        await ledger.aclose()
        return rows[0].requests

    assert run(go) == 1


def test_close_flushes_pending_records(tmp_path: Path) -> None:
    async def go() -> None:
        ledger = SQLiteLedger(tmp_path / "u.db")
        ledger.record(rec("x"))
        await ledger.aclose()

    run(go)
    assert SQLiteLedger(tmp_path / "u.db").query_sync(UsageQuery())[0].requests == 1


def test_memory_ledger_agrees_with_sqlite(tmp_path: Path) -> None:
    memory = MemoryLedger()
    for r in RECORDS:
        memory.record(r)
    sqlite = SQLiteLedger(tmp_path / "u.db")
    for r in RECORDS:
        sqlite.record(r)
    for query in [UsageQuery(), UsageQuery(user="alice"), UsageQuery(model="m1", since=DAY2 - 10)]:
        assert run(memory.query, query) == run(sqlite.query, query)
    assert aggregate(RECORDS, UsageQuery(user="nobody")) == []


def test_open_ledger_urls(tmp_path: Path) -> None:
    assert isinstance(open_ledger("memory://"), MemoryLedger)
    assert isinstance(open_ledger(f"sqlite:///{tmp_path}/x.db"), SQLiteLedger)
    with pytest.raises(ValueError, match="unsupported"):
        open_ledger("postgres://nope")


def test_workers_opening_one_new_ledger_at_once_all_open_it(tmp_path: Path) -> None:
    # serve --workers N: every worker opens the same new SQLite file as it
    # starts; switching it to WAL failed at once with "database is locked"
    # for one of them now and then (a worker then died at startup).
    for trial in range(60):
        path = tmp_path / f"usage-{trial}.db"
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_it(
            path: Path = path,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                SQLiteLedger(path)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, (trial, errors)


@pytest.mark.parametrize("size", [1, 57, 58, 59, 117, 300])
def test_a_batch_of_any_size_lands_whole_with_every_field(tmp_path: Path, size: int) -> None:
    """A batch goes in as INSERT statements of many rows each (the last one
    shorter): every record lands once, each column where it belongs."""
    ledger = SQLiteLedger(tmp_path / "u.db")
    batch = [
        rec(f"r{i}", user=f"u{i % 3}", prompt=i, completion=2 * i, time=DAY1 + i)
        for i in range(size)
    ]
    batch[0] = dataclasses.replace(batch[0], ttft=None, key_id=None, usage_reported=False)
    ledger._write(batch)
    ledger._write(batch[: size // 2])  # written again: replaced, not doubled
    rows = sqlite3.connect(tmp_path / "u.db").execute(
        "SELECT request_id, time, day, key_id, user, prompt_tokens, completion_tokens, ttft,"
        " usage_reported FROM usage ORDER BY time"
    ).fetchall()
    assert len(rows) == size
    for i, row in enumerate(rows):
        record = batch[i]
        assert row == (
            record.request_id, record.time, "2026-11-25", record.key_id, record.user,
            record.prompt_tokens, record.completion_tokens, record.ttft,
            int(record.usage_reported),
        )  # fmt: skip
    assert rows[0][3] is None and rows[0][7] is None and rows[0][8] == 0
