"""A circuit breaker for the shared limit store, with time passed in.

Theory of operation: the adapter asks :func:`attempt` before each call to
the store.  CLOSED lets every call through and counts consecutive failures;
``failure_threshold`` of them OPEN the breaker, which refuses calls (the
adapter applies its failure policy at once instead of waiting out a
timeout) until ``cooldown_us`` has passed.  Then one call is let through as
a probe (HALF_OPEN): its success closes the breaker, its failure opens it
again.  A probe that never reports (its caller was cancelled) is replaced
by a new one after another cooldown, so the breaker cannot wedge.

The machine is one table, ``_TRANSITIONS``: (state, event) -> step.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

__all__ = [
    "Breaker",
    "BreakerEvent",
    "BreakerState",
    "Phase",
    "StoreHealth",
    "attempt",
    "call_failed",
    "call_succeeded",
    "counts_as_decision_failure",
    "failed",
    "may_call",
    "succeeded",
    "warmed",
]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerEvent(enum.Enum):
    ATTEMPT = "attempt"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    since_us: int = 0  # when OPEN: opened at; when HALF_OPEN: probe sent at
    failure_threshold: int = 3
    cooldown_us: int = 1_000_000


_Step = Callable[[Breaker, int], tuple[bool, Breaker]]


def _let_through(b: Breaker, now: int) -> tuple[bool, Breaker]:
    return True, b


def _probe_after_cooldown(b: Breaker, now: int) -> tuple[bool, Breaker]:
    if now - b.since_us >= b.cooldown_us:
        return True, replace(b, state=BreakerState.HALF_OPEN, since_us=now)
    return False, b


def _close(b: Breaker, now: int) -> tuple[bool, Breaker]:
    return True, replace(b, state=BreakerState.CLOSED, failures=0)


def _count_failure(b: Breaker, now: int) -> tuple[bool, Breaker]:
    failures = b.failures + 1
    if failures >= b.failure_threshold:
        return False, replace(b, state=BreakerState.OPEN, failures=failures, since_us=now)
    return True, replace(b, failures=failures)


def _reopen(b: Breaker, now: int) -> tuple[bool, Breaker]:
    return False, replace(b, state=BreakerState.OPEN, failures=b.failures + 1, since_us=now)


def _stay_open(b: Breaker, now: int) -> tuple[bool, Breaker]:
    return False, replace(b, failures=b.failures + 1)


_TRANSITIONS: dict[tuple[BreakerState, BreakerEvent], _Step] = {
    (BreakerState.CLOSED, BreakerEvent.ATTEMPT): _let_through,
    (BreakerState.CLOSED, BreakerEvent.SUCCEEDED): _close,
    (BreakerState.CLOSED, BreakerEvent.FAILED): _count_failure,
    (BreakerState.OPEN, BreakerEvent.ATTEMPT): _probe_after_cooldown,
    # A call started before the breaker opened came back fine: the store works.
    (BreakerState.OPEN, BreakerEvent.SUCCEEDED): _close,
    (BreakerState.OPEN, BreakerEvent.FAILED): _stay_open,
    (BreakerState.HALF_OPEN, BreakerEvent.ATTEMPT): _probe_after_cooldown,
    (BreakerState.HALF_OPEN, BreakerEvent.SUCCEEDED): _close,
    (BreakerState.HALF_OPEN, BreakerEvent.FAILED): _reopen,
}


def step(b: Breaker, event: BreakerEvent, now_us: int) -> tuple[bool, Breaker]:
    return _TRANSITIONS[(b.state, event)](b, now_us)


def attempt(b: Breaker, now_us: int) -> tuple[bool, Breaker]:
    """May a call go to the store now?  Returns the permission and the new breaker."""
    return step(b, BreakerEvent.ATTEMPT, now_us)


def succeeded(b: Breaker, now_us: int) -> Breaker:
    return step(b, BreakerEvent.SUCCEEDED, now_us)[1]


def failed(b: Breaker, now_us: int) -> Breaker:
    return step(b, BreakerEvent.FAILED, now_us)[1]


# ---- readiness: which errors are the store's, and when it may be asked ------------
#
# A call to the shared store has two phases.  CONNECT is everything before
# the request is on a warm connection: waiting for a pooled connection,
# opening one, loading the scripts, refreshing a Cluster slot map.  DECISION
# is the one round trip on a warm connection.  Only a DECISION error or
# timeout says the store is failing (it feeds the breaker); a CONNECT error
# says the store is not ready: calls go straight to the failure policy,
# without waiting, until the adapter has warmed the store again.


class Phase(enum.Enum):
    CONNECT = "connect"
    DECISION = "decision"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreHealth:
    """What the adapter knows about the shared store: warmed or not (and
    why not, for ``/status``), and the breaker over its decisions."""

    ready: bool = False
    reason: str | None = "not yet connected"
    breaker: Breaker = Breaker()

    @property
    def serving(self) -> bool:
        """True while decisions come from the store (no fallback in force)."""
        return self.ready and self.breaker.state is BreakerState.CLOSED


def counts_as_decision_failure(phase: Phase) -> bool:
    """Whether an error in ``phase`` is a failed decision (feeds the breaker)."""
    return phase is Phase.DECISION


def may_call(h: StoreHealth, now_us: int) -> tuple[bool, StoreHealth]:
    """May a call go to the store now?  Never while it is not warmed."""
    if not h.ready:
        return False, h
    permit, breaker = attempt(h.breaker, now_us)
    return permit, replace(h, breaker=breaker)


def call_succeeded(h: StoreHealth, now_us: int) -> StoreHealth:
    return replace(h, breaker=succeeded(h.breaker, now_us))


def call_failed(h: StoreHealth, phase: Phase, now_us: int, reason: str) -> StoreHealth:
    """A DECISION failure is counted by the breaker; a CONNECT failure is
    not: it marks the store not ready until :func:`warmed`."""
    if counts_as_decision_failure(phase):
        return replace(h, breaker=failed(h.breaker, now_us))
    return replace(h, ready=False, reason=reason)


def warmed(h: StoreHealth, now_us: int) -> StoreHealth:
    """The adapter connected, loaded the scripts and filled the pool."""
    return replace(h, ready=True, reason=None, breaker=succeeded(h.breaker, now_us))
