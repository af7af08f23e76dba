"""``sansio-gateway usage`` reads the configured ledger wherever it is --
SQLite, Redis, Redis Cluster -- and prints the same rows for the same
records (issue 16, item 8); ``/admin/usage`` answers JSON with totals, or
CSV (item 9)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from sansio_gateway.adapters.ledger import RedisLedger, SQLiteLedger, UsageLedger, open_ledger

from sansio_gateway.actions import UsageRecord
from sansio_gateway.auth import hash_key
from tests.emulators.ollama import OllamaEmulator
from tests.helpers import make_config, running_gateway
from tests.redis_servers import redis_cluster, redis_server

DAY = 1_795_651_200.0  # 2026-11-26T00:00:00Z
CLI = [sys.executable, "-m", "sansio_gateway.adapters.cli"]


def rec(n: int, user: str, model: str, at: float) -> UsageRecord:
    return UsageRecord(
        request_id=f"r{n}", time=at, key_id="k", user=user, model=model, resolved_model=model,
        backend="b", surface="openai", route="chat.completions", prompt_tokens=10 + n,
        completion_tokens=n, status=200, latency=0.1, ttft=None, outcome="ok",
        usage_reported=True,
    )  # fmt: skip


RECORDS = [
    rec(i, user, model, DAY + 3600 * (i % 40))
    for i, (user, model) in enumerate(
        [("alice", "m1"), ("bob", "m1"), ("alice", "m2"), ("bob", "m2")] * 10
    )
]


def _fill(ledger: UsageLedger) -> None:
    async def go() -> None:
        for record in RECORDS:
            ledger.record(record)
        assert isinstance(ledger, SQLiteLedger | RedisLedger)
        await ledger.flush()
        await ledger.aclose()

    anyio.run(go)


@pytest.fixture(scope="module", params=["sqlite", "redis", "cluster"])
def usage_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('usage')}/usage.db"
        _fill(open_ledger(url))
        yield url
    elif request.param == "redis":
        with redis_server() as server:
            _fill(open_ledger(server.url))
            yield server.url
    else:
        with redis_cluster() as ports:
            url = f"redis+cluster://127.0.0.1:{ports[0]}"
            _fill(open_ledger(url))
            yield url


def usage(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "gw.toml"
    config.write_text(f'[store]\nusage = "{url}"\n')
    return subprocess.run(
        [*CLI, "usage", "--config", str(config), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "filters",
    [
        (),
        ("--user", "alice"),
        ("--model", "m2"),
        ("--since", "2026-11-26T05:00:00Z", "--until", "2026-11-27T03:00:00Z"),
        ("--user", "bob", "--until", "2026-11-26"),
    ],
)
def test_the_cli_prints_the_same_rows_from_every_ledger(
    usage_url: str, filters: tuple[str, ...], tmp_path: Path
) -> None:
    from sansio_gateway.accounting.usage_query import (
        UsageQuery,
        aggregate,
        parse_time,
        render_table,
    )

    args = dict(zip(filters[::2], filters[1::2], strict=True))
    query = UsageQuery(
        user=args.get("--user"),
        model=args.get("--model"),
        since=parse_time(args["--since"], param="since") if "--since" in args else None,
        until=(
            parse_time(args["--until"], param="until", end_of_day=True)
            if "--until" in args
            else None
        ),
    )
    expected = aggregate(RECORDS, query)  # the core's reference aggregation
    table = usage(usage_url, tmp_path, *filters)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == render_table(expected)
    as_json = usage(usage_url, tmp_path, "--json", *filters)
    assert [row["requests"] for row in json.loads(as_json.stdout)] == [
        row.requests for row in expected
    ]
    as_csv = usage(usage_url, tmp_path, "--csv", *filters)
    lines = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert lines[0][0] == "day" and len(lines) == len(expected) + 1


def test_an_unreachable_redis_ledger_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    from tests.redis_servers import free_port

    result = usage(f"redis://:pw@127.0.0.1:{free_port()}/0", tmp_path)
    assert result.returncode == 1
    assert "store.usage = redis://:***@" in result.stderr and "Traceback" not in result.stderr


ADMIN_KEY = "sk-admin-test"


def test_admin_usage_answers_json_with_totals_or_csv(emulator: OllamaEmulator) -> None:
    config = make_config(
        f'[[backends]]\nname = "local"\nurl = "{emulator.url}"\n'
        f'[[auth.keys]]\nid = "admin"\nuser = "ops"\nsha256 = "{hash_key(ADMIN_KEY)}"\n'
        "admin = true\n"
    )
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
    with running_gateway(config) as gw, httpx.Client(base_url=gw.url, headers=headers) as c:
        for _ in range(2):
            assert c.post("/v1/chat/completions", json=body).status_code == 200
        answer = c.get("/admin/usage").json()
        [row] = answer["data"]
        assert answer["totals"] == {
            "requests": 2,
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "total_tokens": row["total_tokens"],
        }
        for response in (
            c.get("/admin/usage", params={"format": "csv"}),
            c.get("/admin/usage", headers={"accept": "text/csv"}),
        ):
            assert response.headers["content-type"].startswith("text/csv")
            lines = list(csv.reader(io.StringIO(response.text)))
            assert lines[0] == [
                "day", "user", "model", "requests", "prompt_tokens", "completion_tokens",
                "total_tokens",
            ]  # fmt: skip
            assert lines[1][1:4] == ["ops", "llama3.2:1b", "2"]
        bad = c.get("/admin/usage", params={"format": "xml"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "format"
