"""What the Exchange asks of the modules that own a decision: the breaker's
reading of a failure, the lease's output cap, the upstream call's action."""

from __future__ import annotations

import orjson
import pytest

from sansio_gateway.accounting.lease import LimitLease
from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.backends.health import answered_alive
from sansio_gateway.config import BackendConfig
from sansio_gateway.flows.base import UpstreamCall
from sansio_gateway.limits import LimitSpecs


@pytest.mark.parametrize(
    ("status", "failed", "alive"),
    [
        (500, False, True),
        (503, False, True),
        (429, False, True),
        (502, False, False),
        (504, False, False),
        (None, True, False),
        (None, False, True),
    ],
)
def test_only_transport_failures_and_proxy_errors_count_against_a_breaker(
    status: int | None, failed: bool, alive: bool
) -> None:
    assert answered_alive(status, failed=failed) is alive


def lease(cap: int | None) -> LimitLease:
    return LimitLease(key="u", specs=LimitSpecs(), request_id="r", estimate=10, output_cap=cap)


def test_a_lease_writes_its_output_cap_for_the_backend_kind() -> None:
    body = orjson.dumps({"model": "m", "messages": []})
    assert orjson.loads(lease(7).capped("openai", body))["max_tokens"] == 7
    assert orjson.loads(lease(7).capped("ollama", body))["options"] == {"num_predict": 7}
    assert lease(None).capped("openai", body) == body


def test_an_upstream_call_becomes_one_send_to_its_backend() -> None:
    backend = BackendConfig(name="b1", kind="openai", url="http://127.0.0.1:9")
    plan = UpstreamCall(method="POST", path="/v1/embeddings", body=b"{}", whole=_Whole())
    send = plan.send(backend, headers=((b"x", b"y"),), body=b"{1}", delay=0.5, reason="retry")
    assert (send.backend, send.method, send.url) == (
        "b1",
        "POST",
        "http://127.0.0.1:9/v1/embeddings",
    )
    assert (send.headers, send.body, send.delay) == (((b"x", b"y"),), b"{1}", 0.5)
    assert send.reason == "retry"


class _Whole:
    """A whole-answer translator that passes the body through."""

    usage: TokenUsage | None = None

    def complete(self, body: bytes) -> bytes:
        return body

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage()
