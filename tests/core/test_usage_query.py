"""Usage-ledger filters and rendering."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sansio_gateway.accounting.usage_query import (
    UsageQuery,
    UsageRow,
    aggregate,
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


# ---- aggregate: grouping raw records, as the memory and Redis ledgers do ----

DAY1 = parse_time("2026-11-25", param="since")
DAY2 = DAY1 + 86_400


@dataclass(frozen=True)
class _Record:
    """What aggregation reads of a usage record (``RecordLike``)."""

    user: str | None
    model: str
    time: float
    prompt_tokens: int
    completion_tokens: int


def _record(
    rid: str,
    *,
    user: str | None = "alice",
    model: str = "m1",
    at: float = DAY1 + 60,
    prompt: int = 10,
    completion: int = 5,
) -> _Record:
    return _Record(
        user=user, model=model, time=at, prompt_tokens=prompt, completion_tokens=completion
    )


def _rows(rows: list[UsageRow]) -> list[tuple[str, str, str, int, int, int]]:
    return [
        (r.user, r.model, r.day, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows
    ]


def test_aggregate_groups_per_user_model_and_utc_day_sorted() -> None:
    records = [
        _record("1", user="bob"),
        _record("2", model="m2"),
        _record("3", at=DAY2 - 0.5, completion=7),  # still the first day, in UTC
        _record("4", at=DAY2),  # the first second of the next day
        _record("5"),
    ]
    assert _rows(aggregate(records, UsageQuery())) == [
        ("alice", "m1", "2026-11-25", 2, 20, 12),
        ("alice", "m1", "2026-11-26", 1, 10, 5),
        ("alice", "m2", "2026-11-25", 1, 10, 5),
        ("bob", "m1", "2026-11-25", 1, 10, 5),
    ]


def test_aggregate_applies_every_filter() -> None:
    records = [
        _record("1"),
        _record("2", user="bob"),
        _record("3", model="m2"),
        _record("4", at=DAY2 + 10),
    ]
    assert _rows(aggregate(records, UsageQuery(user="bob"))) == [
        ("bob", "m1", "2026-11-25", 1, 10, 5)
    ]
    assert [r.model for r in aggregate(records, UsageQuery(model="m2"))] == ["m2"]
    assert [r.day for r in aggregate(records, UsageQuery(since=DAY2))] == ["2026-11-26"]
    # ``until`` is exclusive: a record at exactly ``until`` is left out.
    assert _rows(aggregate(records, UsageQuery(until=DAY2 + 10))) == [
        ("alice", "m1", "2026-11-25", 1, 10, 5),
        ("alice", "m2", "2026-11-25", 1, 10, 5),
        ("bob", "m1", "2026-11-25", 1, 10, 5),
    ]
    assert aggregate(records, UsageQuery(user="alice", model="m1", since=DAY2 + 11)) == []


def test_aggregate_counts_an_anonymous_record_under_the_empty_user() -> None:
    rows = aggregate([_record("1", user=None), _record("2", user=None)], UsageQuery())
    assert _rows(rows) == [("", "m1", "2026-11-25", 2, 20, 10)]
    assert aggregate([_record("1", user=None)], UsageQuery(user="alice")) == []


def test_aggregate_of_nothing_is_no_rows() -> None:
    assert aggregate([], UsageQuery()) == []
