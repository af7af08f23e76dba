"""Recent traffic for the status page: per-minute counts, per-backend
latency and errors, per-user totals.

Theory of operation: the adapter owns one :class:`LiveStats` and feeds it
every finished request with :meth:`LiveStats.observe` (facts from the same
request summary its metrics and access log see, and the time it finished).
:meth:`LiveStats.snapshot` returns frozen values for ``/admin/overview``
to render.  Nothing here reads a clock: the caller passes ``now``.

Only requests that named a model are counted (see :meth:`LiveStats.observe`).
Every store is bounded: ``window`` minute buckets (older ones are dropped
as time moves on), ``samples`` recent requests per backend (for the error
rate and the latency percentiles), and ``max_users`` users (the one seen
least recently is forgotten first).  The counts are this process's own:
with ``--workers N`` each worker keeps its own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "BackendStats",
    "LiveStats",
    "MinuteCounts",
    "StatsSnapshot",
    "UserStats",
    "percentile",
]

DEFAULT_WINDOW_MINUTES = 30
DEFAULT_SAMPLES = 512
DEFAULT_MAX_USERS = 1000
NO_MODEL = "-"  # the Exchange's metrics label for a route that takes no model


@dataclass(frozen=True, slots=True, kw_only=True)
class MinuteCounts:
    minute: int  # minutes since the epoch (UTC)
    requests: int = 0
    tokens: int = 0
    errors: int = 0  # answered 5xx (the gateway's or a backend's fault)
    limited: int = 0  # answered 429


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendStats:
    requests: int  # among the recent samples
    errors: int
    latency_p50: float | None  # seconds, whole request (a stream until its end)
    latency_p99: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class UserStats:
    requests: int
    tokens: int
    limited: int  # 429s answered to this user
    last_seen: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsSnapshot:
    minutes: tuple[MinuteCounts, ...]  # oldest first, one per minute of the window
    backends: Mapping[str, BackendStats]
    users: Mapping[str, UserStats]


@dataclass(slots=True)
class _Counts:
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    limited: int = 0


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    latency: float
    error: bool


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``values`` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * fraction))
    return ordered[rank - 1]


class LiveStats:
    """Bounded recent traffic; see the module docstring."""

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW_MINUTES,
        samples: int = DEFAULT_SAMPLES,
        max_users: int = DEFAULT_MAX_USERS,
    ) -> None:
        if window < 1 or samples < 1 or max_users < 1:
            raise ValueError("window, samples and max_users must be positive")
        self.window = window
        self.samples = samples
        self.max_users = max_users
        self._minutes: dict[int, _Counts] = {}
        self._backends: dict[str, deque[_Sample]] = {}
        self._users: dict[str, tuple[_Counts, float]] = {}

    def observe(
        self,
        *,
        now: float,
        user: str,
        model: str,
        backend: str,
        status: int,
        tokens: int,
        latency: float,
    ) -> None:
        """One request finished at ``now`` (seconds since the epoch) with
        ``status``; ``backend`` is empty when none was reached.

        Only API requests count: those that named a model (``model`` is the
        metrics label, ``"-"`` on routes without one).  The page's own
        refreshes, health probes and scrapes would otherwise be most of the
        traffic it shows, and every browser would count as a user.
        """
        if model == NO_MODEL:
            return
        error = status >= 500
        limited = status == 429
        minute = int(now // 60)
        counts = self._minutes.get(minute)
        if counts is None:
            counts = self._minutes[minute] = _Counts()
            self._forget_minutes_before(minute - self.window + 1)
        _add(counts, tokens, error, limited)
        if backend:
            samples = self._backends.get(backend)
            if samples is None:
                samples = self._backends[backend] = deque(maxlen=self.samples)
            samples.append(_Sample(at=now, latency=latency, error=error))
        self._observe_user(user, tokens, error, limited, now)

    def users(self) -> tuple[str, ...]:
        """The users seen, most recently seen first."""
        return tuple(sorted(self._users, key=lambda u: -self._users[u][1]))

    def snapshot(self, now: float) -> StatsSnapshot:
        """The window ending at ``now``: every minute present, zeros included."""
        last = int(now // 60)
        minutes = tuple(
            _minute(m, self._minutes.get(m)) for m in range(last - self.window + 1, last + 1)
        )
        since = (last - self.window + 1) * 60
        backends = {
            name: _backend_stats([s for s in samples if s.at >= since])
            for name, samples in self._backends.items()
        }
        users = {
            user: UserStats(requests=c.requests, tokens=c.tokens, limited=c.limited, last_seen=seen)
            for user, (c, seen) in self._users.items()
        }
        return StatsSnapshot(minutes=minutes, backends=backends, users=users)

    def _observe_user(self, user: str, tokens: int, error: bool, limited: bool, now: float) -> None:
        entry = self._users.get(user)
        if entry is None:
            if len(self._users) >= self.max_users:
                oldest = min(self._users, key=lambda u: self._users[u][1])
                del self._users[oldest]
            entry = (_Counts(), now)
        counts = entry[0]
        _add(counts, tokens, error, limited)
        self._users[user] = (counts, max(now, entry[1]))

    def _forget_minutes_before(self, minute: int) -> None:
        for old in [m for m in self._minutes if m < minute]:
            del self._minutes[old]


def _add(counts: _Counts, tokens: int, error: bool, limited: bool) -> None:
    counts.requests += 1
    counts.tokens += tokens
    counts.errors += error
    counts.limited += limited


def _minute(minute: int, counts: _Counts | None) -> MinuteCounts:
    if counts is None:
        return MinuteCounts(minute=minute)
    return MinuteCounts(
        minute=minute,
        requests=counts.requests,
        tokens=counts.tokens,
        errors=counts.errors,
        limited=counts.limited,
    )


def _backend_stats(samples: list[_Sample]) -> BackendStats:
    latencies = [s.latency for s in samples]
    return BackendStats(
        requests=len(samples),
        errors=sum(s.error for s in samples),
        latency_p50=percentile(latencies, 0.5),
        latency_p99=percentile(latencies, 0.99),
    )
