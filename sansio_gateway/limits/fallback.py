"""The ``on_error`` policy of a shared limit store, with time passed in.

Theory of operation: the adapter's ``ResilientLimitStore`` calls the shared
store when :func:`~sansio_gateway.limits.breaker.may_call` allows it.  When
the store cannot decide (an error, a round trip past its timeout, the
breaker open, the store not warmed), the operator's policy decides instead,
and this module says how, so the adapter only executes it:

* :func:`fallback_admit` -- ``closed`` refuses (503, ``STORE_UNAVAILABLE``),
  ``open`` admits unchecked, ``local`` asks the process's own memory store
  with every limit divided by the number of instances; and which store then
  owns the request's commit.
* :func:`commit_plan` -- a request is committed to the store that admitted
  it, and a lease the shared store may have granted after its admit timed
  out (an *orphan*) is released first.
* :func:`leaves_orphan` and :func:`claims_orphan` -- which failures leave
  such a lease behind, and which refusals must release it later (no commit
  will come for them).
* :func:`peek_route` -- where the rate-limit headers of a request come from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from .breaker import Phase
from .decision import Decision, DenyReason, Fallback
from .specs import LimitSpecs, divide_specs

__all__ = [
    "FALLBACK_RETRY_AFTER_US",
    "CommitPlan",
    "FallbackAdmit",
    "Route",
    "claims_orphan",
    "commit_plan",
    "fallback_admit",
    "leaves_orphan",
    "local_decision",
    "local_specs",
    "peek_route",
]

FALLBACK_RETRY_AFTER_US = 1_000_000  # what a "closed" refusal tells the client to wait


class Route(enum.Enum):
    """Which store a call goes to."""

    SHARED = "shared"  # the configured (shared) store
    LOCAL = "local"  # the process's own memory store, limits divided
    NOWHERE = "nowhere"  # no store: nothing to settle, or nothing to read


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackAdmit:
    """The policy's answer to one admission the shared store did not decide.

    ``decision`` is final when set; when None, the adapter asks the local
    store with ``specs`` and passes its decision through :func:`local_decision`.
    ``owner`` is the store the request's commit goes to (None: refused, no
    commit comes).
    """

    decision: Decision | None
    owner: Fallback | None
    specs: LimitSpecs | None = None


def local_specs(specs: LimitSpecs, instances: int) -> LimitSpecs:
    """Each of ``instances`` processes enforces its share of every limit."""
    return divide_specs(specs, instances)


def fallback_admit(
    policy: Fallback, specs: LimitSpecs, instances: int, now_us: int
) -> FallbackAdmit:
    if policy is Fallback.CLOSED:
        refused = Decision(
            allowed=False,
            now_us=now_us,
            retry_after_us=FALLBACK_RETRY_AFTER_US,
            reason=DenyReason.STORE_UNAVAILABLE,
            fallback=policy,
        )
        return FallbackAdmit(decision=refused, owner=None)
    if policy is Fallback.OPEN:
        return FallbackAdmit(
            decision=Decision(allowed=True, now_us=now_us, fallback=policy), owner=policy
        )
    return FallbackAdmit(decision=None, owner=policy, specs=local_specs(specs, instances))


def local_decision(decision: Decision) -> Decision:
    """The local store's decision, marked as the policy's."""
    return replace(decision, fallback=Fallback.LOCAL)


def leaves_orphan(phase: Phase) -> bool:
    """Whether an admit that failed in ``phase`` may still run in the store.

    A failed round trip (DECISION) may have reached the store, which then
    holds a lease no one releases; a CONNECT failure never sent the script.
    """
    return phase is Phase.DECISION


def claims_orphan(decision: Decision) -> bool:
    """Whether the orphan of a request the policy answered ``decision`` must
    be released by the adapter later: a refused request gets no commit."""
    return not decision.allowed


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitPlan:
    """What one commit does: release the orphan lease first (in the shared
    store, with nothing used), then settle the request in ``route``."""

    release_orphan: bool
    route: Route


def commit_plan(owner: Fallback | None, orphaned: bool) -> CommitPlan:
    """``owner`` is :attr:`FallbackAdmit.owner` when the policy admitted the
    request (None when the shared store did); ``orphaned`` when its admit
    left an orphan (:func:`leaves_orphan`)."""
    if owner is Fallback.LOCAL:
        route = Route.LOCAL
    elif owner is Fallback.OPEN or orphaned:
        # No lease of the shared store's own to settle, beyond the orphan's.
        route = Route.NOWHERE
    else:
        route = Route.SHARED
    return CommitPlan(release_orphan=orphaned, route=route)


def peek_route(serving: bool, policy: Fallback) -> Route:
    """Where headers come from: the shared store while it serves, else the
    local store under ``local``, else nowhere (no headers)."""
    if serving:
        return Route.SHARED
    return Route.LOCAL if policy is Fallback.LOCAL else Route.NOWHERE
