"""The shared store's ``on_error`` policy: every policy, owner and orphan case."""

from __future__ import annotations

import pytest

from sansio_gateway.config import LimitsConfig
from sansio_gateway.limits import DenyReason, Fallback, MemoryLimitStore, build_specs
from sansio_gateway.limits.breaker import Phase
from sansio_gateway.limits.fallback import (
    FALLBACK_RETRY_AFTER_US,
    CommitPlan,
    Route,
    claims_orphan,
    commit_plan,
    fallback_admit,
    leaves_orphan,
    local_decision,
    local_specs,
    peek_route,
)
from sansio_gateway.limits.specs import Costs

NOW = 1_800_000_000_000_000
SPECS = build_specs(
    LimitsConfig(requests_per_minute=60, tokens_per_minute=6000, concurrent_requests=4), "u", "m"
)


def test_closed_refuses_with_a_store_unavailable_denial_and_no_commit() -> None:
    plan = fallback_admit(Fallback.CLOSED, SPECS, 3, NOW)
    assert plan.owner is None and plan.specs is None
    assert plan.decision is not None
    assert not plan.decision.allowed
    assert plan.decision.reason is DenyReason.STORE_UNAVAILABLE
    assert plan.decision.fallback is Fallback.CLOSED
    assert plan.decision.retry_after_us == FALLBACK_RETRY_AFTER_US
    assert plan.decision.now_us == NOW


def test_open_admits_unchecked_and_owns_the_commit() -> None:
    plan = fallback_admit(Fallback.OPEN, SPECS, 3, NOW)
    assert plan.owner is Fallback.OPEN and plan.specs is None
    assert plan.decision is not None
    assert plan.decision.allowed and plan.decision.fallback is Fallback.OPEN
    assert plan.decision.now_us == NOW


@pytest.mark.parametrize("instances", [1, 2, 3])
def test_local_asks_the_local_store_with_each_instances_share(instances: int) -> None:
    plan = fallback_admit(Fallback.LOCAL, SPECS, instances, NOW)
    assert plan.decision is None and plan.owner is Fallback.LOCAL
    assert plan.specs == local_specs(SPECS, instances)
    assert plan.specs is not None
    assert plan.specs.concurrent_requests == 4 // instances
    assert [r.limit for r in plan.specs.rates] == [r.limit // instances for r in SPECS.rates]


def test_a_local_decision_is_marked_as_the_policys() -> None:
    plan = fallback_admit(Fallback.LOCAL, SPECS, 2, NOW)
    assert plan.specs is not None
    store = MemoryLimitStore()
    # Two concurrent requests is this instance's share of four.
    decisions = [
        local_decision(store.admit("u", plan.specs, NOW, Costs(tokens=1), rid))
        for rid in ("a", "b", "c")
    ]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert all(d.fallback is Fallback.LOCAL for d in decisions)


def test_only_a_failed_round_trip_leaves_an_orphan_lease() -> None:
    assert leaves_orphan(Phase.DECISION)
    assert not leaves_orphan(Phase.CONNECT)


def test_a_refused_requests_orphan_is_claimed_for_release_later() -> None:
    refused = fallback_admit(Fallback.CLOSED, SPECS, 1, NOW).decision
    admitted = fallback_admit(Fallback.OPEN, SPECS, 1, NOW).decision
    assert refused is not None and admitted is not None
    assert claims_orphan(refused)
    assert not claims_orphan(admitted)


@pytest.mark.parametrize(
    ("owner", "orphaned", "expected"),
    [
        (None, False, CommitPlan(release_orphan=False, route=Route.SHARED)),
        (None, True, CommitPlan(release_orphan=True, route=Route.NOWHERE)),
        (Fallback.OPEN, False, CommitPlan(release_orphan=False, route=Route.NOWHERE)),
        (Fallback.OPEN, True, CommitPlan(release_orphan=True, route=Route.NOWHERE)),
        (Fallback.LOCAL, False, CommitPlan(release_orphan=False, route=Route.LOCAL)),
        (Fallback.LOCAL, True, CommitPlan(release_orphan=True, route=Route.LOCAL)),
    ],
)
def test_a_request_is_committed_to_the_store_that_admitted_it(
    owner: Fallback | None, orphaned: bool, expected: CommitPlan
) -> None:
    assert commit_plan(owner, orphaned) == expected


@pytest.mark.parametrize("policy", list(Fallback))
def test_headers_come_from_the_shared_store_while_it_serves(policy: Fallback) -> None:
    assert peek_route(True, policy) is Route.SHARED
    expected = Route.LOCAL if policy is Fallback.LOCAL else Route.NOWHERE
    assert peek_route(False, policy) is expected
