"""The limit lease of one request: admitted once, settled once.

Theory of operation: when rate limits apply to a request, the Exchange
asks for admission with an upper-bound estimate (``check``).  If the store
admits it, the lease holds the request's concurrency slot and its charged
estimate until :meth:`LimitLease.settle` turns it into the request's one
``CommitLimits``: the amount :func:`charge` says the request really cost
(docs/rate-limiting.md, "What is charged").  Immutable; every method
returns a new value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..actions import CheckLimits, CommitLimits
from ..limits import Costs, LimitSpecs, Unit
from .admission import fitted_cap, request_charge, write_output_cap

__all__ = ["LimitLease", "charge", "lease_for", "token_ceiling"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitLease:
    key: str  # the user's key in the store
    specs: LimitSpecs
    request_id: str
    estimate: int  # tokens charged at admission
    output_cap: int | None = None  # written upstream when token limits apply
    route: str = ""  # the route's name: where the upstream body holds its cap
    admitted: bool = False
    settled: bool = False

    def check(self) -> CheckLimits:
        return CheckLimits(
            key=self.key,
            specs=self.specs,
            costs=Costs(tokens=self.estimate, requests=1),
            request_id=self.request_id,
        )

    def capped(self, kind: str, body: bytes) -> bytes:
        """``body`` (an upstream request to a backend of ``kind``) with the
        output cap admission charged written in, when token limits apply:
        the cap charged is the cap the backend reads, on every route and
        backend kind (docs/rate-limiting.md, "What is charged")."""
        if self.output_cap is None:
            return body
        return write_output_cap(kind, body, self.output_cap, route=self.route)

    def admit(self) -> LimitLease:
        return self._marked(admitted=True, settled=self.settled)

    def _marked(self, *, admitted: bool, settled: bool) -> LimitLease:
        """This lease with new flags: built directly, not with
        ``dataclasses.replace`` (three times the cost; twice per request)."""
        return LimitLease(
            key=self.key,
            specs=self.specs,
            request_id=self.request_id,
            estimate=self.estimate,
            output_cap=self.output_cap,
            route=self.route,
            admitted=admitted,
            settled=settled,
        )

    @property
    def open(self) -> bool:
        """Admitted and not yet settled: a commit is owed."""
        return self.admitted and not self.settled

    def settle(self, actual: int) -> tuple[LimitLease, CommitLimits | None]:
        """The one commit of an admitted lease (None if not admitted, or
        already settled)."""
        if not self.open:
            return self, None
        commit = CommitLimits(
            key=self.key,
            specs=self.specs,
            request_id=self.request_id,
            estimate=self.estimate,
            actual=max(0, actual),
        )
        return self._marked(admitted=True, settled=True), commit


def charge(
    *,
    reported: int | None,
    maybe_generated: bool,
    left_stream: bool,
    streamed: Callable[[], int],
    estimate: int,
) -> int:
    """What the limits are charged for a request that reached a backend
    (docs/rate-limiting.md, "What is charged"): the backend's own counts when
    it gave them (``reported``); else nothing when every attempt ended
    before the backend could generate (no connection, or a 4xx refusal);
    else, for a stream the client left, the prompt and the output streamed
    so far (``streamed``; the upstream is cancelled at once); else the
    reserved amount -- an upstream error after the send, a malformed
    answer, a first-byte timeout, a non-stream client disconnect or an
    answer without counts may all have generated."""
    if reported is not None:
        return reported
    if not maybe_generated:
        return 0
    if left_stream:
        return streamed()
    return estimate


def token_ceiling(specs: LimitSpecs) -> int | None:
    """The largest token charge the limits can ever admit (the smallest
    token burst or daily quota), or None when no token limit applies."""
    bounds = [spec.burst for spec in specs.rates if spec.unit is Unit.TOKENS]
    if specs.tokens_per_day is not None:
        bounds.append(specs.tokens_per_day)
    return min(bounds) if bounds else None


def lease_for(
    *,
    decoded: dict[str, Any],
    route: str,
    generates: bool,
    specs: LimitSpecs,
    key: str,
    request_id: str,
    default_output_cap: int,
    uses_tokens: bool = True,
) -> LimitLease:
    """The lease to ask for: an upper-bound estimate of what the request
    costs (accounting/admission.py), fitted under the token limits.  A
    route that uses no tokens (a token count) costs one request and no
    tokens."""
    if not uses_tokens:
        return LimitLease(key=key, specs=specs, request_id=request_id, estimate=0, route=route)
    ceiling = token_ceiling(specs)
    estimate = fitted_cap(
        request_charge(
            decoded, default_output_cap=default_output_cap, generates=generates, route=route
        ),
        ceiling,
    )
    return LimitLease(
        key=key,
        specs=specs,
        request_id=request_id,
        estimate=estimate.total,
        output_cap=estimate.cap if generates and ceiling is not None else None,
        route=route,
    )
