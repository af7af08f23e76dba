"""Usage-ledger filters and rendering."""

from __future__ import annotations

import pytest

from sansio_gateway.errors import InvalidRequest
from sansio_gateway.usage_query import (
    UsageQuery,
    UsageRow,
    parse_time,
    parse_usage_query,
    render_rows,
)


def test_dates_times_and_unix_seconds() -> None:
    assert parse_time("2026-11-26", param="since") == 1_795_651_200
    assert parse_time("2026-11-26", param="until", end_of_day=True) == 1_795_651_200 + 86_400
    assert parse_time("2026-11-26T01:00:00Z", param="since") == 1_795_651_200 + 3600
    assert parse_time("2026-11-26T01:00:00", param="since") == 1_795_651_200 + 3600
    assert parse_time("1795651200.5", param="since") == 1_795_651_200.5


def test_bad_filters_name_the_param() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_usage_query("since=yesterday")
    assert info.value.param == "since"
    with pytest.raises(InvalidRequest) as info:
        parse_usage_query("colour=blue")
    assert info.value.param == "colour"


def test_query_string() -> None:
    q = parse_usage_query("user=alice&model=llama3.2%3A1b&since=2026-11-01&until=2026-11-30")
    assert q.user == "alice" and q.model == "llama3.2:1b"
    assert q.since == parse_time("2026-11-01", param="since")
    assert q.until == parse_time("2026-12-01", param="until")
    assert parse_usage_query("") == UsageQuery()


def test_render_rows_adds_totals() -> None:
    rows = [
        UsageRow(
            user="a", model="m", day="2026-11-26", requests=2, prompt_tokens=3, completion_tokens=4
        )
    ]
    out = render_rows(UsageQuery(user="a"), rows)
    assert out["data"][0]["total_tokens"] == 7
    assert out["filters"]["user"] == "a"
