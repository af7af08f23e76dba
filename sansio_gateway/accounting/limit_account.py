"""The limit account of one request: what it asked of the limits, and the
one commit it owes them.

Theory of operation: an Exchange keeps one account per request.  When
limits apply, :meth:`LimitAccount.ask` holds the request's lease
(``lease.py``) and returns its ``CheckLimits``; the store's decision comes
back through :meth:`LimitAccount.decided` (a refusal in the surface's
form -- a 429, or a 503 when the store cannot decide and ``on_error`` is
closed -- or an admission whose rate-limit headers every response of the
request carries).  However the request ends, an admitted lease is settled once --
refunded (:meth:`LimitAccount.settle` with 0) or charged what
:meth:`LimitAccount.charge_used` finds it cost -- and the ``CommitLimits``
that makes is *owed*: the Exchange collects it with
:meth:`LimitAccount.take` at the end of the step, after the step's other
actions.  So an admitted request produces exactly one ``CommitLimits``, and
a request never admitted none.  No I/O; the Exchange drives it.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..actions import CheckLimits, CommitLimits
from ..backends.attempts import Attempts
from ..backends.catalogue import Route
from ..config import GatewayConfig
from ..http import Headers, Surface
from ..limits import Decision, LimitSpecs, rate_limit_headers, render_denial
from .admission import DEFAULT_OUTPUT_CAP
from .lease import LimitLease, charge, lease_for
from .usage import TokenUsage

__all__ = ["LimitAccount", "LimitSource", "LimitedRoute", "Used"]


class LimitSource(Protocol):
    """What the account reads of the Gateway (``GatewayView`` has it)."""

    limits_on: bool
    config: GatewayConfig

    def limit_specs(self, user: str, route: Route) -> LimitSpecs: ...


class LimitedRoute(Protocol):
    """What the account reads of a route's declaration (routes.py, ``RouteDecl``)."""

    @property
    def name(self) -> str: ...
    @property
    def limited(self) -> bool: ...
    @property
    def generates(self) -> bool: ...
    @property
    def uses_tokens(self) -> bool: ...


class Used(Protocol):
    """What an attempt's answer says the request used (flows/attempt.py)."""

    @property
    def usage(self) -> TokenUsage | None:
        """The backend's own counts, when it reported them."""

    def estimate_usage(self) -> TokenUsage:
        """An estimate of what was used so far, when it did not."""


class LimitAccount:
    """One request's lease, once asked for, and the commit it owes."""

    __slots__ = ("headers", "lease", "owed", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id  # the gateway's own: the store keys leases on it
        self.lease: LimitLease | None = None
        # The admission's x-ratelimit-* headers, for every response after it.
        self.headers: Headers = ()
        # Settled and not yet collected; None on every step but the last.
        self.owed: CommitLimits | None = None

    def ask(
        self,
        gateway: LimitSource,
        route: LimitedRoute,
        decoded: dict[str, Any],
        *,
        key: str,
        target: Route,
    ) -> CheckLimits | None:
        """Ask for admission, charging an upper-bound estimate of what the
        request costs (``lease_for``, from the body as the route's parser
        decoded it); None when no limit applies to ``key`` calling
        ``target``'s model on ``route``."""
        if not gateway.limits_on or not route.limited:
            return None
        specs = gateway.limit_specs(key, target)
        if not route.uses_tokens:
            specs = specs.requests_only()  # docs/rate-limiting.md, "Token counts"
        if specs.empty:
            return None
        self.lease = lease_for(
            decoded=decoded,
            route=route.name,
            generates=route.generates,
            uses_tokens=route.uses_tokens,
            specs=specs,
            key=key,
            request_id=self.request_id,
            default_output_cap=gateway.config.server.default_max_tokens or DEFAULT_OUTPUT_CAP,
        )
        return self.lease.check()

    def decided(
        self, decision: Decision, *, surface: Surface, model: str
    ) -> tuple[int, Headers, bytes] | None:
        """The store's answer to :meth:`ask`: None when it admits (the lease
        is then owed a commit), else the refusal's ``(status, headers, body)``."""
        assert self.lease is not None
        if not decision.allowed:
            return render_denial(decision, surface=surface, model=model, organization="gateway")
        self.lease = self.lease.admit()
        self.headers = rate_limit_headers(decision.headers)
        return None

    def decided_after_leaving(self, decision: Decision) -> None:
        """The decision came after the client left: nothing was sent, so an
        admission is released at once (the tokens refunded, the slot freed)."""
        if decision.allowed and self.lease is not None:
            self.lease = self.lease.admit()
            self.settle(0)

    def capped(self, kind: str, body: bytes) -> bytes:
        """An upstream body with the output cap admission charged written in
        (``LimitLease.capped``), or as it is when no lease was asked for."""
        return body if self.lease is None else self.lease.capped(kind, body)

    def settle(self, actual: int) -> None:
        """Owe the one commit of an admitted lease, charged ``actual``
        tokens (a no-op when there is none, or it is settled already)."""
        if self.lease is not None:
            self.lease, commit = self.lease.settle(actual)
            self.owed = commit or self.owed

    def charge_used(self, answer: Used, attempts: Attempts, *, client_left: bool) -> None:
        """Settle a request that reached a backend at what ``charge`` says it
        cost (docs/rate-limiting.md, "What is charged"), from what the last
        attempt's ``answer`` reported and what ``attempts`` may have made."""
        lease = self.lease
        if lease is None or not lease.open:
            return
        reported = answer.usage
        self.settle(
            charge(
                reported=None if reported is None else reported.total_tokens,
                maybe_generated=attempts.maybe_generated,
                left_stream=client_left and attempts.stream,
                streamed=lambda: answer.estimate_usage().total_tokens,
                estimate=lease.estimate,
            )
        )

    def take(self) -> tuple[CommitLimits, ...]:
        """The owed commit, once: the last action of the step that settled."""
        owed, self.owed = self.owed, None
        return () if owed is None else (owed,)
