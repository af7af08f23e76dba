"""Attempts, and the breaker preview they read, without an Exchange."""

from __future__ import annotations

from sansio_gateway.actions import CountBackendAttempt, RecordBackendOutcome
from sansio_gateway.backends.attempts import Attempts, before_send
from sansio_gateway.backends.catalogue import Route
from sansio_gateway.backends.health import BackendHealth, BreakerPreview
from sansio_gateway.errors import UpstreamError, UpstreamTimeout
from sansio_gateway.limits import BreakerState

from ..helpers import make_config

T0 = 1_000.0
ROUTE = Route(model="m", backend="a", target="m:1b", fallbacks=("b:m:3b",))


def retry_policy(attempts: Attempts, status: int) -> tuple[Attempts, float] | None:
    """The policy of a backend with two retries, four attempts in all."""
    return attempts.after_failure(
        status=status, error=None, max_retries=2, max_attempts=4, backoff_base=0.5, rand=1.0
    )


def test_the_targets_are_the_route_then_its_fallbacks() -> None:
    attempts = Attempts.for_route(ROUTE)
    assert [(t.backend, t.target) for t in attempts.targets] == [("a", "m:1b"), ("b", "m:3b")]
    assert attempts.current.backend == "a" and attempts.made == 0


def test_busy_is_retried_on_the_same_target_then_falls_back() -> None:
    attempts = Attempts.for_route(ROUTE).sent(stream=False).answered(503, b"2")
    step = retry_policy(attempts, 503)
    assert step is not None
    attempts, delay = step
    assert attempts.current.backend == "a" and attempts.retries_on_target == 1
    assert delay == 2.0  # Retry-After is longer than the jittered backoff (0.5)
    step = retry_policy(attempts.sent(stream=False), 503)
    assert step is not None and step[0].retries_on_target == 2
    step = retry_policy(step[0].sent(stream=False), 503)
    assert step is not None
    attempts, delay = step
    assert (attempts.current.backend, attempts.retries_on_target, delay) == ("b", 0, 0.0)
    attempts = attempts.sent(stream=False)
    assert attempts.made == 4
    assert retry_policy(attempts, 503) is None


def test_a_client_error_is_never_retried() -> None:
    attempts = Attempts.for_route(ROUTE).sent(stream=False).answered(400, None)
    assert retry_policy(attempts, 400) is None


def test_what_may_have_generated() -> None:
    attempts = Attempts.for_route(ROUTE).sent(stream=True)
    assert not attempts.answered(404, None).maybe_generated  # refused before generating
    assert attempts.answered(500, None).maybe_generated
    assert attempts.answered(200, None).maybe_generated
    refused = UpstreamError("no", code="upstream_unreachable")
    assert before_send(refused) and not attempts.failed(refused).maybe_generated
    assert attempts.failed(UpstreamTimeout("slow")).maybe_generated
    assert attempts.left_early().maybe_generated
    # Once it may have generated, a later refusal does not undo it.
    assert attempts.answered(500, None).answered(404, None).maybe_generated
    assert attempts.answered(503, b"1").failed(refused).retry_after is None


def test_open_breakers_are_skipped_and_the_last_one_is_reported() -> None:
    health = BackendHealth(["a", "b"], failure_threshold=1, cooldown=10.0)
    health.record("a", False, T0)
    preview = BreakerPreview(health)
    attempts, delay, free = Attempts.for_route(ROUTE).choose(preview, T0 + 1, 0.7)
    assert free and attempts.current.backend == "b" and delay == 0.0
    health.record("b", False, T0)
    preview = BreakerPreview(health)
    attempts, _, free = Attempts.for_route(ROUTE).choose(preview, T0 + 1, 0.0)
    assert not free and attempts.current.backend == "b"
    err = attempts.unavailable(preview, T0 + 1)
    assert err.code == "backend_unavailable" and err.retry_after == 9
    assert preview.events == []  # asking an open breaker changes nothing


