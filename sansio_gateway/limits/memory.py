"""The memory store: the pure functions applied to a dict of user states.

Theory of operation: one :class:`LimitState` per user key.  ``admit`` and
``commit`` look the state up, call :func:`~.core.admit` /
:func:`~.core.commit` and store what they return.  Time is an argument, as
everywhere in the core; the async wrapper in ``adapters/limit_stores.py``
reads the clock.

Memory stays bounded: each operation already drops its user's expired
leases, committed ids and elapsed TATs; and a sweep over all users drops a
state that is *idle* -- equivalent to no state at all -- once it has been
idle for ``idle_grace_us``.  The sweep runs when the number of states has
doubled since the last one or ``sweep_interval_us`` has passed, so its cost
is amortised O(1) per operation.  The grace keeps a state whose clock is
still ahead of a (briefly) backwards-going caller clock.
"""

from __future__ import annotations

from .core import LimitState, admit, commit, peek
from .decision import Decision, RateHeaders
from .specs import DAY_US, Costs, LimitSpecs

__all__ = ["MemoryLimitStore", "is_idle"]


def is_idle(state: LimitState, now: int) -> bool:
    """True when ``state`` behaves exactly like a fresh one from ``now`` on."""
    now = max(now, state.clock_us)
    return (
        all(tat <= now for tat in state.tats.values())
        and all(lease.expiry_us <= now for lease in state.inflight.values())
        and all(expiry <= now for expiry in state.done.values())
        and (state.day_used == 0 or state.day < now // DAY_US)
    )


class MemoryLimitStore:
    """Per-process limit state.  Not thread-safe; one event loop owns it."""

    def __init__(
        self,
        *,
        min_sweep_size: int = 1024,
        sweep_interval_us: int = 60_000_000,
        idle_grace_us: int = 600_000_000,
    ) -> None:
        self._states: dict[str, LimitState] = {}
        self._min_sweep_size = min_sweep_size
        self._sweep_interval_us = sweep_interval_us
        self._idle_grace_us = idle_grace_us
        self._next_sweep_size = min_sweep_size
        self._last_sweep_us = 0

    def __len__(self) -> int:
        return len(self._states)

    def state(self, key: str) -> LimitState:
        """The current state of ``key`` (a fresh one if none is held)."""
        return self._states.get(key) or LimitState()

    def admit(
        self, key: str, specs: LimitSpecs, now_us: int, costs: Costs, request_id: str
    ) -> Decision:
        """Admit or deny; see :func:`sansio_gateway.limits.core.admit`."""
        state = self.state(key)
        decision, new = admit(specs, state, now_us, costs, request_id)
        if new is not state:
            self._states[key] = new
        self._maybe_sweep(now_us)
        return decision

    def commit(
        self,
        key: str,
        specs: LimitSpecs,
        now_us: int,
        request_id: str,
        estimate: int,
        actual: int,
    ) -> None:
        """Settle a request; see :func:`sansio_gateway.limits.core.commit`."""
        state = self.state(key)
        new = commit(specs, state, now_us, request_id, estimate, actual)
        if new is not state:
            self._states[key] = new
        self._maybe_sweep(now_us)

    def peek(self, key: str, specs: LimitSpecs, now_us: int) -> RateHeaders:
        return peek(specs, self.state(key), now_us)

    def sweep(self, now_us: int) -> int:
        """Drop states idle for the grace period; returns how many."""
        horizon = now_us - self._idle_grace_us
        idle = [
            key
            for key, state in self._states.items()
            if state.clock_us <= horizon and is_idle(state, horizon)
        ]
        for key in idle:
            del self._states[key]
        self._last_sweep_us = now_us
        self._next_sweep_size = max(self._min_sweep_size, 2 * len(self._states))
        return len(idle)

    def _maybe_sweep(self, now_us: int) -> None:
        if (
            len(self._states) >= self._next_sweep_size
            or now_us - self._last_sweep_us >= self._sweep_interval_us
        ):
            self.sweep(now_us)
