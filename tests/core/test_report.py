"""What a request reports, without an Exchange: its facts read off the
Exchange's public attributes, then the usage record and the summary."""

from __future__ import annotations

from dataclasses import dataclass

from sansio_gateway.accounting.report import RequestFacts, facts_of, summary, usage_record
from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.http import Surface
from sansio_gateway.identity import ANONYMOUS, Identity


@dataclass
class Decl:
    name: str
    uses_tokens: bool = True


@dataclass
class Walked:
    """An Exchange's public attributes, as the reports read them."""

    identity: Identity = ANONYMOUS
    surface: Surface = Surface.OPENAI
    route: Decl | None = None
    model: str | None = None
    backend: str = ""
    resolved_model: str = ""
    status: int = 0
    started_at: float = 100.0
    first_byte_at: float | None = None


def test_facts_of_a_request_that_never_matched_a_route() -> None:
    facts = facts_of(Walked(), request_id="r", attempts=0)
    assert (facts.route, facts.model, facts.surface, facts.status) == ("unknown", "", "openai", 0)


def test_facts_of_a_request_that_reached_a_backend() -> None:
    walked = Walked(
        route=Decl("chat.completions"), model="m", backend="b", resolved_model="m:1b",
        status=200, first_byte_at=100.5,
    )  # fmt: skip
    facts = facts_of(walked, request_id="trace-1", attempts=2)
    assert facts == RequestFacts(
        request_id="trace-1", identity=ANONYMOUS, surface="openai", route="chat.completions",
        model="m", backend="b", resolved_model="m:1b", status=200, started_at=100.0,
        first_byte_at=100.5, attempts=2,
    )  # fmt: skip
    usage = TokenUsage(prompt_tokens=3, completion_tokens=4)
    record = usage_record(facts, usage, reported=True, outcome="ok", now=101.0).record
    assert (record.request_id, record.latency, record.ttft, record.attempts) == (
        "trace-1",
        1.0,
        0.5,
        2,
    )
    said = summary(facts, usage, model_label="m", now=101.0)
    assert (said.retries, said.prompt_tokens, said.client_disconnected) == (1, 3, False)
