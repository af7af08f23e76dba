"""``POST /admin/reload``: read the config file again, for admin keys.

Theory of operation: :class:`AdminReload` plans an
:class:`~sansio_gateway.flows.base.AdapterAnswer` asking for
``ReloadConfig``; the adapter reads and parses the file, asks
:func:`~sansio_gateway.reload.plan_reload` whether it may replace the
running config, applies it or not, and answers with the
:class:`~sansio_gateway.reload.ReloadOutcome`, which :func:`render_reload`
turns into the answer: 200 with what changed, 400 naming the keys of a
refused config (in the gateway surface's error envelope, the first key as
``param``), 409 when there is no file to read again.
"""

from __future__ import annotations

import orjson

from ..actions import ConfigReloaded, ReloadConfig
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, InternalError, InvalidRequest
from ..flows.base import AdapterAnswer, AdapterData, LocalAnswer, Plan
from ..http import Headers, Surface
from ..reload import ReloadOutcome
from ..rendering import error_response
from .gateway import LocalFlow

__all__ = ["AdminReload", "render_reload"]

_HEADERS: Headers = (
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
)


class AdminReload(LocalFlow):
    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        return AdapterAnswer(ask=ReloadConfig(), render=self._render)

    def _render(self, result: AdapterData) -> LocalAnswer:
        if not isinstance(result, ConfigReloaded):
            raise InternalError("the reload got an answer meant for another request")
        return render_reload(result.outcome)


def render_reload(outcome: ReloadOutcome) -> LocalAnswer:
    """The answer to ``POST /admin/reload`` (see the module docstring)."""
    if not outcome.applied:
        status, headers, body = error_response(Surface.GATEWAY, _refusal(outcome))
        return LocalAnswer(status=status, headers=headers, body=body)
    assert outcome.plan is not None
    document = {
        "reloaded": True,
        "source": outcome.source,
        "generation": outcome.generation,
        "workers_told": outcome.workers_told,
        **outcome.plan.summary(),
    }
    return LocalAnswer(status=200, headers=_HEADERS, body=orjson.dumps(document))


def _refusal(outcome: ReloadOutcome) -> GatewayError:
    reasons = "; ".join(str(p) for p in outcome.problems)
    if outcome.unavailable:
        return GatewayError(
            reasons, status_code=409, type="invalid_request_error", code="reload_unavailable"
        )
    key = next((p.key for p in outcome.problems if p.key is not None), None)
    return InvalidRequest(
        f"config refused, the running config stays: {reasons}", param=key, code="invalid_config"
    )
