"""Usage-ledger queries: filters in, per-(user, model, day) rows out.

Theory of operation: ``GET /admin/usage?user=&model=&since=&until=`` and
``sansio-gateway usage`` both parse their filters here into a
:class:`UsageQuery`; the adapter's ledger (SQLite, Redis or Redis Cluster)
executes it and returns :class:`UsageRow` values, which are rendered here
(JSON with totals, CSV, or the CLI's table).  What a ledger computes
without SQL -- grouping raw records (:func:`aggregate`), and the Redis
ledger's choice between a day's aggregates and its raw records
(:func:`day_span`, :func:`add_day_aggregate`) -- is decided here too, so
every ledger answers one query the same way.  Dates are UTC:
``since`` and ``until`` accept ``YYYY-MM-DD``, an ISO 8601 timestamp, or
Unix seconds; ``until`` is exclusive, and a bare date as ``until`` means the
end of that day.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

import orjson

from ..errors import InvalidRequest

__all__ = [
    "DaySpan",
    "RecordLike",
    "Totals",
    "UsageQuery",
    "UsageRow",
    "add_day_aggregate",
    "add_record",
    "aggregate",
    "day_of",
    "day_span",
    "parse_time",
    "parse_usage_query",
    "render_csv",
    "render_rows",
    "render_table",
    "render_usage",
    "rows_from_totals",
    "totals",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageQuery:
    user: str | None = None
    model: str | None = None
    since: float | None = None  # unix seconds, inclusive
    until: float | None = None  # unix seconds, exclusive
    format: Literal["json", "csv"] = "json"  # how /admin/usage answers


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRow:
    user: str
    model: str
    day: str  # YYYY-MM-DD, UTC
    requests: int
    prompt_tokens: int
    completion_tokens: int


def parse_time(value: str, *, param: str, end_of_day: bool = False) -> float:
    """A filter bound as unix seconds; raises InvalidRequest naming ``param``."""
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return (start + timedelta(days=1 if end_of_day else 0)).timestamp()
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"{param} must be YYYY-MM-DD, an ISO 8601 time or unix seconds, not {value!r}",
            param=param,
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_usage_query(query_string: str, *, accept: str = "") -> UsageQuery:
    """Filters from ``/admin/usage``'s query string; CSV when ``format=csv``
    or when ``accept`` (the Accept header) asks for ``text/csv``."""
    params = parse_qs(query_string, keep_blank_values=False)
    unknown = set(params) - {"user", "model", "since", "until", "format"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"Unknown filter: {name}", param=name)

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    since = one("since")
    until = one("until")
    wanted = one("format") or ("csv" if "text/csv" in accept.lower() else "json")
    if wanted not in ("json", "csv"):
        raise InvalidRequest(f"format must be json or csv, not {wanted!r}", param="format")
    return UsageQuery(
        user=one("user"),
        model=one("model"),
        since=parse_time(since, param="since") if since else None,
        until=parse_time(until, param="until", end_of_day=True) if until else None,
        format="csv" if wanted == "csv" else "json",
    )


def totals(rows: Iterable[UsageRow]) -> dict[str, int]:
    """The sums over ``rows``: what the filters matched, all days together."""
    out = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for row in rows:
        out["requests"] += row.requests
        out["prompt_tokens"] += row.prompt_tokens
        out["completion_tokens"] += row.completion_tokens
        out["total_tokens"] += row.prompt_tokens + row.completion_tokens
    return out


def render_rows(query: UsageQuery, rows: list[UsageRow]) -> dict[str, Any]:
    """The JSON answer: the filters, one row per (user, model, day), totals."""
    return {
        "object": "list",
        "filters": {
            "user": query.user,
            "model": query.model,
            "since": query.since,
            "until": query.until,
        },
        "data": [
            {
                "user": row.user,
                "model": row.model,
                "day": row.day,
                "requests": row.requests,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "total_tokens": row.prompt_tokens + row.completion_tokens,
            }
            for row in rows
        ],
        "totals": totals(rows),
    }


CSV_COLUMNS = (
    "day", "user", "model", "requests", "prompt_tokens", "completion_tokens", "total_tokens",
)  # fmt: skip


def render_csv(rows: list[UsageRow]) -> str:
    """One header line, then one line per row (no totals line: sum the columns)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            (row.day, row.user, row.model, row.requests, row.prompt_tokens,
             row.completion_tokens, row.prompt_tokens + row.completion_tokens)
        )  # fmt: skip
    return out.getvalue()


