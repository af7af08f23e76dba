"""One attempt without an Exchange: its flow and plan (``plan_attempt``),
and its answer (``AttemptAnswer``: translator, bounded body, usage)."""

from __future__ import annotations

from typing import Any

import pytest

from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.actions import UpstreamChunkReceived, UpstreamResponseStarted
from sansio_gateway.backends.catalogue import DiscoveredModel, Route
from sansio_gateway.config import BackendConfig
from sansio_gateway.errors import GatewayError, InternalError, InvalidRequest, UpstreamError
from sansio_gateway.flows.attempt import MAX_UPSTREAM_BODY, AttemptAnswer, plan_attempt
from sansio_gateway.flows.base import LocalAnswer, MetricsScrape, Plan, UpstreamCall
from sansio_gateway.flows.context import FlowContext
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import Headers

from ..helpers import NOW, ExchangeDriver, make_config

ROUTE = Route(model="m", backend="b1", target="m:1b")
BACKEND = BackendConfig(name="b1", kind="ollama", url="http://127.0.0.1:9")
CONTEXT: Any = object()  # the flows below never read it


class Whole:
    def __init__(self, usage: TokenUsage | None = None) -> None:
        self._usage = usage
        self.seen = b""

    def complete(self, body: bytes) -> bytes:
        self.seen = body
        return b"out:" + body

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage(prompt_tokens=1, completion_tokens=1)


class Stream:
    headers: Headers = ()
    done = failed = False

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""

    def fail(self, error: GatewayError) -> bytes:
        return b""

    @property
    def usage(self) -> TokenUsage | None:
        return None

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage(prompt_tokens=2, completion_tokens=5)


class Planned:
    def __init__(self, plan: Plan) -> None:
        self._plan = plan

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert (route, backend) == (ROUTE, BACKEND)
        return self._plan


def attempt(make: Any) -> tuple[Any, UpstreamCall | LocalAnswer]:
    return plan_attempt(make, CONTEXT, {"typed": 1}, "m", ROUTE, BACKEND, "chat")


def test_the_flow_is_built_from_the_typed_request_and_plans_the_attempt() -> None:
    call = UpstreamCall(method="POST", path="/api/chat", body=b"{}", whole=Whole())
    built: list[tuple[Any, ...]] = []

    def make(context: FlowContext, request: Any, model: str) -> Planned:
        built.append((context, request, model))
        return Planned(call)

    flow, plan = attempt(make)
    assert isinstance(flow, Planned) and plan is call
    assert built == [(CONTEXT, {"typed": 1}, "m")]
    local = LocalAnswer(status=200, headers=(), body=b"{}")
    assert attempt(lambda *_: Planned(local))[1] is local  # a model route may answer itself


def test_a_kind_that_cannot_serve_the_route_is_a_400_naming_both() -> None:
    with pytest.raises(InvalidRequest, match="backend 'b1' of kind 'ollama' cannot serve chat"):
        attempt(None)


def test_a_body_too_deep_to_re_encode_is_a_400_not_a_crash() -> None:
    def make(*_: Any) -> Planned:
        raise TypeError("Recursion limit reached")

    with pytest.raises(InvalidRequest, match="nested too deeply"):
        attempt(make)


def test_a_plan_only_local_routes_make_is_a_bug() -> None:
    with pytest.raises(InternalError, match="chat: unexpected plan"):
        attempt(lambda *_: Planned(MetricsScrape()))


def test_before_any_attempt_the_answer_reports_nothing() -> None:
    answer = AttemptAnswer()
    assert answer.usage is None and answer.used() == (TokenUsage(), False)


def test_a_whole_answer_is_collected_then_translated_once() -> None:
    whole = Whole(usage=TokenUsage(prompt_tokens=3, completion_tokens=4))
    answer = AttemptAnswer.of(UpstreamCall(method="POST", path="/", body=b"", whole=whole))
    assert answer.whole is whole and answer.stream is None
    assert answer.collect(b"ab") and answer.collect(b"cd")
    assert answer.complete() == b"out:abcd" and whole.seen == b"abcd"
    assert answer.used() == (TokenUsage(prompt_tokens=3, completion_tokens=4), True)


def test_without_counts_the_estimate_is_recorded_as_such() -> None:
    answer = AttemptAnswer(stream=Stream())
    assert answer.usage is None
    assert answer.used() == (TokenUsage(prompt_tokens=2, completion_tokens=5), False)


def test_the_body_is_bounded_and_a_refused_piece_is_not_kept() -> None:
    assert MAX_UPSTREAM_BODY == 64 * 1024 * 1024
    answer = AttemptAnswer(whole=Whole(), limit=5)
    assert answer.collect(b"12345")
    assert not answer.collect(b"6")
    answer.status = 502
    err = answer.error(model="m")
    assert isinstance(err, UpstreamError) and err.message == "12345"  # without the "6"


def test_an_error_body_is_mapped_through_the_upstream_status_table() -> None:
    answer = AttemptAnswer(whole=Whole())
    answer.status = 404
    assert answer.collect(b'{"error": "model \\"x\\" not found"}')
    err = answer.error(model="llama")
    assert err.status_code == 404 and err.code == "model_not_found"
    assert "`llama`" in str(err.message)


def test_an_answer_past_the_bound_is_a_502_and_the_upstream_is_cancelled() -> None:
    gw = Gateway(make_config())
    gw.record_discovery("ollama", [DiscoveredModel(name="llama3.2:1b")], NOW)
    d = ExchangeDriver(gw)
    d.start(
        "POST",
        "/v1/chat/completions",
        {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "Hi"}]},
    )
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=b"{"))
    d.handle(UpstreamChunkReceived(data=bytes(MAX_UPSTREAM_BODY)))
    assert d.seen.cancelled and d.seen.status == 502
    [record] = d.seen.usage
    assert record.outcome == "upstream_error"


class FailingStream:
    """A stream translator whose dialect has (or lacks) an in-band error."""

    def __init__(self, event: bytes) -> None:
        self.event = event
        self.failed_with: GatewayError | None = None

    def fail(self, error: GatewayError) -> bytes:
        self.failed_with = error
        return self.event


@pytest.mark.parametrize("event", [b"data: {error}\n\n", b""])
def test_a_failed_stream_ends_with_its_in_band_error_and_a_closed_connection(
    event: bytes,
) -> None:
    from sansio_gateway.actions import EndResponse, SendBody

    stream = FailingStream(event)
    answer = AttemptAnswer(stream=stream)  # type: ignore[arg-type]
    error = UpstreamError("lost")
    actions = answer.fail_stream(error)
    end = EndResponse(keep_alive=False)
    assert actions == ([SendBody(data=event), end] if event else [end])
    assert stream.failed_with is error