def test_the_preview_sees_its_own_writes_and_leaves_the_shared_breakers_alone() -> None:
    health = BackendHealth(["a"], failure_threshold=1, cooldown=10.0)
    preview = BreakerPreview(health)
    assert preview.may_send("a", T0) and preview.events == []  # a closed breaker: no write
    preview.record("a", True, T0)
    assert preview.events == []  # nothing changed
    preview.record("a", False, T0)
    assert not preview.may_send("a", T0 + 1)  # the failure it just saw opened it
    assert health.state("a") is BreakerState.CLOSED  # the shared one is untouched
    assert preview.events == [RecordBackendOutcome(backend="a", ok=False, at=T0)]
    # Applying the events (as the adapter does) gives what the preview saw.
    [event] = preview.events
    assert isinstance(event, RecordBackendOutcome)
    health.record(event.backend, event.ok, event.at)
    assert health.state("a") is BreakerState.OPEN
    later = BreakerPreview(health)
    assert later.may_send("a", T0 + 11)  # past the cooldown: the probe
    assert later.events == [CountBackendAttempt(backend="a", at=T0 + 11)]
    health.count_attempt("a", T0 + 11)
    assert health.state("a") is BreakerState.HALF_OPEN


def test_retry_reads_the_policy_of_the_current_targets_backend_from_the_config() -> None:
    config = make_config(
        '[[backends]]\nname="a"\nkind="ollama"\nurl="http://127.0.0.1:9"\nmax_retries=1\n'
        'retry_backoff=0.5\n[[backends]]\nname="b"\nkind="ollama"\nurl="http://127.0.0.1:8"\n'
        "max_retries=0\n[server]\nmax_attempts=3\n"
    )
    attempts = Attempts.for_route(ROUTE).sent(stream=False).answered(503, None)
    step = attempts.retry(status=503, error=None, config=config, rand=1.0)
    assert step is not None
    assert step == attempts.after_failure(
        status=503, error=None, max_retries=1, max_attempts=3, backoff_base=0.5, rand=1.0
    )
    attempts = step[0].sent(stream=False)  # a's one retry is spent: fall back to b
    step = attempts.retry(status=503, error=None, config=config, rand=1.0)
    assert step is not None and step[0].current.backend == "b"
    attempts = step[0].sent(stream=False)  # b allows no retry, and 3 attempts were made
    assert attempts.retry(status=503, error=None, config=config, rand=1.0) is None


def test_each_attempt_says_why_it_is_made() -> None:
    health = BackendHealth(["a", "b"], failure_threshold=1, cooldown=10.0)
    attempts, _, _ = Attempts.for_route(ROUTE).choose(BreakerPreview(health), T0, 0.0)
    assert attempts.reason == "first"
    step = retry_policy(attempts.sent(stream=False).answered(503, None), 503)
    assert step is not None and step[0].reason == "retry"
    attempts, _, _ = step[0].choose(BreakerPreview(health), T0, step[1])
    assert attempts.reason == "retry"  # the same target again
    # A failure that opens the retried target's breaker makes the retry a fallback.
    health.record("a", False, T0)
    moved, delay, free = step[0].choose(BreakerPreview(health), T0 + 1, step[1])
    assert free and (moved.current.backend, moved.reason, delay) == ("b", "fallback", 0.0)
    # The policy's own fallback, once the target's retries are spent.
    second = retry_policy(attempts.sent(stream=False), 503)
    assert second is not None and second[0].reason == "retry"
    spent = retry_policy(second[0].sent(stream=False), 503)
    assert spent is not None and (spent[0].current.backend, spent[0].reason) == ("b", "fallback")
    # A first attempt that skips an open breaker goes to the fallback target.
    first, _, _ = Attempts.for_route(ROUTE).choose(BreakerPreview(health), T0 + 1, 0.0)
    assert (first.current.backend, first.made, first.reason) == ("b", 0, "fallback")


def test_sent_and_answered_carry_every_other_field() -> None:
    """They build the next value by hand (not dataclasses.replace): a field
    they do not name must still be carried over, whatever its value."""
    import dataclasses

    busy = Attempts(
        targets=Attempts.for_route(ROUTE).targets, index=1, retries_on_target=2, made=3,
        reason="fallback", retry_after=7.0, stream=True, maybe_generated=True,
    )  # fmt: skip
    assert busy.sent(stream=False) == dataclasses.replace(busy, made=4, stream=False)
    assert busy.answered(200, None) == busy
    assert busy.answered(429, b"12") == dataclasses.replace(busy, retry_after=12.0)
    fresh = Attempts.for_route(ROUTE)
    assert fresh.answered(404, None) == dataclasses.replace(fresh, retry_after=None)
    assert fresh.answered(500, None).maybe_generated
    assert {f.name for f in dataclasses.fields(Attempts)} == {
        "targets", "index", "retries_on_target", "made", "reason", "retry_after", "stream",
        "maybe_generated",
    }, "a new field: carry it in Attempts._with"  # fmt: skip
