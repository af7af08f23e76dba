"""Which limits apply: spec building from [limits], overrides, divisors, bounds."""

from __future__ import annotations

import pytest

from sansio_gateway.config import LimitsConfig, LimitValues, parse_config
from sansio_gateway.limits import (
    MINUTE_US,
    LimitName,
    LimitSpecs,
    RateSpec,
    Scope,
    Unit,
    build_specs,
    divide_specs,
    lease_ttl_for,
)
from sansio_gateway.limits.specs import MAX_RATE_LIMIT, Costs, default_burst_us

TOML = """
[[backends]]
name = "local"
url = "http://127.0.0.1:11434"

[limits]
requests_per_minute = 60
tokens_per_minute   = 100000
tokens_per_day      = 2000000
concurrent_requests = 8
[limits.users.alice]
tokens_per_minute = 200000
[limits.models."gpt-4o-mini"]
requests_per_minute = 30
"""


def _limits() -> LimitsConfig:
    return parse_config(TOML, source="t.toml", env={}).limits


def _rates(specs: LimitSpecs) -> dict[tuple[LimitName, Scope], int]:
    return {(r.name, r.scope): r.limit for r in specs.rates}


def test_defaults_apply_to_every_user() -> None:
    specs = build_specs(_limits(), "bob", "llama3")
    assert _rates(specs) == {
        (LimitName.REQUESTS_PER_MINUTE, Scope.USER): 60,
        (LimitName.TOKENS_PER_MINUTE, Scope.USER): 100000,
    }
    assert specs.tokens_per_day == 2000000
    assert specs.concurrent_requests == 8


def test_user_override_replaces_defaults_key_by_key() -> None:
    specs = build_specs(_limits(), "alice", "llama3")
    assert _rates(specs)[(LimitName.TOKENS_PER_MINUTE, Scope.USER)] == 200000
    assert _rates(specs)[(LimitName.REQUESTS_PER_MINUTE, Scope.USER)] == 60  # not overridden
    assert specs.tokens_per_day == 2000000


def test_model_limits_are_per_user_and_model() -> None:
    specs = build_specs(_limits(), "alice", "gpt-4o-mini")
    model_rates = [r for r in specs.rates if r.scope is Scope.MODEL]
    assert [(r.name, r.limit, r.model, r.key) for r in model_rates] == [
        (LimitName.REQUESTS_PER_MINUTE, 30, "gpt-4o-mini", "rpm@gpt-4o-mini")
    ]
    assert {r.key for r in specs.rates if r.scope is Scope.USER} == {"rpm", "tpm"}


def test_unset_limits_are_not_enforced() -> None:
    specs = build_specs(LimitsConfig(), "bob", "m")
    assert specs.empty
    only_day = build_specs(LimitsConfig(users={"bob": LimitValues(tokens_per_day=5)}), "bob", "m")
    assert only_day.rates == () and only_day.tokens_per_day == 5
    assert only_day.concurrent_requests is None


def test_divisor_divides_every_limit_never_below_one() -> None:
    specs = build_specs(_limits(), "alice", "gpt-4o-mini", divisor=4)
    assert _rates(specs) == {
        (LimitName.REQUESTS_PER_MINUTE, Scope.USER): 15,
        (LimitName.TOKENS_PER_MINUTE, Scope.USER): 50000,
        (LimitName.REQUESTS_PER_MINUTE, Scope.MODEL): 7,
    }
    assert specs.tokens_per_day == 500000 and specs.concurrent_requests == 2
    tiny = build_specs(
        LimitsConfig(requests_per_minute=3, concurrent_requests=1), "b", "m", divisor=8
    )
    assert _rates(tiny)[(LimitName.REQUESTS_PER_MINUTE, Scope.USER)] == 1
    assert tiny.concurrent_requests == 1
    with pytest.raises(ValueError):
        build_specs(_limits(), "a", "m", divisor=0)


def test_divide_specs_matches_build_with_divisor() -> None:
    for n in (1, 2, 3, 7):
        assert divide_specs(build_specs(_limits(), "alice", "gpt-4o-mini"), n) == build_specs(
            _limits(), "alice", "gpt-4o-mini", divisor=n
        )
    with pytest.raises(ValueError):
        divide_specs(build_specs(_limits(), "a", "m"), 0)


