"""/ready and /status reflect the shared limit store (issue 11), without sockets."""

from __future__ import annotations

from ..helpers import NOW, ExchangeDriver
from .test_exchange import gateway


def _get(gw: object, path: str) -> ExchangeDriver:
    d = ExchangeDriver(gw)  # type: ignore[arg-type]
    d.start("GET", path)
    return d


def test_ready_is_503_until_the_store_is_warm_with_the_reason_in_status() -> None:
    gw = gateway(discovered=False)
    gw.record_discovery("ollama", [], NOW)
    assert _get(gw, "/ready").seen.status == 200  # no shared store: backends decide
    assert "limit_store" not in _get(gw, "/status").seen.json()

    gw.record_store(ready=False, serving=False, reason="not yet connected")
    ready = _get(gw, "/ready").seen
    assert ready.status == 503
    assert ready.json() == {
        "status": "unavailable",
        "backends_up": ["ollama"],
        "store": "not yet connected",
    }
    assert _get(gw, "/status").seen.json()["limit_store"] == {
        "ready": False,
        "serving": False,
        "reason": "not yet connected",
    }

    gw.record_store(ready=True, serving=True, reason=None)
    assert _get(gw, "/ready").seen.status == 200
    # Warm but its breaker open: still ready (the policy answers meanwhile).
    gw.record_store(ready=True, serving=False, reason="decisions failing (breaker open)")
    assert _get(gw, "/ready").seen.status == 200
    assert _get(gw, "/status").seen.json()["limit_store"]["serving"] is False
