"""The memory store: the pure functions applied to a dict of user states.

Theory of operation: one :class:`LimitState` per user key.  ``admit`` and
``commit`` look the state up, call :func:`~.core.admit` /
:func:`~.core.commit` and store what they return.  Time is an argument, as
everywhere in the core; the async wrapper in ``adapters/limit_stores.py``
reads the clock.

Memory stays bounded: each operation already drops its user's expired
leases, committed ids and elapsed TATs; and a sweep over all users drops a
state that is *idle* -- equivalent to no state at all -- once it has been
idle for ``idle_grace_us``.  A sweep pass starts when the number of states
has doubled since the last one or ``sweep_interval_us`` has passed, and is
spread over the following operations, ``sweep_batch`` states each: no
single call examines more than that many states, and :func:`is_idle` costs
O(TATs + leases), never O(committed ids) (it reads the ids' newest expiry).
So the sweep costs amortised O(1) per operation and never stalls the caller
(issue 17, item 6).  The grace keeps a state whose clock is still ahead of
a (briefly) backwards-going caller clock.

The committed ids of all states together stay within ``max_done_bytes``
(8 MiB by default, 16 bytes an id), however long the store runs and however
many users commit: over budget, the state being written keeps at most its
share of the budget, its oldest ids dropped first, with the per-user bound's
guarantee (:mod:`.done_ids`).  Without it, ids would pile up for the lease
lifetime: 16 bytes x requests per second x 31 minutes.
"""

from __future__ import annotations

from dataclasses import replace

from .core import LimitState, admit, commit, peek
from .decision import Decision, RateHeaders
from .done_ids import newest_expiry, trim_done
from .specs import DAY_US, Costs, LimitSpecs

__all__ = ["DONE_BUDGET_BYTES", "MemoryLimitStore", "is_idle"]

ID_BYTES = 16  # a committed id: its 64-bit digest and its expiry
DONE_BUDGET_BYTES = 8 * 1024 * 1024


def is_idle(state: LimitState, now: int) -> bool:
    """True when ``state`` behaves exactly like a fresh one from ``now`` on."""
    now = max(now + state.skew_us, state.clock_us)  # in the state's time
    return (
        all(tat <= now for tat in state.tats.values())
        and all(lease.expiry_us <= now for lease in state.inflight.values())
        and newest_expiry(state.done) <= now
        and (state.day_used == 0 or state.day < (now - state.skew_us) // DAY_US)
    )


class MemoryLimitStore:
    """Per-process limit state.  Not thread-safe; one event loop owns it."""

    def __init__(
        self,
        *,
        min_sweep_size: int = 1024,
        sweep_interval_us: int = 60_000_000,
        idle_grace_us: int = 600_000_000,
        sweep_batch: int = 64,
        max_done_bytes: int = DONE_BUDGET_BYTES,
    ) -> None:
        self._states: dict[str, LimitState] = {}
        # Committed ids held by every state together, and their budget.
        self._done_ids = 0
        self._max_done_ids = max(1, max_done_bytes // ID_BYTES)
        self._min_sweep_size = min_sweep_size
        self._sweep_interval_us = sweep_interval_us
        self._idle_grace_us = idle_grace_us
        self._sweep_batch = max(1, sweep_batch)
        self._next_sweep_size = min_sweep_size
        self._last_sweep_us = 0
        # The pass in progress: the keys it still has to examine, from _cursor.
        self._pass: list[str] = []
        self._cursor = 0

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
            self._put(key, state, new)
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
            self._put(key, state, new)
        self._maybe_sweep(now_us)

    @property
    def done_ids(self) -> int:
        """Committed ids held by every state together (16 bytes each)."""
        return self._done_ids

    def _put(self, key: str, old: LimitState, new: LimitState) -> None:
        self._done_ids += len(new.done) - len(old.done)
        if self._done_ids > self._max_done_ids:
            # Over budget: this state keeps at most its share, oldest ids
            # first to go (docs/rate-limiting.md, "The memory store's memory").
            share = self._max_done_ids // max(1, len(self._states) + (key not in self._states))
            if len(new.done) > share:
                trimmed = trim_done(new.done, share)
                self._done_ids += len(trimmed) - len(new.done)
                new = replace(new, done=trimmed)
        self._states[key] = new

    def peek(self, key: str, specs: LimitSpecs, now_us: int) -> RateHeaders:
        return peek(specs, self.state(key), now_us)

    def sweep(self, now_us: int) -> int:
        """Drop every state idle for the grace period (a whole pass, at
        once); returns how many were dropped."""
        if not self._pass:
            self._start_pass()
        return self._sweep_some(now_us, len(self._pass))

    def _start_pass(self) -> None:
        self._pass = list(self._states)  # one C-level copy of the keys
        self._cursor = 0

    def _sweep_some(self, now_us: int, most: int) -> int:
        horizon = now_us - self._idle_grace_us
        end = min(self._cursor + most, len(self._pass))
        dropped = 0
        for key in self._pass[self._cursor : end]:
            state = self._states.get(key)
            if (
                state is not None
                and state.clock_us - state.skew_us <= horizon
                and is_idle(state, horizon)
            ):
                del self._states[key]
                self._done_ids -= len(state.done)
                dropped += 1
        self._cursor = end
        if end == len(self._pass):
            self._pass, self._cursor = [], 0
            self._last_sweep_us = now_us
            self._next_sweep_size = max(self._min_sweep_size, 2 * len(self._states))
        return dropped

    def _maybe_sweep(self, now_us: int) -> None:
        if not self._pass and (
            len(self._states) >= self._next_sweep_size
            or now_us - self._last_sweep_us >= self._sweep_interval_us
        ):
            self._start_pass()
        if self._pass:
            self._sweep_some(now_us, self._sweep_batch)
