"""Usage-ledger filters and rendering."""

from __future__ import annotations

import pytest

from sansio_gateway.accounting.usage_query import (
    UsageQuery,
    UsageRow,
    parse_time,
    parse_usage_query,
    render_rows,
)
from sansio_gateway.errors import InvalidRequest


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


def test_format_comes_from_the_query_or_the_accept_header() -> None:
    assert parse_usage_query("").format == "json"
    assert parse_usage_query("format=csv").format == "csv"
    assert parse_usage_query("", accept="text/csv").format == "csv"
    assert parse_usage_query("format=json", accept="text/csv").format == "json"
    with pytest.raises(InvalidRequest) as info:
        parse_usage_query("format=xml")
    assert info.value.param == "format"


def test_json_has_totals_and_csv_and_the_table_agree() -> None:
    from sansio_gateway.accounting.usage_query import render_csv, render_table, render_usage

    rows = [
        UsageRow(user="a", model="m", day="2026-11-26", requests=2, prompt_tokens=10,
                 completion_tokens=5),
        UsageRow(user="b", model="m", day="2026-11-26", requests=1, prompt_tokens=3,
                 completion_tokens=4),
    ]  # fmt: skip
    assert render_rows(UsageQuery(), rows)["totals"] == {
        "requests": 3, "prompt_tokens": 13, "completion_tokens": 9, "total_tokens": 22,
    }  # fmt: skip
    assert render_csv(rows).splitlines()[1] == "2026-11-26,a,m,2,10,5,15"
    assert render_table(rows)[-1].split() == ["total", "3", "13", "9"]
    content_type, body = render_usage(UsageQuery(format="csv"), rows)
    assert content_type.startswith(b"text/csv") and body.decode() == render_csv(rows)


def test_a_day_is_read_whole_cut_or_skipped() -> None:
    from sansio_gateway.accounting.usage_query import DaySpan, day_span

    q = UsageQuery(since=100.0, until=200.0)
    assert day_span(q, 120.0, 180.0) is DaySpan.WHOLE
    assert day_span(q, 50.0, 150.0) is DaySpan.RAW
    assert day_span(q, 150.0, 250.0) is DaySpan.RAW
    assert day_span(q, 10.0, 99.0) is DaySpan.SKIP
    assert day_span(q, 200.0, 300.0) is DaySpan.SKIP
    assert day_span(UsageQuery(), 0.0, 1e12) is DaySpan.WHOLE
