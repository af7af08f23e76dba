"""What one request reports when it ends: its usage record and its summary.

The Exchange gathers the facts; these builders give them their shape: the
``UsageRecord`` the ledger keeps, and the ``RequestSummary`` for the one
log line and the metrics of a request.  Neither holds prompt text or a key.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..actions import RecordUsage, UsageRecord
from ..identity import Identity
from .usage import TokenUsage

__all__ = ["RequestFacts", "RequestSummary", "summary", "usage_record"]


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


def _ttft(facts: RequestFacts) -> float | None:
    return None if facts.first_byte_at is None else facts.first_byte_at - facts.started_at


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
        )
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
