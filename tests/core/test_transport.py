"""What a transport answers on its own: refusals of a head, and their bytes."""

from __future__ import annotations

import orjson
import pytest

from sansio_gateway.errors import GatewayError, Unauthorized
from sansio_gateway.http import Headers
from sansio_gateway.transport import (
    body_too_large,
    content_length,
    malformed_request,
    no_api_keys,
    read_timed_out,
    refuse_head,
    render_refusal,
    shutting_down,
    too_many_connections,
)

CAP = 1000


class _Judge:
    """Gateway.refuse_head as a test double: refuses, and counts its calls."""

    def __init__(self, refusal: GatewayError | None) -> None:
        self.refusal = refusal
        self.calls: list[tuple[str, str, Headers]] = []

    def __call__(self, method: str, path: str, headers: Headers) -> GatewayError | None:
        self.calls.append((method, path, headers))
        return self.refusal


def _refuse(headers: Headers, judge: _Judge, *, body_follows: bool = True) -> GatewayError | None:
    return refuse_head(
        judge, "POST", "/v1/chat/completions", headers,
        body_follows=body_follows, max_body_bytes=CAP,
    )  # fmt: skip


def test_a_head_that_passes_is_not_refused() -> None:
    judge = _Judge(None)
    assert _refuse(((b"content-length", b"1000"),), judge) is None
    assert judge.calls == [("POST", "/v1/chat/completions", ((b"content-length", b"1000"),))]


def test_ambiguous_framing_is_refused_before_anything_else() -> None:
    judge = _Judge(Unauthorized("no key"))
    headers = ((b"content-length", b"5"), (b"transfer-encoding", b"chunked"))
    refusal = _refuse(headers, judge)
    assert refusal is not None and refusal.status_code == 400
    assert "Transfer-Encoding" in refusal.message
    assert judge.calls == []


def test_the_core_judges_the_head_only_when_a_body_follows() -> None:
    judge = _Judge(Unauthorized("no key"))
    refusal = _refuse(((b"content-length", b"5"),), judge)
    assert isinstance(refusal, Unauthorized)
    assert _refuse((), judge, body_follows=False) is None
    assert len(judge.calls) == 1


def test_an_unauthorised_head_is_refused_before_its_size() -> None:
    refusal = _refuse(((b"content-length", b"1001"),), _Judge(Unauthorized("no key")))
    assert isinstance(refusal, Unauthorized)


def test_a_declared_body_past_the_cap_is_refused_unread() -> None:
    refusal = _refuse(((b"content-length", b"1001"),), _Judge(None))
    assert refusal is not None and refusal.status_code == 413
    assert str(CAP) in refusal.message


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), None),
        (((b"content-length", b"12"),), 12),
        (((b"content-length", b"twelve"),), None),
        (((b"host", b"x"), (b"content-length", b"0")), 0),
    ],
)
def test_content_length(headers: Headers, expected: int | None) -> None:
    assert content_length(headers) == expected


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (malformed_request(400, "bad"), 400),
        (malformed_request(431, "h11 detail"), 431),
        (body_too_large(CAP), 413),
        (read_timed_out(), 408),
        (too_many_connections(), 503),
        (shutting_down(), 503),
        (no_api_keys("no keys and not on loopback"), 503),
    ],
)
def test_each_situation_has_its_status(error: GatewayError, status: int) -> None:
    assert error.status_code == status


def test_a_parser_rejection_says_why_unless_the_head_was_too_large() -> None:
    assert malformed_request(400, "illegal target").message == "Bad request: illegal target"
    assert malformed_request(431, "h11 detail").message == "Request header fields too large"


def test_a_refusal_is_framed_to_close_and_rendered_in_the_paths_dialect() -> None:
    status, headers, body = render_refusal(read_timed_out(), "/api/chat")
    assert status == 408
    assert (b"connection", b"close") in headers
    assert (b"content-length", str(len(body)).encode()) in headers
    assert orjson.loads(body) == {"error": "Timed out reading the request"}
    _, _, openai = render_refusal(read_timed_out(), "/v1/chat/completions")
    assert orjson.loads(openai)["error"]["message"] == "Timed out reading the request"


def test_too_many_connections_asks_to_retry_after_a_second() -> None:
    status, headers, body = render_refusal(too_many_connections(), "")
    assert status == 503 and (b"retry-after", b"1") in headers
    assert orjson.loads(body)["error"]["code"] == "too_many_connections"