def render_usage(query: UsageQuery, rows: list[UsageRow]) -> tuple[bytes, bytes]:
    """``(content type, body)`` of ``/admin/usage`` in the query's format."""
    if query.format == "csv":
        return b"text/csv; charset=utf-8", render_csv(rows).encode("utf-8")
    return b"application/json", orjson.dumps(render_rows(query, rows))


def render_table(rows: list[UsageRow]) -> list[str]:
    """The lines ``sansio-gateway usage`` prints: a header, rows, a total."""
    head = (
        f"{'day':<10}  {'user':<16} {'model':<28} {'requests':>8} {'prompt':>10} {'completion':>10}"
    )
    lines = [head]
    for row in rows:
        lines.append(
            f"{row.day:<10}  {row.user:<16} {row.model:<28} {row.requests:>8}"
            f" {row.prompt_tokens:>10} {row.completion_tokens:>10}"
        )
    total = totals(rows)
    lines.append(
        f"{'total':<10}  {'':<16} {'':<28} {total['requests']:>8}"
        f" {total['prompt_tokens']:>10} {total['completion_tokens']:>10}"
    )
    return lines


# ---- aggregation for ledgers without SQL ---------------------------------------


class RecordLike(Protocol):
    """What aggregation reads of a usage record (``actions.UsageRecord``)."""

    @property
    def user(self) -> str | None: ...
    @property
    def model(self) -> str: ...
    @property
    def time(self) -> float: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...


Totals = dict[tuple[str, str, str], list[int]]  # (user, model, day) -> [n, prompt, completion]


def day_of(ts: float) -> str:
    """The UTC day of a unix time, ``YYYY-MM-DD``: the ledgers' day."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _inside(query: UsageQuery, ts: float) -> bool:
    return (query.since is None or ts >= query.since) and (query.until is None or ts < query.until)


def add_record(
    into: Totals, query: UsageQuery, *, user: str, model: str, ts: float, prompt: int,
    completion: int, day: str | None = None,
) -> None:  # fmt: skip
    """Count one record into ``into`` if the query's filters take it."""
    if query.user is not None and user != query.user:
        return
    if query.model is not None and model != query.model:
        return
    if not _inside(query, ts):
        return
    row = into.setdefault((user, model, day or day_of(ts)), [0, 0, 0])
    row[0] += 1
    row[1] += prompt
    row[2] += completion


def rows_from_totals(into: Totals) -> list[UsageRow]:
    """Rows sorted by (user, model, day), empty groups left out."""
    return [
        UsageRow(user=u, model=m, day=d, requests=n, prompt_tokens=p, completion_tokens=c)
        for (u, m, d), (n, p, c) in sorted(into.items())
        if n > 0
    ]


def aggregate(records: Iterable[RecordLike], query: UsageQuery) -> list[UsageRow]:
    """Group records per (user, model, day) under the query's filters."""
    into: Totals = {}
    for r in records:
        add_record(
            into, query, user=r.user or "", model=r.model, ts=r.time,
            prompt=r.prompt_tokens, completion=r.completion_tokens,
        )  # fmt: skip
    return rows_from_totals(into)


class DaySpan(Enum):
    """How a day whose records span ``t0..t1`` answers a query."""

    SKIP = "skip"  # no record of it can match the time filter
    WHOLE = "whole"  # every record is inside: its aggregates answer
    RAW = "raw"  # the filter cuts through the day: read its raw records


def day_span(query: UsageQuery, t0: float, t1: float) -> DaySpan:
    if (query.since is not None and t1 < query.since) or (
        query.until is not None and t0 >= query.until
    ):
        return DaySpan.SKIP
    return DaySpan.WHOLE if _inside(query, t0) and _inside(query, t1) else DaySpan.RAW


def add_day_aggregate(
    into: Totals, query: UsageQuery, user: str, day: str, fields: Mapping[str, Any]
) -> None:
    """Count a day's aggregate hash (``n:<model>``, ``p:<model>``, ``c:<model>``)."""
    for name, value in fields.items():
        kind, _, model = name.partition(":")
        if kind not in ("n", "p", "c") or (query.model is not None and model != query.model):
            continue
        into.setdefault((user, model, day), [0, 0, 0])["npc".index(kind)] += int(value)