def test_burst_is_ten_seconds_worth_and_holds_one_unit() -> None:
    rpm = RateSpec(name=LimitName.REQUESTS_PER_MINUTE, scope=Scope.USER, model=None, limit=60)
    assert rpm.burst_us == 10 * 1_000_000 and rpm.burst == 10 and rpm.unit is Unit.REQUESTS
    tpm = RateSpec(name=LimitName.TOKENS_PER_MINUTE, scope=Scope.USER, model=None, limit=100000)
    assert tpm.burst == 16666
    # Below 6 per minute a sixth would be < 1: the burst still holds one unit.
    for limit in range(1, 7):
        spec = RateSpec(
            name=LimitName.REQUESTS_PER_MINUTE, scope=Scope.USER, model=None, limit=limit
        )
        assert spec.burst == 1
        assert spec.increment(1) <= spec.burst_us
    assert default_burst_us(7, MINUTE_US) == 10_000_000


def test_explicit_burst() -> None:
    specs = build_specs(LimitsConfig(requests_per_minute=60), "u", "m", burst_us=30_000_000)
    assert specs.rates[0].burst == 30
    small = build_specs(LimitsConfig(requests_per_minute=2), "u", "m", burst_us=1)
    assert small.rates[0].burst == 1  # raised to one unit's increment


def test_huge_limits_are_clamped_to_keep_values_under_2_53() -> None:
    specs = build_specs(LimitsConfig(tokens_per_minute=10**12), "u", "m")
    assert specs.rates[0].limit == MAX_RATE_LIMIT
    assert specs.rates[0].limit * specs.rates[0].period_us < 2**53


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": MAX_RATE_LIMIT + 1},
        {"period_us": 0},
        {"period_us": MINUTE_US + 1},
        {"burst_us": MINUTE_US + 1},
        {"limit": 1, "burst_us": 5},
        {"scope": Scope.MODEL},
        {"model": "m"},
        {"name": LimitName.TOKENS_PER_DAY},
    ],
)
def test_rate_spec_validation(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "name": LimitName.REQUESTS_PER_MINUTE,
        "scope": Scope.USER,
        "model": None,
        "limit": 10,
    }
    with pytest.raises(ValueError):
        RateSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_limit_specs_validation() -> None:
    rpm = RateSpec(name=LimitName.REQUESTS_PER_MINUTE, scope=Scope.USER, model=None, limit=1)
    with pytest.raises(ValueError):
        LimitSpecs(rates=(rpm, rpm))
    with pytest.raises(ValueError):
        LimitSpecs(tokens_per_day=0)
    with pytest.raises(ValueError):
        LimitSpecs(concurrent_requests=0)
    with pytest.raises(ValueError):
        LimitSpecs(lease_ttl_us=0)


def test_lease_ttl_outlives_the_longest_timeout() -> None:
    assert lease_ttl_for([300.0, 1800.0]) == 1860 * 1_000_000
    assert lease_ttl_for([], margin_s=0) == 1800 * 1_000_000
    assert lease_ttl_for([1e12]) == 2**40


def test_costs_are_clamped() -> None:
    assert Costs(tokens=-5, requests=0).clamped() == Costs(tokens=0, requests=0)
    assert Costs(tokens=10**18).clamped().tokens == 150_000_000


def test_requests_only_keeps_the_request_limits_of_a_token_count() -> None:
    specs = build_specs(_limits(), "alice", "gpt-4o-mini")
    counted = specs.requests_only()
    assert counted.rates == tuple(r for r in specs.rates if r.unit is Unit.REQUESTS)
    assert counted.rates and all(r.unit is Unit.REQUESTS for r in counted.rates)
    assert counted.tokens_per_day is None
    assert counted.concurrent_requests == specs.concurrent_requests
    assert counted.lease_ttl_us == specs.lease_ttl_us
    # Nothing to drop: the same specs; only token limits: none at all.
    assert counted.requests_only() is counted
    tokens = build_specs(LimitsConfig(tokens_per_minute=600, tokens_per_day=10), "u", "m")
    assert tokens.requests_only().empty
