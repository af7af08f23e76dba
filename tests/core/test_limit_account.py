"""The request's limit account, without an Exchange: asked once, decided
once, and exactly one CommitLimits for an admitted request."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import orjson
import pytest

from sansio_gateway.accounting.limit_account import LimitAccount
from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.actions import CommitLimits
from sansio_gateway.backends.attempts import Attempts
from sansio_gateway.backends.catalogue import Route
from sansio_gateway.config import LimitsConfig
from sansio_gateway.http import Surface
from sansio_gateway.limits import Decision, LimitSpecs, MemoryLimitStore, build_specs

from ..helpers import make_config

ROUTE = Route(model="m", backend="a", target="m:1b")
DECODED = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
SPECS = build_specs(LimitsConfig(requests_per_minute=6, tokens_per_minute=60_000), "u", "m")


@dataclass
class Source:
    """A Gateway as the account reads it."""

    limits_on: bool = True
    specs: LimitSpecs = SPECS
    config = make_config()

    def limit_specs(self, user: str, route: Route) -> LimitSpecs:
        assert (user, route) == ("u", ROUTE)
        return self.specs


@dataclass(frozen=True)
class Decl:
    name: str = "chat.completions"
    limited: bool = True
    generates: bool = True
    uses_tokens: bool = True


@dataclass
class Answer:
    usage: TokenUsage | None = None

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage(prompt_tokens=3, completion_tokens=4)  # streamed so far


def asked(**source: object) -> LimitAccount:
    account = LimitAccount("req-1")
    check = account.ask(Source(**source), Decl(), DECODED, key="u", target=ROUTE)  # type: ignore[arg-type]
    assert check is not None and account.lease is not None
    assert check == account.lease.check() and check.request_id == "req-1"
    return account


def decision(allowed: bool) -> Decision:
    store = MemoryLimitStore()
    costs = asked().lease.check().costs  # type: ignore[union-attr]
    first = store.admit("u", SPECS, 0, costs, "a")
    return first if allowed else store.admit("u", SPECS, 1, costs, "b")


def admitted() -> LimitAccount:
    account = asked()
    assert account.decided(decision(True), surface=Surface.OPENAI, model="m") is None
    return account


def test_no_check_when_limits_are_off_the_route_is_unlimited_or_nothing_applies() -> None:
    empty = build_specs(LimitsConfig(), "u", "m")
    for source, decl in (
        (Source(limits_on=False), Decl()),
        (Source(), Decl(limited=False)),
        (Source(specs=empty), Decl()),
    ):
        account = LimitAccount("r")
        assert account.ask(source, decl, DECODED, key="u", target=ROUTE) is None  # type: ignore[arg-type]
        assert account.lease is None and account.take() == ()
        assert account.capped("ollama", b"{}") == b"{}"  # nothing to write in


def test_a_denial_is_rendered_in_the_surface_form_and_owes_nothing() -> None:
    account = asked()
    denied = account.decided(decision(False), surface=Surface.OLLAMA, model="m")
    assert denied is not None
    status, headers, body = denied
    assert status == 429 and b"retry-after" in dict(headers)
    assert set(orjson.loads(body)) == {"error"}  # Ollama's form
    account.settle(0)
    assert account.take() == () and account.headers == ()


def test_an_admission_keeps_the_rate_headers_for_the_response() -> None:
    account = admitted()
    assert dict(account.headers)[b"x-ratelimit-limit-requests"] == b"6"
    assert account.owed is None  # nothing owed before the request settles


def test_the_commit_comes_once_and_is_collected_once() -> None:
    account = admitted()
    account.settle(0)
    account.settle(50)  # a second settle changes nothing
    [commit] = account.take()
    assert isinstance(commit, CommitLimits) and commit.actual == 0
    assert commit.estimate == account.lease.estimate  # type: ignore[union-attr]
    assert account.take() == ()


@pytest.mark.parametrize(
    "steps",
    list(itertools.permutations(["refund", "charge", "charge_left", "take"])),
)
def test_an_admitted_request_owes_exactly_one_commit_whatever_the_order(
    steps: tuple[str, ...],
) -> None:
    account = admitted()
    attempts = Attempts.for_route(ROUTE).sent(stream=True).answered(200, None)
    taken: list[CommitLimits] = []
    for step in steps:
        if step == "refund":
            account.settle(0)
        elif step == "charge":
            account.charge_used(Answer(), attempts, client_left=False)
        elif step == "charge_left":
            account.charge_used(Answer(), attempts, client_left=True)
        else:
            taken += account.take()
    taken += account.take()
    assert len(taken) == 1


def test_what_a_request_that_reached_a_backend_is_charged() -> None:
    sent = Attempts.for_route(ROUTE).sent(stream=True)

    def charged(answer: Answer, attempts: Attempts, *, client_left: bool = False) -> int:
        account = admitted()
        account.charge_used(answer, attempts, client_left=client_left)
        [commit] = account.take()
        return commit.actual

    estimate = admitted().lease.estimate  # type: ignore[union-attr]
    reported = Answer(usage=TokenUsage(prompt_tokens=5, completion_tokens=6))
    assert charged(reported, sent.answered(200, None)) == 11  # the backend's counts
    assert charged(Answer(), sent.answered(404, None)) == 0  # refused before generating
    assert charged(Answer(), sent.answered(200, None), client_left=True) == 7  # streamed
    assert charged(Answer(), sent.answered(500, None)) == estimate  # may have generated
    whole = Attempts.for_route(ROUTE).sent(stream=False).answered(200, None)
    assert charged(Answer(), whole, client_left=True) == estimate


def test_a_decision_after_the_client_left_releases_an_admission_at_once() -> None:
    account = asked()
    account.decided_after_leaving(decision(True))
    [commit] = account.take()
    assert commit.actual == 0
    account = asked()
    account.decided_after_leaving(decision(False))
    assert account.take() == ()


def test_the_charged_output_cap_is_written_upstream() -> None:
    account = admitted()
    body = orjson.dumps({"model": "m", "messages": []})
    capped = orjson.loads(account.capped("ollama", body))
    assert capped["options"]["num_predict"] == account.lease.output_cap  # type: ignore[union-attr]
