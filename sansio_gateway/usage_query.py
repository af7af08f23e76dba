"""Usage-ledger queries: filters in, per-(user, model, day) rows out.

Theory of operation: ``GET /admin/usage?user=&model=&since=&until=`` and
``sansio-gateway usage`` both parse their filters here into a
:class:`UsageQuery`; the adapter's ledger (SQLite or Redis) executes it and
returns :class:`UsageRow` values, which are rendered here.  Dates are UTC:
``since`` and ``until`` accept ``YYYY-MM-DD``, an ISO 8601 timestamp, or
Unix seconds; ``until`` is exclusive, and a bare date as ``until`` means the
end of that day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from .errors import InvalidRequest

__all__ = ["UsageQuery", "UsageRow", "parse_time", "parse_usage_query", "render_rows"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageQuery:
    user: str | None = None
    model: str | None = None
    since: float | None = None  # unix seconds, inclusive
    until: float | None = None  # unix seconds, exclusive


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


def parse_usage_query(query_string: str) -> UsageQuery:
    params = parse_qs(query_string, keep_blank_values=False)
    unknown = set(params) - {"user", "model", "since", "until"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"Unknown filter: {name}", param=name)

    def one(name: str) -> str | None:
        values = params.get(name)
        return values[-1] if values else None

    since = one("since")
    until = one("until")
    return UsageQuery(
        user=one("user"),
        model=one("model"),
        since=parse_time(since, param="since") if since else None,
        until=parse_time(until, param="until", end_of_day=True) if until else None,
    )


def render_rows(query: UsageQuery, rows: list[UsageRow]) -> dict[str, Any]:
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
    }
