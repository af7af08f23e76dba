"""Per-backend circuit breakers, fed by requests (passive) and probes (active).

Theory of operation: every backend has a breaker (the pure machine in
``limits.breaker``, time passed in).  Each upstream attempt asks
:meth:`BackendHealth.may_send`; a backend whose breaker is OPEN is skipped
in favour of the next target (a fallback), or the request fails fast with a
503 instead of waiting out connect timeouts.  After the cooldown one request
(or the adapter's periodic probe) goes through HALF_OPEN: success closes the
breaker, failure re-opens it.

What counts as a failure: a transport failure (connect error, timeout,
reset), or a 502/504 from a proxy in front of the backend.  A backend that
answers at all -- even 500 or 503 -- is alive: those concern one request or
a busy moment, and the retry policy handles them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..limits.breaker import Breaker, BreakerState, attempt, failed, succeeded

__all__ = ["BackendHealth", "BackendStatus", "StoreStatus"]

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

    def may_send(self, backend: str, now: float) -> bool:
        allowed, self._breakers[backend] = attempt(self._breakers[backend], int(now * US))
        return allowed

    def record(self, backend: str, ok: bool, now: float) -> None:
        breaker = self._breakers[backend]
        self._breakers[backend] = (succeeded if ok else failed)(breaker, int(now * US))

    def state(self, backend: str) -> BreakerState:
        return self._breakers[backend].state

    def retry_after(self, backend: str, now: float) -> float:
        """Seconds until an OPEN breaker lets a probe through."""
        breaker = self._breakers[backend]
        if breaker.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, (breaker.since_us + breaker.cooldown_us - int(now * US)) / US)
