"""Per-backend circuit breakers, fed by requests (passive) and probes (active).

Theory of operation: every backend has a breaker (the pure machine in
``limits.breaker``, time passed in).  Each upstream attempt asks a
:class:`BreakerPreview` whether it may go; a backend whose breaker is OPEN is skipped
in favour of the next target (a fallback), or the request fails fast with a
503 instead of waiting out connect timeouts.  After the cooldown one request
(or the adapter's periodic probe) goes through HALF_OPEN: success closes the
breaker, failure re-opens it.

What counts as a failure: a transport failure (connect error, timeout,
reset), or a 502/504 from a proxy in front of the backend.  A backend that
answers at all -- even 500 or 503 -- is alive: those concern one request or
a busy moment, and the retry policy handles them.

The Gateway's breakers are shared by every request, so an Exchange never
changes them itself: it reads a :class:`BreakerPreview` -- the shared
breakers with the events of its current step applied on top, so a retry
right after a failure sees the breaker that failure opened -- and returns
those events as actions (``CountBackendAttempt``, ``RecordBackendOutcome``),
which the adapter applies with :meth:`BackendHealth.count_attempt` and
:meth:`BackendHealth.record` before it awaits anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from ..actions import CountBackendAttempt, RecordBackendOutcome
from ..limits.breaker import Breaker, BreakerState, attempt, failed, succeeded

__all__ = ["BackendHealth", "BackendStatus", "BreakerPreview", "StoreStatus", "answered_alive"]

US = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendStatus:
    """The last discovery (health probe) of one backend, as /status shows it."""

    name: str
    up: bool
    checked_at: float
    error: str | None = None
    models: int = 0
    latency: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStatus:
    """The shared limit store: warmed (``ready``), deciding (``serving``:
    ready and its breaker closed), and why not."""

    ready: bool
    serving: bool
    reason: str | None = None


class BackendHealth:
    def __init__(
        self, backends: Iterable[str], *, failure_threshold: int = 5, cooldown: float = 10.0
    ) -> None:
        template = Breaker(failure_threshold=failure_threshold, cooldown_us=int(cooldown * US))
        self._breakers = {name: template for name in backends}

    def carry(self, old: BackendHealth, backends: Iterable[str]) -> None:
        """After a reload: ``backends`` keep their breakers from ``old``, under
        this health's threshold and cooldown (which the reload may have changed)."""
        for name in backends:
            template = self._breakers[name]
            self._breakers[name] = replace(
                old._breakers[name],
                failure_threshold=template.failure_threshold,
                cooldown_us=template.cooldown_us,
            )

    def knows(self, backend: str) -> bool:
        return backend in self._breakers

    def breaker(self, backend: str) -> Breaker:
        return self._breakers[backend]

    def count_attempt(self, backend: str, now: float) -> None:
        """An attempt goes to ``backend`` now: past its cooldown an OPEN
        breaker lets it through as the one HALF_OPEN probe."""
        self._breakers[backend] = attempt(self._breakers[backend], int(now * US))[1]

    def record(self, backend: str, ok: bool, now: float) -> None:
        breaker = self._breakers[backend]
        self._breakers[backend] = (succeeded if ok else failed)(breaker, int(now * US))

    def state(self, backend: str) -> BreakerState:
        return self._breakers[backend].state

    def retry_after(self, backend: str, now: float) -> float:
        """Seconds until an OPEN breaker lets a probe through."""
        return _retry_after(self._breakers[backend], now)


def _retry_after(breaker: Breaker, now: float) -> float:
    if breaker.state is not BreakerState.OPEN:
        return 0.0
    return max(0.0, (breaker.since_us + breaker.cooldown_us - int(now * US)) / US)


class BreakerPreview:
    """The breakers as one Exchange step leaves them, and the events that
    get them there.  Pure: reads the shared :class:`BackendHealth`, never
    writes it; an event that changes no breaker is not kept."""

    def __init__(self, health: BackendHealth) -> None:
        self._health = health
        self._mine: dict[str, Breaker] = {}
        self.events: list[CountBackendAttempt | RecordBackendOutcome] = []

    def _breaker(self, backend: str) -> Breaker:
        mine = self._mine.get(backend)
        return mine if mine is not None else self._health.breaker(backend)

    def _keep(
        self,
        backend: str,
        before: Breaker,
        after: Breaker,
        event: CountBackendAttempt | RecordBackendOutcome,
    ) -> None:
        if after is not before and after != before:
            self._mine[backend] = after
            self.events.append(event)

    def may_send(self, backend: str, now: float) -> bool:
        """May an attempt go to ``backend`` now?  (It counts as one if so.)"""
        before = self._breaker(backend)
        allowed, after = attempt(before, int(now * US))
        self._keep(backend, before, after, CountBackendAttempt(backend=backend, at=now))
        return allowed

    def record(self, backend: str, ok: bool, now: float) -> None:
        before = self._breaker(backend)
        after = (succeeded if ok else failed)(before, int(now * US))
        self._keep(backend, before, after, RecordBackendOutcome(backend=backend, ok=ok, at=now))

    def retry_after(self, backend: str, now: float) -> float:
        return _retry_after(self._breaker(backend), now)


def answered_alive(status: int | None, *, failed: bool) -> bool:
    """Whether a failed attempt still shows its backend alive, for its breaker.

    Only signs that the backend is unreachable or broken count against its
    breaker: transport failures (``failed``), and 502/504 from a proxy in
    front of it.  A backend that answers 500 or 503 is alive -- those are
    about one request or a busy moment, and retries handle them.
    """
    return not failed and status not in (502, 504)
