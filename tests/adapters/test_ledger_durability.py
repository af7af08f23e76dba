"""Ledger durability (issue 17, item 12): bounded queues, the synchronous
option, and the URL checks that go with it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from sansio_gateway.adapters.ledger import RedisLedger, SQLiteLedger, open_ledger

from sansio_gateway.accounting.usage_query import UsageQuery
from sansio_gateway.actions import UsageRecord
from sansio_gateway.config import ConfigError, parse_config


def rec(n: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"r{n}", time=1_795_651_200.0 + n, key_id="k", user="u", model="m",
        resolved_model="m", backend="b", surface="openai", route="chat.completions",
        prompt_tokens=1, completion_tokens=1, status=200, latency=0.1, ttft=None,
        outcome="ok", usage_reported=True,
    )  # fmt: skip


def test_the_sqlite_queue_is_bounded_while_sqlite_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = SQLiteLedger(tmp_path / "u.db", max_pending=3)

    def failing(batch: list[UsageRecord]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(ledger, "_write", failing)
    for i in range(5):
        ledger.record(rec(i))
    assert len(ledger._pending) == 3 and ledger.dropped == 2
    assert [r.request_id for r in ledger._pending] == ["r2", "r3", "r4"]  # the oldest went

    async def flush_fails() -> None:
        with pytest.raises(sqlite3.OperationalError):
            await ledger.flush()

    ledger.record(rec(5))
    anyio.run(flush_fails)
    assert len(ledger._pending) == 3 and ledger.dropped == 3  # still bounded after a retry
    monkeypatch.undo()
    anyio.run(ledger.aclose)
    [row] = SQLiteLedger(tmp_path / "u.db").query_sync(UsageQuery())
    assert row.requests == 3  # what was kept is written when SQLite works again


def _synchronous(ledger: SQLiteLedger) -> int:
    return int(ledger._conn.execute("PRAGMA synchronous").fetchone()[0])


def test_synchronous_full_is_an_option_of_the_url(tmp_path: Path) -> None:
    normal = open_ledger(f"sqlite:///{tmp_path}/a.db")
    full = open_ledger(f"sqlite:///{tmp_path}/b.db?synchronous=full")
    assert isinstance(normal, SQLiteLedger) and isinstance(full, SQLiteLedger)
    assert (_synchronous(normal), _synchronous(full)) == (1, 2)  # NORMAL, FULL
    assert full.path == f"{tmp_path}/b.db"
    normal.close_sync()
    full.close_sync()


@pytest.mark.parametrize(
    "usage", ["sqlite:///./u.db?synchronous=extra", "sqlite:///./u.db?journal=off"]
)
def test_unknown_sqlite_options_are_refused(usage: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f'[store]\nusage = "{usage}"\n', source="gw.toml", env={})
    assert "gw.toml: store.usage: " in str(info.value)
    parse_config('[store]\nusage = "sqlite:///./u.db?synchronous=full"\n', source="g", env={})


def test_the_redis_queue_stays_bounded() -> None:
    ledger = RedisLedger.from_url("redis://127.0.0.1:1/0", max_pending=2)
    for i in range(4):
        ledger.record(rec(i))
    assert ledger.pending == 2 and ledger.dropped == 2
    anyio.run(ledger.aclose)
