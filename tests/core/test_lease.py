"""The limit lease and its charge rule, without an Exchange."""

from __future__ import annotations

import orjson

from sansio_gateway.accounting.admission import admission_tokens
from sansio_gateway.accounting.lease import LimitLease, charge, lease_for, token_ceiling
from sansio_gateway.actions import CommitLimits
from sansio_gateway.config import LimitsConfig, LimitValues
from sansio_gateway.limits import Costs, build_specs

SPECS = build_specs(LimitsConfig(requests_per_minute=60, tokens_per_minute=6000), "u", "m")
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})


def lease() -> LimitLease:
    return LimitLease(key="u", specs=SPECS, request_id="r", estimate=100)


def test_the_check_charges_the_estimate_and_one_request() -> None:
    check = lease().check()
    assert (check.key, check.request_id, check.costs) == ("u", "r", Costs(tokens=100, requests=1))


def test_a_lease_commits_once_and_only_once_admitted() -> None:
    assert lease().settle(5) == (lease(), None)  # never admitted: nothing to release
    admitted = lease().admit()
    settled, commit = admitted.settle(-3)
    assert commit == CommitLimits(key="u", specs=SPECS, request_id="r", estimate=100, actual=0)
    assert settled.settle(40) == (settled, None)
    assert admitted.open and not settled.open


def test_the_charge_rule() -> None:
    def rule(**kw: object) -> int:
        args: dict[str, object] = {
            "reported": None,
            "maybe_generated": True,
            "left_stream": False,
            "streamed": lambda: 7,
            "estimate": 100,
        }
        return charge(**{**args, **kw})  # type: ignore[arg-type]

    assert rule(reported=13) == 13  # the backend's own counts win
    assert rule(reported=13, maybe_generated=False) == 13
    assert rule(maybe_generated=False) == 0  # it could not have generated
    assert rule(left_stream=True) == 7  # what was streamed so far
    assert rule() == 100  # anything else may have generated: the reserve


def test_the_estimate_is_fitted_under_the_token_ceiling() -> None:
    assert token_ceiling(SPECS) is not None
    assert token_ceiling(build_specs(LimitsConfig(requests_per_minute=6), "u", "m")) is None
    made = lease_for(
        decoded=orjson.loads(BODY), route="chat.completions", generates=True, specs=SPECS, key="u",
        request_id="r", default_output_cap=4096,
    )  # fmt: skip
    ceiling = token_ceiling(SPECS)
    assert ceiling is not None and made.estimate <= ceiling and made.output_cap is not None
    free = build_specs(LimitsConfig(users={"u": LimitValues(requests_per_minute=6)}), "u", "m")
    unlimited = lease_for(
        decoded=orjson.loads(BODY), route="chat.completions", generates=True, specs=free, key="u",
        request_id="r", default_output_cap=4096,
    )  # fmt: skip
    assert unlimited.output_cap is None  # no token limit: nothing to write upstream
    assert unlimited.estimate == admission_tokens(BODY, default_output_cap=4096, generates=True)
