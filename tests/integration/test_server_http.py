"""The anyio + h11 server over raw sockets: limits, framing, keep-alive, bad input.

Each bad-input case checks the status and body and then that the server
still serves a fresh request.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.helpers import RunningGateway

CHAT_OK = b'{"model":"llama3.2:1b","messages":[{"role":"user","content":"hi"}]}'


def raw(gateway: RunningGateway, data: bytes, *, responses: int = 1) -> bytes:
    """Send ``data``; read until ``responses`` whole responses or EOF."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        got = b""
        while _count_complete(got) < responses:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def _count_complete(data: bytes) -> int:
    count = 0
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return count
        length = None
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length is None:
            end = rest.find(b"0\r\n\r\n")
            if end < 0:
                return count
            data = rest[end + 5 :]
        elif len(rest) < length:
            return count
        else:
            data = rest[length:]
        count += 1


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> dict:  # type: ignore[type-arg]
    return json.loads(response.partition(b"\r\n\r\n")[2])


def still_serving(gateway: RunningGateway) -> None:
    assert httpx.get(gateway.url + "/health").status_code == 200


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{", None),
        (b'{"model": 5, "messages": []}', "model"),
        (b'{"messages": [{"role":"user","content":"x"}]}', "model"),
        (b'["not", "an", "object"]', None),
        ('{"model":"m","messages":[{"role":"user","content":"\xff"}]}'.encode("latin-1"), None),
    ],
)
def test_bad_bodies_get_400_in_openai_envelope(
    gateway: RunningGateway, body: bytes, param: str | None
) -> None:
    response = raw(gateway, post("/v1/chat/completions", body))
    assert status_of(response) == 400
    error = body_of(response)["error"]
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["param"] == param
    still_serving(gateway)


def test_oversized_body_is_413_without_reading_it(gateway: RunningGateway) -> None:
    big = b"x" * 70000
    response = raw(gateway, post("/v1/chat/completions", big))
    assert status_of(response) == 413
    assert body_of(response)["error"]["code"] == "request_too_large"
    still_serving(gateway)


def test_oversized_chunked_body_is_413(gateway: RunningGateway) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    chunk = b"x" * 40000
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2 + b"0\r\n\r\n"
    response = raw(gateway, head + body)
    assert status_of(response) == 413
    still_serving(gateway)


def test_chunked_request_body_is_accepted(gateway: RunningGateway) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    parts = [CHAT_OK[:10], CHAT_OK[10:]]
    body = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + b"0\r\n\r\n"
    response = raw(gateway, head + body)
    assert status_of(response) == 200
    assert body_of(response)["object"] == "chat.completion"


def test_huge_headers_get_431(gateway: RunningGateway) -> None:
    request = b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n"
    response = raw(gateway, request)
    assert status_of(response) == 431
    still_serving(gateway)


def test_garbage_request_line_gets_400(gateway: RunningGateway) -> None:
    response = raw(gateway, b"\x16\x03\x01 this is not http\r\n\r\n")
    assert status_of(response) == 400
    still_serving(gateway)


def test_keep_alive_serves_several_requests_on_one_connection(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(3):
            r = client.post("/v1/chat/completions", content=CHAT_OK)
            assert r.status_code == 200
        r = client.post("/v1/chat/completions", content=b"{")
        assert r.status_code == 400
        assert client.get("/health").status_code == 200


def test_pipelined_requests_are_answered_in_order(gateway: RunningGateway) -> None:
    one = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    last = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    response = raw(gateway, one + one + last, responses=3)
    assert response.count(b"HTTP/1.1 200") == 3


def test_expect_100_continue(gateway: RunningGateway) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"content-length: " + str(len(CHAT_OK)).encode() + b"\r\n\r\n"
        )
        assert s.recv(1024).startswith(b"HTTP/1.1 100")
        s.sendall(CHAT_OK)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_http_1_0_request(gateway: RunningGateway) -> None:
    response = raw(gateway, b"GET /health HTTP/1.0\r\n\r\n")
    assert status_of(response) == 200


def test_slow_request_times_out_with_408(gateway: RunningGateway) -> None:
    # read_timeout is 1 s in the fixture config: send half a head and wait for the answer.
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        data = s.recv(65536)
    assert status_of(data) == 408
    still_serving(gateway)


def test_error_bodies_on_the_ollama_surface_use_ollama_form(gateway: RunningGateway) -> None:
    response = raw(
        gateway, b"GET /api/not-a-thing HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    assert status_of(response) == 404
    assert isinstance(body_of(response)["error"], str)
