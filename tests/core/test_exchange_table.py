"""The Exchange's table: every result fed in every state, and random walks.

Each state is reached the way an adapter would reach it: a real request
through a Gateway, and the results an adapter reports.  A pair the table
lacks must raise ExchangeStateError (and leave the Exchange as it was); a
pair it holds must end in one of the states it declares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sansio_gateway.actions import (
    SHARED_WRITES,
    Action,
    AssetLoaded,
    CatalogueRefreshed,
    CheckLimits,
    ClientDisconnected,
    CommitLimits,
    ConfigReloaded,
    EndResponse,
    LimitsDecided,
    MetricsCollected,
    OverviewCollected,
    RecordUsage,
    Result,
    SendBody,
    SendUpstream,
    StartResponse,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
    UsageQueried,
)
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.errors import UpstreamError, UpstreamTimeout
from sansio_gateway.exchange import Exchange, ExchangeState, ExchangeStateError, next_states
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import IncomingRequest
from sansio_gateway.limits import Costs, Decision, MemoryLimitStore
from sansio_gateway.local.overview_data import OverviewSnapshot
from sansio_gateway.reload import ReloadOutcome

from ..helpers import NOW, make_config

S = ExchangeState
CHAT = "/v1/chat/completions"
LIMITS = "[limits]\nrequests_per_minute = 60\n"


def gateway(toml: str = "") -> Gateway:
    gw = Gateway(make_config(toml))
    gw.record_discovery("ollama", [DiscoveredModel(name="llama3.2:1b")], NOW - 5)
    return gw


def chat_request(model: str = "llama3.2:1b", *, stream: bool = False) -> IncomingRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return IncomingRequest(method="POST", path=CHAT, body=orjson.dumps(body))


def decision(allowed: bool) -> Decision:
    """A real decision from the memory store: the first admit of one
    request a minute passes, the second is denied."""
    gw = gateway(LIMITS.replace("60", "1"))
    specs = gw.limit_specs("anonymous", gw.catalogue.resolve("llama3.2:1b"))  # type: ignore[arg-type]
    store = MemoryLimitStore()
    first = store.admit("u", specs, int(NOW * 1e6), Costs(tokens=0, requests=1), "a")
    second = store.admit("u", specs, int(NOW * 1e6), Costs(tokens=0, requests=1), "b")
    assert first.allowed and not second.allowed
    return first if allowed else second


ALLOWED, DENIED = decision(True), decision(False)
OK_LINE = orjson.dumps(
    {
        "model": "llama3.2:1b",
        "created_at": "2026-11-26T06:00:01Z",
        "message": {"role": "assistant", "content": "Hello"},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 3,
        "eval_count": 1,
    }
)

# One instance of every result type; the test below checks none is missing.
SAMPLES: dict[type, Result] = {
    UpstreamResponseStarted: UpstreamResponseStarted(status=200, headers=()),
    UpstreamChunkReceived: UpstreamChunkReceived(data=OK_LINE + b"\n"),
    UpstreamClosed: UpstreamClosed(),
    UpstreamFailed: UpstreamFailed(error=UpstreamError("reset")),
    ClientDisconnected: ClientDisconnected(),
    UsageQueried: UsageQueried(rows=[]),
    MetricsCollected: MetricsCollected(body=b"", content_type=b"text/plain"),
    CatalogueRefreshed: CatalogueRefreshed(),
    LimitsDecided: LimitsDecided(decision=ALLOWED),
    OverviewCollected: OverviewCollected(snapshot=OverviewSnapshot.empty(NOW)),
    AssetLoaded: AssetLoaded(body=b"<!doctype html>"),
    ConfigReloaded: ConfigReloaded(outcome=ReloadOutcome(source="gw.toml", trigger="test")),
}


def _started(request: IncomingRequest, toml: str = "", *then: Result) -> Exchange:
    exchange = gateway(toml).exchange("r")
    exchange.start(request, NOW)
    for result in then:
        exchange.handle(result, NOW)
    return exchange


HEAD_200 = UpstreamResponseStarted(status=200, headers=())
# How to reach each state through a Gateway, as an adapter would.
REACH: dict[ExchangeState, Callable[[], Exchange]] = {
    S.IDLE: lambda: gateway().exchange("r"),
    S.AWAITING_CATALOGUE: lambda: _started(chat_request("new:1b")),
    S.AWAITING_LIMITS: lambda: _started(chat_request(), LIMITS),
    S.AWAITING_LIMITS_CLIENT_GONE: lambda: _started(chat_request(), LIMITS, ClientDisconnected()),
    S.AWAITING_LEDGER: lambda: _started(IncomingRequest(method="GET", path="/admin/usage")),
    S.AWAITING_METRICS: lambda: _started(IncomingRequest(method="GET", path="/metrics")),
    S.AWAITING_ADAPTER_DATA: lambda: _started(IncomingRequest(method="GET", path="/ui")),
    S.AWAITING_UPSTREAM: lambda: _started(chat_request()),
    S.BUFFERING: lambda: _started(chat_request(), "", HEAD_200),
    S.BUFFERING_ERROR: lambda: _started(
        chat_request(), "", UpstreamResponseStarted(status=500, headers=())
    ),
    S.STREAMING: lambda: _started(chat_request(stream=True), "", HEAD_200),
    S.DONE: lambda: _started(IncomingRequest(method="GET", path="/health")),
}


def test_every_state_is_reachable_and_every_result_has_a_sample() -> None:
    assert set(REACH) == set(ExchangeState)
    assert set(SAMPLES) == set(get_args(Result))
    for state, reach in REACH.items():
        assert reach().state is state


def test_every_state_accepts_something_and_done_accepts_everything() -> None:
    for state in ExchangeState:
        assert any(next_states(state, kind) for kind in SAMPLES), state
    assert all(next_states(S.DONE, kind) == frozenset({S.DONE}) for kind in SAMPLES)


@pytest.mark.parametrize("state", list(ExchangeState), ids=lambda s: s.name)
@pytest.mark.parametrize("kind", list(SAMPLES), ids=lambda k: k.__name__)
def test_every_result_in_every_state(state: ExchangeState, kind: type) -> None:
    exchange = REACH[state]()
    declared = next_states(state, kind)
    if declared is None:
        with pytest.raises(ExchangeStateError):
            exchange.handle(SAMPLES[kind], NOW + 1)
        assert exchange.state is state  # a refused result changes nothing
    else:
        exchange.handle(SAMPLES[kind], NOW + 1)
        assert exchange.state in declared


def test_a_usage_answer_while_waiting_for_the_catalogue_is_an_adapter_bug() -> None:
    # Once one AWAITING_ADAPTER state covered three waits, and a chat request
    # waiting for its catalogue refresh answered this with a 200 usage list.
    exchange = REACH[S.AWAITING_CATALOGUE]()
    with pytest.raises(ExchangeStateError):
        exchange.handle(UsageQueried(rows=[]), NOW)
    with pytest.raises(ExchangeStateError):
        exchange.handle(MetricsCollected(body=b"x", content_type=b"text/plain"), NOW)
    with pytest.raises(ExchangeStateError):
        REACH[S.AWAITING_LEDGER]().handle(CatalogueRefreshed(), NOW)


def test_a_client_gone_while_limits_are_decided_settles_an_admitted_lease() -> None:
    exchange = REACH[S.AWAITING_LIMITS_CLIENT_GONE]()
    actions = exchange.handle(LimitsDecided(decision=ALLOWED), NOW)
    [commit] = actions
    assert isinstance(commit, CommitLimits) and commit.actual == 0
    assert exchange.state is S.DONE and exchange.summary(NOW).client_disconnected
    denied = REACH[S.AWAITING_LIMITS_CLIENT_GONE]()
    assert denied.handle(LimitsDecided(decision=DENIED), NOW) == []  # nobody to answer


# ---- random walks --------------------------------------------------------

RESULTS = st.sampled_from(
    [
        *SAMPLES.values(),
        UpstreamResponseStarted(status=500, headers=()),
        UpstreamResponseStarted(status=400, headers=()),
        UpstreamResponseStarted(status=503, headers=((b"retry-after", b"1"),)),
        UpstreamResponseStarted(status=502, headers=()),
        UpstreamChunkReceived(data=b"garbage"),
        UpstreamChunkReceived(data=b'{"error":"busy"}'),
        UpstreamFailed(error=UpstreamError("refused", code="upstream_unreachable")),
        UpstreamFailed(error=UpstreamTimeout("slow")),
        LimitsDecided(decision=DENIED),
        UsageQueried(rows=[], error="down"),
    ]
)
STARTS: list[tuple[str, IncomingRequest]] = [
    ("", chat_request()),
    ("", chat_request(stream=True)),
    ("", chat_request("new:1b")),
    (LIMITS, chat_request()),
    (LIMITS.replace("60", "6\ntokens_per_minute = 100000"), chat_request(stream=True)),
    ("", IncomingRequest(method="GET", path="/admin/usage")),
    ("", IncomingRequest(method="GET", path="/metrics")),
    ("", IncomingRequest(method="HEAD", path="/health")),
    ("", IncomingRequest(method="POST", path=CHAT, body=b"{not json")),
]
FALLBACK = """
[[backends]]
name = "ollama"
url = "http://127.0.0.1:11434"
max_retries = 1
[[backends]]
name = "spare"
url = "http://127.0.0.1:11435"
[[models]]
name = "llama3.2:1b"
backend = "ollama"
fallbacks = ["spare:llama3.2:1b"]
"""


class Adapter:
    """Executes what the Exchange asks, as an adapter would, and counts it."""

    def __init__(self, gw: Gateway, exchange: Exchange) -> None:
        self.gateway, self.exchange = gw, exchange
        self.seen: list[Action] = []
        self.admitted = False

    def take(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, SHARED_WRITES):
                self.gateway.apply_write(action, now)
        ended = any(isinstance(a, EndResponse) for a in self.seen)
        for action in actions:
            if ended:  # after the end, only bookkeeping
                assert isinstance(action, (RecordUsage, CommitLimits, *SHARED_WRITES)), action
            ended = ended or isinstance(action, EndResponse)
            self.seen.append(action)

    def feed(self, result: Result, now: float) -> None:
        before = self.exchange.state
        try:
            actions = self.exchange.handle(result, now)
        except ExchangeStateError:
            assert next_states(before, type(result)) is None
            assert self.exchange.state is before
            return
        if isinstance(result, LimitsDecided) and before in (
            S.AWAITING_LIMITS,
            S.AWAITING_LIMITS_CLIENT_GONE,
        ):
            self.admitted = result.decision.allowed
        assert self.exchange.state in (next_states(before, type(result)) or ())
        self.take(actions, now)

    def count(self, kind: type) -> int:
        return sum(isinstance(a, kind) for a in self.seen)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from(STARTS),
    fallback=st.booleans(),
    results=st.lists(RESULTS, max_size=12),
)
def test_random_results_keep_the_invariants(
    start: tuple[str, IncomingRequest], fallback: bool, results: list[Result]
) -> None:
    toml, request = start
    gw = Gateway(make_config(toml + (FALLBACK if fallback else "")))
    gw.record_discovery("ollama", [DiscoveredModel(name="llama3.2:1b")], NOW - 5)
    exchange = gw.exchange("r")
    adapter = Adapter(gw, exchange)
    now = NOW
    adapter.take(exchange.start(request, now), now)
    for result in results:
        now += 0.5
        adapter.feed(result, now)
    # Bring it to an end the way an adapter would: the client leaves, and a
    # decision still owed arrives.
    adapter.feed(ClientDisconnected(), now + 1)
    if exchange.state is S.AWAITING_LIMITS_CLIENT_GONE:
        adapter.feed(LimitsDecided(decision=ALLOWED), now + 2)
    assert exchange.state is S.DONE

    starts, ends = adapter.count(StartResponse), adapter.count(EndResponse)
    if exchange.status == 499:  # the client left: at most one, nothing after
        assert starts <= 1 and ends <= 1
    else:
        assert starts == 1 and ends == 1
    head = next((a for a in adapter.seen if isinstance(a, StartResponse)), None)
    if head is not None and request.method == "HEAD":
        assert not adapter.count(SendBody)
    reached = adapter.count(SendUpstream) > 0
    assert adapter.count(RecordUsage) == (1 if reached else 0)
    assert adapter.count(CommitLimits) == (1 if adapter.admitted else 0)
    checks = adapter.count(CheckLimits)
    assert checks <= 1 and (checks == 1 or not adapter.admitted)
