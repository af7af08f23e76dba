"""``GET /admin/overview``: the status page's JSON, for admin keys.

Theory of operation: :class:`AdminOverview` plans an
:class:`~sansio_gateway.flows.base.AdapterAnswer` asking for
``CollectOverview``; the adapter answers with an
:class:`~sansio_gateway.local.overview_data.OverviewSnapshot`, and
:func:`render_overview` shapes it, with what the request's
:class:`~sansio_gateway.flows.context.FlowContext` knows (backends, probes,
breakers, the catalogue), into one JSON document (docs/status-page.md,
"The JSON behind it").  Pure: the snapshot carries ``now``.
"""

from __future__ import annotations

import orjson

from ..actions import CollectOverview, OverviewCollected
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import InternalError
from ..flows.base import AdapterAnswer, AdapterData, LocalAnswer, Plan
from ..flows.context import FlowContext
from ..http import Headers
from ..limits import LimitName
from .gateway import LocalFlow
from .live_stats import BackendStats
from .overview_data import LimitReading, OverviewSnapshot, UserLimits

__all__ = ["OVERVIEW_HEADERS", "AdminOverview", "render_overview"]

# Live data: never cached by a browser or a proxy.
OVERVIEW_HEADERS: Headers = (
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)


class AdminOverview(LocalFlow):
    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        return AdapterAnswer(ask=CollectOverview(), render=self._render)

    def _render(self, result: AdapterData) -> LocalAnswer:
        if not isinstance(result, OverviewCollected):
            raise InternalError("the overview got an answer meant for another request")
        body = orjson.dumps(render_overview(self.context, result.snapshot))
        return LocalAnswer(status=200, headers=OVERVIEW_HEADERS, body=body)


def render_overview(context: FlowContext, snapshot: OverviewSnapshot) -> dict[str, object]:
    """The whole document; see docs/status-page.md, "The JSON behind it"."""
    stats = snapshot.stats
    return {
        "now": snapshot.now,
        "backends": [_backend(context, b, stats.backends.get(b.name)) for b in context.backends],
        "models": _models(context),
        "series": {
            "minutes": [m.minute * 60 for m in stats.minutes],
            "requests": [m.requests for m in stats.minutes],
            "tokens": [m.tokens for m in stats.minutes],
            "errors": [m.errors for m in stats.minutes],
            "limited": [m.limited for m in stats.minutes],
        },
        "users": [_user(u, snapshot) for u in snapshot.users],
        # Not counting the overview request itself, which is in flight as
        # the adapter counts.
        "in_flight": {"requests": max(0, snapshot.in_flight - 1), "streams": snapshot.streams},
        "limit_store": _store(context, snapshot),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _backend(
    context: FlowContext, backend: BackendConfig, stats: BackendStats | None
) -> dict[str, object]:
    status = context.backend_status.get(backend.name)
    probe: dict[str, object] | None = None
    if status is not None:
        probe = {
            "at": status.checked_at,
            "ok": status.up,
            "latency_ms": _ms(status.latency),
            "error": status.error,
            "models": status.models,
        }
    requests = stats.requests if stats else 0
    errors = stats.errors if stats else 0
    return {
        "name": backend.name,
        "kind": backend.kind,
        "url": backend.url,
        "circuit": context.circuit(backend.name).value,
        "last_probe": probe,
        "requests": requests,
        "errors": errors,
        "error_rate": round(errors / requests, 4) if requests else None,
        "latency_ms": {
            "p50": _ms(stats.latency_p50 if stats else None),
            "p99": _ms(stats.latency_p99 if stats else None),
        },
    }


def _models(context: FlowContext) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name, backend, _ in context.catalogue.models():
        route = context.catalogue.resolve(name)
        out.append(
            {
                "name": name,
                "backend": route.backend if route else backend,
                "target": route.target if route else name,
                "fallbacks": list(route.fallbacks) if route else [],
            }
        )
    return out


def _used(reading: LimitReading) -> int | None:
    """A rate limit's units not yet refilled (its burst less what remains),
    or the day's tokens (the quota less what remains); None when unknown."""
    probe, headers = reading.probe, reading.headers
    if headers is None:
        return None
    tokens = probe.name is not LimitName.REQUESTS_PER_MINUTE
    unit = headers.tokens if tokens else headers.requests
    if unit is None:
        return None
    ceiling = probe.burst if probe.burst is not None else unit.limit
    return max(0, ceiling - unit.remaining)


def _user(user: UserLimits, snapshot: OverviewSnapshot) -> dict[str, object]:
    readings = [r for r in snapshot.readings if r.probe.user == user.user]
    limits: list[dict[str, object]] = [
        {
            "name": r.probe.name.value,
            "limit": r.probe.limit,
            "burst": r.probe.burst,
            "used": _used(r),
        }
        for r in readings
    ]
    in_flight = snapshot.in_flight_by_user.get(user.user, 0)
    if user.concurrent_requests is not None:
        limits.append(
            {
                "name": LimitName.CONCURRENT_REQUESTS.value,
                "limit": user.concurrent_requests,
                "burst": None,
                "used": in_flight,
            }
        )
    quota = next((r for r in readings if r.probe.name is LimitName.TOKENS_PER_DAY), None)
    seen = snapshot.stats.users.get(user.user)
    return {
        "user": user.user,
        "limits": limits,
        "requests": seen.requests if seen else 0,
        "tokens": seen.tokens if seen else 0,
        "rate_limited": seen.limited if seen else 0,
        "last_seen": seen.last_seen if seen else None,
        "in_flight": in_flight,
        "today": {
            "tokens": _used(quota) if quota else None,
            "quota": quota.probe.limit if quota else None,
        },
    }


def _store(context: FlowContext, snapshot: OverviewSnapshot) -> dict[str, object]:
    store = context.store_status
    return {
        "ready": store.ready if store else True,
        "serving": store.serving if store else True,
        "reason": store.reason if store else None,
        "error": snapshot.store_error,
    }
