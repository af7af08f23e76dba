"""A local route's plan carried out, without an Exchange: an answer now, or
one ask to the adapter and how its result becomes the answer."""

from __future__ import annotations

from typing import get_args

import orjson
import pytest

from sansio_gateway.accounting.usage_query import UsageQuery, UsageRow
from sansio_gateway.actions import (
    AssetLoaded,
    CollectMetrics,
    ConfigReloaded,
    LoadAsset,
    MetricsCollected,
    OverviewCollected,
    QueryUsage,
    UsageQueried,
)
from sansio_gateway.errors import InternalError, ServiceUnavailable
from sansio_gateway.exchange_table import AWAITS, ExchangeState, row
from sansio_gateway.flows.base import (
    AdapterAnswer,
    LedgerQuery,
    LocalAnswer,
    MetricsScrape,
    UpstreamCall,
)
from sansio_gateway.local.pending import LocalResult, Pending, local_step

ROW = UsageRow(
    user="u", model="m", day="2026-12-03", requests=2, prompt_tokens=3, completion_tokens=4
)


def pending(plan: object) -> Pending:
    step = local_step(plan, "admin.usage")  # type: ignore[arg-type]
    assert isinstance(step, Pending)
    return step


def test_a_local_answer_is_the_answer() -> None:
    answer = LocalAnswer(status=200, headers=(), body=b"ok")
    assert local_step(answer, "health") is answer


def test_a_ledger_query_asks_for_its_rows_and_renders_them_in_its_format() -> None:
    step = pending(LedgerQuery(query=UsageQuery(user="u")))
    assert step.ask == QueryUsage(query=UsageQuery(user="u"))
    answer = step.answer(UsageQueried(rows=[ROW]))
    assert (answer.status, answer.headers) == (200, ((b"content-type", b"application/json"),))
    assert orjson.loads(answer.body)
    csv = pending(LedgerQuery(query=UsageQuery(format="csv"))).answer(UsageQueried(rows=[ROW]))
    assert csv.headers == ((b"content-type", b"text/csv; charset=utf-8"),)
    assert b"2026-12-03" in csv.body


def test_a_ledger_that_could_not_be_read_is_a_503() -> None:
    step = pending(LedgerQuery(query=UsageQuery()))
    with pytest.raises(ServiceUnavailable, match="ledger down"):
        step.answer(UsageQueried(rows=[], error="ledger down"))


def test_a_metrics_scrape_answers_the_exposition_as_given() -> None:
    step = pending(MetricsScrape())
    assert step.ask == CollectMetrics()
    answer = step.answer(MetricsCollected(body=b"# HELP x\n", content_type=b"text/plain"))
    assert (answer.status, answer.headers, answer.body) == (
        200,
        ((b"content-type", b"text/plain"),),
        b"# HELP x\n",
    )


def test_an_adapter_answer_asks_and_renders_its_own_way() -> None:
    def render(result: OverviewCollected | AssetLoaded) -> LocalAnswer:
        assert isinstance(result, AssetLoaded)
        return LocalAnswer(status=200, headers=(), body=result.body or b"")

    step = pending(AdapterAnswer(ask=LoadAsset(name="ui.js"), render=render))
    assert step.ask == LoadAsset(name="ui.js")
    assert step.answer(AssetLoaded(body=b"js")).body == b"js"


def test_a_local_flow_asking_for_an_upstream_is_a_bug() -> None:
    class Whole:
        usage = None

    call = UpstreamCall(method="GET", path="/", body=b"", whole=Whole())  # type: ignore[arg-type]
    with pytest.raises(InternalError, match=r"admin\.usage: a model-less flow"):
        local_step(call, "admin.usage")


def test_each_ask_has_a_wait_state_that_takes_exactly_its_answers() -> None:
    # QueryUsage -> UsageQueried, CollectMetrics -> MetricsCollected, the
    # the status page's and the reload's asks -> their three results: the table and AWAITS agree.
    answers = {
        ExchangeState.AWAITING_LEDGER: {UsageQueried},
        ExchangeState.AWAITING_METRICS: {MetricsCollected},
        ExchangeState.AWAITING_ADAPTER_DATA: {OverviewCollected, AssetLoaded, ConfigReloaded},
    }
    assert set(AWAITS.values()) == set(answers)
    for state, kinds in answers.items():
        for kind in get_args(LocalResult):
            found = row(state, kind)
            assert (found is not None) == (kind in kinds), (state, kind)
            assert found is None or found[0] == "_on_local_data"
