"""The Exchange's breaker preview: built only by the steps that read it, and
its events always the first actions of their step."""

from __future__ import annotations

import orjson
import pytest

from sansio_gateway import exchange as exchange_module
from sansio_gateway.actions import (
    CountBackendAttempt,
    RecordBackendOutcome,
    SendBody,
    SendUpstream,
    UpstreamChunkReceived,
    UpstreamFailed,
    UpstreamResponseStarted,
)
from sansio_gateway.backends.health import BreakerPreview
from sansio_gateway.errors import UpstreamError
from sansio_gateway.gateway import Gateway
from sansio_gateway.limits.breaker import BreakerState

from ..helpers import NOW, ExchangeDriver
from .test_exchange import CHAT, DONE_LINE, OK_HEAD, chat, content_line, gateway, ndjson

REFUSED = UpstreamFailed(error=UpstreamError("refused", code="upstream_unreachable"))


class CountingPreview(BreakerPreview):
    built = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        CountingPreview.built += 1
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> type[CountingPreview]:
    CountingPreview.built = 0
    monkeypatch.setattr(exchange_module, "BreakerPreview", CountingPreview)
    return CountingPreview


def test_stream_chunks_build_no_preview(counted: type[CountingPreview]) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat(stream=True))  # chooses a target: reads the breakers
    d.handle(OK_HEAD)  # records the backend alive
    built = counted.built
    assert built >= 1
    for word in ("Hel", "lo", " there"):
        actions = d.handle(UpstreamChunkReceived(data=ndjson(content_line(word))))
        assert all(isinstance(a, SendBody) for a in actions) and actions
    d.handle(UpstreamChunkReceived(data=ndjson(DONE_LINE)))
    assert counted.built == built
    assert d.seen.ended and d.seen.usage[0].outcome == "ok"


def test_a_failed_attempt_records_first_then_sends_the_retry() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", CHAT, chat())
    actions = d.handle(REFUSED)
    assert [type(a) for a in actions] == [RecordBackendOutcome, SendUpstream]
    assert actions[0] == RecordBackendOutcome(backend="ollama", ok=False, at=d.now)
    # The next step starts from a fresh preview: the failure is not reported again.
    head = d.handle(UpstreamResponseStarted(status=200, headers=()))
    assert head == [RecordBackendOutcome(backend="ollama", ok=True, at=d.now)]


def test_the_half_open_probe_is_counted_before_it_is_sent() -> None:
    gw: Gateway = gateway()
    for i in range(gw.config.server.breaker_failures):
        gw.health.record("ollama", False, NOW + i)
    assert gw.health.state("ollama") is BreakerState.OPEN
    later = NOW + gw.config.server.breaker_cooldown + 10
    d = ExchangeDriver(gw)
    actions = d.start("POST", CHAT, chat(), now=later)
    assert [type(a) for a in actions] == [CountBackendAttempt, SendUpstream]
    assert orjson.loads(d.seen.upstream[0].body)["model"] == "llama3.2:1b"
    assert gw.health.state("ollama") is BreakerState.HALF_OPEN
