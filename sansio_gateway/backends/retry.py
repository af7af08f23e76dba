"""Retries and fallbacks before the client has seen a byte.

Theory of operation: a request has an ordered list of *targets* -- the
resolved (backend, model) first, then the model's configured ``fallbacks``
(``"backend:model"``).  When an attempt fails before anything reached the
client, :func:`next_step` says what to do:

* **retry the same target** after a backoff, for failures that say "try
  again": a connect error, or HTTP 502, 503 (Ollama's "server busy") or
  429 from the backend -- at most ``max_retries`` times per target;
* **move to the next target**, for any failure a different backend might
  not have: the above once retries are spent, other 5xx, timeouts, and a
  404 (that backend lacks the model);
* **give up**, for failures that are the request's own fault (other 4xx)
  or when the per-request attempt budget is spent.

Backoff is exponential with "full jitter" (AWS architecture blog, "Exponential
Backoff And Jitter"): ``uniform(0, min(cap, base * 2**n))``.  The random
number is passed in, so the policy stays deterministic under test.  A
backend's ``Retry-After`` is honoured when it is longer, up to the cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import GatewayError, UpstreamTimeout
from .catalogue import Route

__all__ = ["RetryStep", "next_step", "targets_for"]

RETRY_STATUSES = frozenset({429, 502, 503})
BACKOFF_CAP = 8.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryStep:
    kind: str  # "retry", "fallback" or "give_up"
    delay: float = 0.0


def targets_for(route: Route) -> list[Route]:
    """The route itself, then each configured fallback as a route."""
    out = [route]
    for spec in route.fallbacks:
        backend, _, target = spec.partition(":")
        out.append(Route(model=route.model, backend=backend, target=target or route.target))
    return out


def _retryable(status: int | None, error: GatewayError | None) -> bool:
    if status is not None:
        return status in RETRY_STATUSES
    return error is not None and error.code == "upstream_unreachable"


def _fallback_worthy(status: int | None, error: GatewayError | None) -> bool:
    if status is not None:
        return status >= 500 or status in (404, 408, 429)
    return error is not None and (isinstance(error, UpstreamTimeout) or error.status_code >= 500)


def _backoff(base: float, retry: int, rand: float, retry_after: float | None) -> float:
    delay = rand * min(BACKOFF_CAP, base * (1 << retry))
    if retry_after is not None:
        delay = max(delay, min(retry_after, BACKOFF_CAP))
    return delay


def next_step(
    *,
    status: int | None,
    error: GatewayError | None,
    retries_on_target: int,
    max_retries: int,
    attempts: int,
    max_attempts: int,
    has_next_target: bool,
    backoff_base: float,
    rand: float,
    retry_after: float | None = None,
) -> RetryStep:
    """What to do after a failed attempt (``status`` for an HTTP error
    answer, ``error`` for a transport failure)."""
    if attempts >= max_attempts:
        return RetryStep(kind="give_up")
    if _retryable(status, error) and retries_on_target < max_retries:
        return RetryStep(
            kind="retry", delay=_backoff(backoff_base, retries_on_target, rand, retry_after)
        )
    if has_next_target and (_retryable(status, error) or _fallback_worthy(status, error)):
        return RetryStep(kind="fallback")
    return RetryStep(kind="give_up")


def parse_retry_after(value: bytes | None) -> float | None:
    """Seconds from a ``Retry-After`` (delta-seconds form only) or
    ``retry-after-ms`` header value; None when absent or unparseable."""
    if value is None:
        return None
    try:
        seconds = float(value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    # "inf" and "1e999" parse too: not a wait anyone can keep.
    return seconds if 0 <= seconds < math.inf else None
