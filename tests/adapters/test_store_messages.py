"""Store and ledger errors name their URL (password redacted) and config key
(issue 16, item 5)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sansio_gateway.adapters.ledger import RedisLedger
from sansio_gateway.adapters.limit_stores import open_limit_store

from sansio_gateway.actions import UsageRecord
from sansio_gateway.config import LimitsConfig, StoreConfig
from sansio_gateway.limits import Costs, build_specs
from tests.redis_servers import free_port


def test_a_failing_limit_store_is_named_without_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    store = open_limit_store(StoreConfig(url=f"redis://:hunter2@127.0.0.1:{port}/0"))
    specs = build_specs(LimitsConfig(requests_per_minute=6), "u", "m")

    async def go() -> None:
        # Warm-up is where a store that does not answer is first reported.
        await store.warm()  # type: ignore[attr-defined]
        await store.admit("u", specs, Costs(tokens=1), "a")
        await store.aclose()

    with caplog.at_level(logging.WARNING):
        asyncio.run(go())
    assert f"redis://:***@127.0.0.1:{port}/0 (store.url)" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_failing_redis_ledger_is_named_without_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    ledger = RedisLedger.from_url(f"redis://:hunter2@127.0.0.1:{port}/0", max_pending=1)
    record = UsageRecord(
        request_id="r", time=0.0, key_id="k", user="u", model="m", resolved_model="m",
        backend="b", surface="openai", route="chat.completions", prompt_tokens=1,
        completion_tokens=1, status=200, latency=0.1, ttft=None, outcome="ok",
        usage_reported=True,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        ledger.record(record)
        ledger.record(record)  # past max_pending: the drop is logged
        asyncio.run(ledger.aclose())
    assert f"redis://:***@127.0.0.1:{port}/0 (store.usage)" in caplog.text
    assert "hunter2" not in caplog.text
