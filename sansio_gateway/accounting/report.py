"""What one request reports when it ends: its usage record and its summary.

:func:`facts_of` reads the facts off the Exchange's public attributes (the
ones adapters read too); these builders give them their shape: the
``UsageRecord`` the ledger keeps, and the ``RequestSummary`` for the one
log line and the metrics of a request.  Neither holds prompt text or a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..actions import RecordUsage, UsageRecord
from ..http import Surface
from ..identity import Identity
from .usage import TokenUsage

__all__ = ["Reported", "RequestFacts", "RequestSummary", "facts_of", "summary", "usage_record"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSummary:
    request_id: str
    surface: str
    route: str
    key_id: str | None
    user: str
    model: str
    backend: str
    resolved_model: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency: float
    ttft: float | None
    retries: int
    client_disconnected: bool
    # The model as a metrics label: the catalogue's name for it, "unknown"
    # for a name the catalogue does not hold (or one hidden by the caller's
    # allow-list), "-" for routes without a model.  Never the client's
    # free-form string, so clients cannot mint label values.
    model_label: str = "-"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFacts:
    """What an Exchange knows about its request when it reports."""

    request_id: str
    identity: Identity
    surface: str
    route: str
    model: str
    backend: str
    resolved_model: str
    status: int
    started_at: float
    first_byte_at: float | None
    attempts: int
    # False on a token count (routes.py): no ledger row, no time to first token.
    uses_tokens: bool = True


class _Named(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def uses_tokens(self) -> bool: ...


class Reported(Protocol):
    """What the reports read of an Exchange (exchange.py)."""

    @property
    def identity(self) -> Identity: ...
    @property
    def surface(self) -> Surface: ...
    @property
    def route(self) -> _Named | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def backend(self) -> str: ...
    @property
    def resolved_model(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def first_byte_at(self) -> float | None: ...


def facts_of(exchange: Reported, *, request_id: str, attempts: int) -> RequestFacts:
    """The facts of ``exchange``'s request as it stands, under ``request_id``
    (the gateway's own for the ledger, the client's trace id for the log),
    after ``attempts`` upstream attempts."""
    route = exchange.route
    return RequestFacts(
        request_id=request_id,
        identity=exchange.identity,
        surface=exchange.surface.value,
        route=route.name if route is not None else "unknown",
        model=exchange.model or "",
        backend=exchange.backend,
        resolved_model=exchange.resolved_model,
        status=exchange.status or 0,
        started_at=exchange.started_at,
        first_byte_at=exchange.first_byte_at,
        attempts=attempts,
        uses_tokens=route.uses_tokens if route is not None else True,
    )


def _ttft(facts: RequestFacts) -> float | None:
    # A token count's answer holds no token: its latency is all there is.
    if facts.first_byte_at is None or not facts.uses_tokens:
        return None
    return facts.first_byte_at - facts.started_at


def usage_record(
    facts: RequestFacts, usage: TokenUsage, *, reported: bool, outcome: str, now: float
) -> RecordUsage:
    return RecordUsage(
        record=UsageRecord(
            request_id=facts.request_id,
            time=facts.started_at,
            key_id=facts.identity.key_id,
            user=facts.identity.user,
            model=facts.model,
            resolved_model=facts.resolved_model,
            backend=facts.backend,
            surface=facts.surface,
            route=facts.route,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            status=facts.status,
            latency=now - facts.started_at,
            ttft=_ttft(facts),
            outcome=outcome,
            usage_reported=reported,
            attempts=facts.attempts,
        ),
        ledger=facts.uses_tokens,
    )


def summary(
    facts: RequestFacts, usage: TokenUsage | None, *, model_label: str, now: float
) -> RequestSummary:
    return RequestSummary(
        request_id=facts.request_id,
        surface=facts.surface,
        route=facts.route,
        key_id=facts.identity.key_id,
        user=facts.identity.user,
        model=facts.model,
        backend=facts.backend,
        resolved_model=facts.resolved_model,
        status=facts.status,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        latency=now - facts.started_at,
        ttft=_ttft(facts),
        retries=max(0, facts.attempts - 1),
        # 499: the client went away before its response was complete.
        client_disconnected=facts.status == 499,
        model_label=model_label,
    )
