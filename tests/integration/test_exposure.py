"""Exposure (issue 17, item 13) over loopback: an unauthenticated request
head gets its 401 before the body is read (h11 server and ASGI app), and the
h11 server answers 503 past ``[server] max_connections``."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import orjson
import pytest
from sansio_gateway.adapters.asgi import create_app
from sansio_gateway.adapters.ledger import MemoryLedger

from sansio_gateway.auth import hash_key
from tests.emulators.ollama import OllamaEmulator
from tests.helpers import RunningGateway, make_config, running_gateway, wait_for

from .test_server_http import _count_complete, status_of

SIXTEEN_MB = 16 * 1024 * 1024


def _toml(url: str, backend_extra: str = "") -> str:
    return (
        "[server]\nread_timeout = 5\nmax_connections = 2\n"
        f'[[backends]]\nname = "local"\nkind = "ollama"\nurl = "{url}"\n{backend_extra}'
        f'[[auth.keys]]\nid = "k"\nuser = "u"\nsha256 = "{hash_key("sk-exposure")}"\n'
    )


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def served(emulator: OllamaEmulator, request: pytest.FixtureRequest) -> Iterator[RunningGateway]:
    with running_gateway(make_config(_toml(emulator.url)), runtime=str(request.param)) as gw:
        yield gw


def _connect(gw: RunningGateway) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=20)


def _read_response(s: socket.socket) -> bytes:
    got = b""
    while _count_complete(got) < 1:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _health(s: socket.socket) -> int:
    s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    return status_of(_read_response(s))


def test_unauthenticated_16mb_body_gets_401_unread(served: RunningGateway) -> None:
    with _connect(served) as s:
        # Only the head is sent: the answer cannot have waited for the body.
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(SIXTEEN_MB).encode() + b"\r\n\r\n" + b"{" * 1000
        )
        response = _read_response(s)
    assert status_of(response) == 401
    assert b"connection: close" in response.lower()
    error = orjson.loads(response.partition(b"\r\n\r\n")[2])["error"]
    assert error["type"] == "invalid_request_error" and "API key" in error["message"]


def test_expect_100_continue_is_not_granted_without_a_key(served: RunningGateway) -> None:
    with _connect(served) as s:
        s.sendall(
            b"POST /api/chat HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"content-length: " + str(SIXTEEN_MB).encode() + b"\r\n\r\n"
        )
        response = _read_response(s)
    assert response.startswith(b"HTTP/1.1 401")  # no "100 Continue" first
    assert b'{"error":' in response  # the Ollama surface's form


def test_past_max_connections_a_new_connection_gets_503(served: RunningGateway) -> None:
    # The fixture is shared with the tests above: wait until the server has
    # finished with their connections (a refused body is lingered on), so the
    # two held here are the only ones it counts.
    wait_for(lambda: served.app.server.connections == 0)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(_connect(served)) for _ in range(2)]
        for s in held:
            assert _health(s) == 200  # accepted and counted
        with _connect(served) as extra:
            extra.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            response = _read_response(extra)
        assert status_of(response) == 503
        assert b"retry-after: 1" in response.lower()
        body = orjson.loads(response.partition(b"\r\n\r\n")[2])
        assert body["error"]["code"] == "too_many_connections"
        held[0].close()

        def serves_again() -> bool:
            with _connect(served) as s:
                return _health(s) == 200

        wait_for(serves_again)


def test_asgi_refuses_an_unauthenticated_head_without_reading_the_body() -> None:
    app = create_app(
        make_config(_toml("http://127.0.0.1:9", "discover = false\n")), ledger=MemoryLedger()
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "headers": [(b"content-length", str(SIXTEEN_MB).encode())],
        "query_string": b"",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
    }
    reads = 0
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        more = reads * 65536 < SIXTEEN_MB
        return {"type": "http.request", "body": b"x" * 65536, "more_body": more}

    async def send(message: Any) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 401
    assert reads == 0
