"""A local route's plan, as the Exchange carries it out: an answer now, or
one wait on the adapter.

Theory of operation: a model-less route's flow plans once (flows/base.py).
A :class:`LocalAnswer` is the answer.  The three other plans need data only
the adapter holds -- the usage ledger's rows, the metrics exposition, the
status page's snapshot or files -- and :func:`local_step` turns each into
one :class:`Pending`: the action to issue, and how the result the adapter
reports becomes the answer.  The Exchange issues ``ask``, waits in the state
its table gives that action (exchange_table.py, ``AWAITS``), and hands the
result to ``answer``.  A ledger that could not be read is a 503.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import assert_never

from ..accounting.usage_query import UsageQuery, render_usage
from ..actions import (
    AssetLoaded,
    CollectMetrics,
    CollectOverview,
    ConfigReloaded,
    LoadAsset,
    MetricsCollected,
    OverviewCollected,
    QueryUsage,
    ReloadConfig,
    UsageQueried,
)
from ..errors import InternalError, ServiceUnavailable
from ..flows.base import (
    AdapterAnswer,
    AdapterData,
    LedgerQuery,
    LocalAnswer,
    MetricsScrape,
    Plan,
    UpstreamCall,
)

__all__ = ["LocalResult", "Pending", "local_step"]

# What the adapter reports back to a Pending's ask.
LocalResult = UsageQueried | MetricsCollected | AdapterData


@dataclass(frozen=True, slots=True, kw_only=True)
class Pending:
    """Issue ``ask``; the adapter's result, given to ``answer``, is the answer."""

    ask: QueryUsage | CollectMetrics | CollectOverview | LoadAsset | ReloadConfig
    answer: Callable[[LocalResult], LocalAnswer]


def local_step(plan: Plan, route: str) -> LocalAnswer | Pending:
    """What the plan of ``route`` (a model-less route) asks for."""
    match plan:
        case LocalAnswer():
            return plan
        case LedgerQuery(query=query):
            return Pending(ask=QueryUsage(query=query), answer=partial(_ledger_rows, query))
        case MetricsScrape():
            return Pending(ask=CollectMetrics(), answer=_exposition)
        case AdapterAnswer(ask=ask, render=render):
            return Pending(ask=ask, answer=partial(_adapter_data, render))
        case UpstreamCall():
            raise InternalError(f"{route}: a model-less flow asked for an upstream")
        case _:
            assert_never(plan)


def _ledger_rows(query: UsageQuery, result: LocalResult) -> LocalAnswer:
    assert isinstance(result, UsageQueried)
    if result.error is not None:
        raise ServiceUnavailable(result.error)
    content_type, body = render_usage(query, result.rows)
    return LocalAnswer(status=200, headers=((b"content-type", content_type),), body=body)


def _exposition(result: LocalResult) -> LocalAnswer:
    assert isinstance(result, MetricsCollected)
    return LocalAnswer(
        status=200, headers=((b"content-type", result.content_type),), body=result.body
    )


def _adapter_data(
    render: Callable[[AdapterData], LocalAnswer],
    result: LocalResult,
) -> LocalAnswer:
    assert isinstance(result, OverviewCollected | AssetLoaded | ConfigReloaded)
    return render(result)
