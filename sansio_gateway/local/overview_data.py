"""What ``/admin/overview`` needs from the adapter, and what to ask the limit store.

Theory of operation: the Exchange asks for ``CollectOverview``; the adapter
calls :func:`limit_probes` for the users it has seen, runs each probe's
``peek`` against its limit store (which charges nothing), and answers with
one frozen :class:`OverviewSnapshot`: its live traffic statistics, the
probes' readings and its in-flight counts.  The core then renders the JSON
(``local/overview.py``).

A probe holds a single limit, so that one ``peek`` reads one limit: the
store's headers report the tightest limit of each unit, and a page that
shows "12 of 60 requests this minute" needs each limit on its own.  The
concurrency limit has no probe: its use is the requests in flight, which
the adapter counts itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config import GatewayConfig, LimitValues
from ..limits import LimitName, LimitSpecs, RateHeaders, build_specs
from .live_stats import LiveStats, StatsSnapshot

__all__ = [
    "MAX_USERS_SHOWN",
    "LimitProbe",
    "LimitReading",
    "OverviewSnapshot",
    "UserLimits",
    "limit_probes",
    "overview_users",
]

# Every shown user costs a few store round trips per refresh.
MAX_USERS_SHOWN = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitProbe:
    """One limit of one user, and the specs that make ``peek`` read it alone.
    ``burst`` is a rate limit's largest admissible cost: what its use is
    measured against (docs/rate-limiting.md, "What \"Used\" means in a 429")."""

    user: str
    name: LimitName
    limit: int
    burst: int | None
    specs: LimitSpecs


@dataclass(frozen=True, slots=True, kw_only=True)
class UserLimits:
    user: str
    probes: tuple[LimitProbe, ...]
    concurrent_requests: int | None  # the cap; its use is the user's requests in flight


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitReading:
    """A probe and what the store answered (None: the store could not say)."""

    probe: LimitProbe
    headers: RateHeaders | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OverviewSnapshot:
    now: float
    stats: StatsSnapshot
    users: tuple[UserLimits, ...]
    readings: tuple[LimitReading, ...]
    in_flight: int  # requests being served by this process
    streams: int  # of which streaming their answer now
    in_flight_by_user: Mapping[str, int]
    store_error: str | None = None  # why some readings are missing

    @classmethod
    def empty(cls, now: float) -> OverviewSnapshot:
        """No traffic kept, no limits read, nothing in flight but the
        overview request itself: for adapters that keep no figures."""
        return cls(
            now=now,
            stats=LiveStats().snapshot(now),
            users=(),
            readings=(),
            in_flight=1,
            streams=0,
            in_flight_by_user={},
        )


def overview_users(config: GatewayConfig, seen: Iterable[str]) -> tuple[str, ...]:
    """The users to show: every configured key's user, then those seen
    (most recent first), at most :data:`MAX_USERS_SHOWN`."""
    users = dict.fromkeys(key.user for key in config.auth.keys)
    for user in seen:
        if len(users) >= MAX_USERS_SHOWN:
            break
        users.setdefault(user, None)
    return tuple(users)[:MAX_USERS_SHOWN]


def limit_probes(
    config: GatewayConfig, users: Iterable[str], *, divisor: int = 1
) -> tuple[UserLimits, ...]:
    """Each user's limits (``[limits]`` and ``[limits.users.<user>]``, each
    divided by ``divisor`` as the Gateway divides them), one probe per limit.
    Per-model limits are not probed: they are per user and model, and the
    page shows a user's own limits."""
    out = []
    for user in users:
        specs = build_specs(config.limits, user, "", divisor=divisor, model_values=LimitValues())
        probes = [
            LimitProbe(
                user=user,
                name=rate.name,
                limit=rate.limit,
                burst=rate.burst,
                specs=LimitSpecs(rates=(rate,), lease_ttl_us=specs.lease_ttl_us),
            )
            for rate in specs.rates
        ]
        if specs.tokens_per_day is not None:
            probes.append(
                LimitProbe(
                    user=user,
                    name=LimitName.TOKENS_PER_DAY,
                    limit=specs.tokens_per_day,
                    burst=None,
                    specs=LimitSpecs(
                        tokens_per_day=specs.tokens_per_day, lease_ttl_us=specs.lease_ttl_us
                    ),
                )
            )
        out.append(
            UserLimits(
                user=user, probes=tuple(probes), concurrent_requests=specs.concurrent_requests
            )
        )
    return tuple(out)
