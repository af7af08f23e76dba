"""Bad clients over raw sockets: slowloris, oversize, malformed bodies and
framing, smuggling and injection attempts, pipelining, HTTP/1.0, 100-continue.

Complements ``test_server_http.py`` (which has the basic 413/431/408, bad
JSON on /v1, one pipelined batch of GETs and the plain 100-continue) without
repeating it.  Every test asserts the status *and* that a fresh connection
is then served (``still_serving``).  Runs on asyncio and trio.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from sansio_gateway.adapters.fast_server import FastGatewayServer

from tests.emulators.ollama import OllamaEmulator, ScriptedReply
from tests.helpers import RunningGateway, make_config, running_gateway, wait_for

MODEL = "llama3.2:1b"
CHAT = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
STREAM = orjson.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
)
WHOLE = orjson.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}
)
READ_TIMEOUT = 1.0
MAX_HEADER = 8192
MAX_BODY = 1024 * 1024
SLACK = 1.5


def _config(url: str, extra_backend: str = "") -> str:
    return (
        f"[server]\nread_timeout = {READ_TIMEOUT}\nwrite_timeout = {READ_TIMEOUT}\n"
        f"max_header_bytes = {MAX_HEADER}\n"
        f"max_body_bytes = {MAX_BODY}\n"
        f'[[backends]]\nname = "local"\nurl = "{url}"\n{extra_backend}\n'
    )


@pytest.fixture(scope="module", params=["fast", "fast-h11", "trio"])
def gw(emulator: OllamaEmulator, request: pytest.FixtureRequest) -> Iterator[RunningGateway]:
    """Every bad client against the fast server reading requests with
    httptools and with h11 (adapters/fast_http.py), and the anyio server."""
    flavour = str(request.param)
    with running_gateway(
        make_config(_config(emulator.url)),
        runtime="trio" if flavour == "trio" else "asyncio",
        parser="h11" if flavour == "fast-h11" else None,
    ) as gateway:
        if flavour.startswith("fast"):
            server = gateway.app.server
            assert isinstance(server, FastGatewayServer)
            assert server.use_httptools is (flavour == "fast")
        yield gateway


@pytest.fixture
def scripted(emulator: OllamaEmulator) -> Iterator[OllamaEmulator]:
    """The module's emulator, its script restored afterwards."""
    yield emulator
    emulator.set_reply(MODEL, ScriptedReply(capabilities=["completion", "tools"]))


# ---- a tiny HTTP/1.x client over a raw socket ---------------------------------------------


@dataclass
class Reply:
    status: int
    head: bytes  # the raw status line and header block
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


class Wire:
    """One client connection; reads replies however they are framed."""

    def __init__(self, gateway: RunningGateway, *, timeout: float = 10.0) -> None:
        host, port = gateway.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            if not self._fill():
                raise EOFError(f"closed before {sep!r}; got {self.buf[:200]!r}")
        out, _, self.buf = self.buf.partition(sep)
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError("closed mid-body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self) -> bytes:
        while self._fill():
            pass
        out, self.buf = self.buf, b""
        return out

    def closed(self, within: float = 5.0) -> bool:
        """True if the server closes the connection (after what it sent)
        within ``within`` seconds."""
        self.sock.settimeout(within)
        try:
            self.rest()
        except (ConnectionResetError, TimeoutError):
            return False
        return True

    def reply(self, *, head_only: bool = False) -> Reply:
        head = self._until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        found = dict(headers)
        if head_only or status < 200 or status in (204, 304):
            body = b""
        elif found.get(b"transfer-encoding", b"").lower() == b"chunked":
            parts = []
            while size := int(self._until(b"\r\n").split(b";")[0], 16):
                parts.append(self._exactly(size))
                self._exactly(2)
            self._until(b"\r\n")
            body = b"".join(parts)
        elif b"content-length" in found:
            body = self._exactly(int(found[b"content-length"]))
        else:  # delimited by the connection closing
            body = self.rest()
        return Reply(status=status, head=head, headers=headers, body=body)


def request(
    method: str, path: str, body: bytes = b"", *, headers: bytes = b"", version: bytes = b"1.1"
) -> bytes:
    head = f"{method} {path} HTTP/".encode() + version + b"\r\nhost: x\r\n" + headers
    if body or method == "POST":
        head += b"content-length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def exchange(gateway: RunningGateway, data: bytes) -> Reply:
    with Wire(gateway) as wire:
        wire.send(data)
        return wire.reply()


def still_serving(gateway: RunningGateway) -> None:
    """A fresh connection gets a whole answer from the backend."""
    response = httpx.post(gateway.url + "/v1/chat/completions", content=CHAT, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def sse_payloads(body: bytes) -> list[Any]:
    out: list[Any] = []
    for block in body.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: ") and b"\n" not in block, block
            data = block.removeprefix(b"data: ")
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def openai_error(reply: Reply) -> dict[str, Any]:
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def ollama_error(reply: Reply) -> str:
    body = reply.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return str(body["error"])


def trickle(wire: Wire, data: bytes, *, every: float = 0.05) -> float:
    """Send ``data`` a byte at a time, ``every`` seconds apart, until the
    server answers or hangs up; returns the seconds that took."""
    started = time.monotonic()
    for i in range(len(data)):
        try:
            wire.sock.send(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        readable, _, _ = select.select([wire.sock], [], [], every)
        if readable:
            break
    return time.monotonic() - started


# ---- slowloris -----------------------------------------------------------------------------


def test_slowloris_on_the_head_gets_408(gw: RunningGateway) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 400
    with Wire(gw) as wire:
        elapsed = trickle(wire, head)
        assert READ_TIMEOUT <= elapsed <= READ_TIMEOUT + SLACK
        reply = wire.reply()
        assert reply.status == 408
        assert openai_error(reply)["type"] == "invalid_request_error"
        assert wire.closed()
    still_serving(gw)


def _slow_body(gw: RunningGateway, path: str) -> Reply:
    with Wire(gw) as wire:
        wire.send(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 400\r\n\r\n".encode())
        elapsed = trickle(wire, b'{"model": "' + b"a" * 390)
        assert READ_TIMEOUT <= elapsed <= READ_TIMEOUT + SLACK
        reply = wire.reply()
        assert wire.closed()
    return reply


def test_slowloris_on_the_body_gets_408(gw: RunningGateway) -> None:
    reply = _slow_body(gw, "/v1/chat/completions")
    assert reply.status == 408
    assert "Timed out" in openai_error(reply)["message"]
    still_serving(gw)


def test_slowloris_on_an_ollama_body_gets_408_in_the_ollama_form(gw: RunningGateway) -> None:
    reply = _slow_body(gw, "/api/chat")
    assert reply.status == 408
    assert "Timed out" in ollama_error(reply)


def test_many_slow_clients_do_not_starve_the_others(gw: RunningGateway) -> None:
    wires = [Wire(gw) for _ in range(30)]
    try:
        for wire in wires:
            wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-le")
        started = time.monotonic()
        still_serving(gw)
        assert time.monotonic() - started < READ_TIMEOUT / 2
        for wire in wires:
            assert wire.reply().status == 408
    finally:
        for wire in wires:
            wire.sock.close()
    still_serving(gw)


def test_a_client_that_never_reads_is_eventually_dropped(emulator: OllamaEmulator) -> None:
    total = 1.0
    config = make_config(_config(emulator.url, f"total_timeout = {total}"))
    emulator.set_reply(MODEL, ScriptedReply(chunks=["x" * 10_000] * 3000))  # 30 MB
    try:
        with running_gateway(config) as gateway, Wire(gateway) as wire:
            wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            wire.send(request("POST", "/v1/chat/completions", STREAM))
            wait_for(lambda: len(gateway.ledger.records) == 1)  # the upstream was cut
            # ...and the gateway should stop waiting on a client that reads nothing.
            wait_for(lambda: gateway.app.server.active == 0, timeout=READ_TIMEOUT + SLACK)
    finally:
        emulator.set_reply(MODEL, ScriptedReply(capabilities=["completion", "tools"]))


# ---- sizes -----------------------------------------------------------------------------------


def test_many_headers_over_the_limit_in_one_read_get_431(gw: RunningGateway) -> None:
    # The whole head arrives at once (h11 checks only incomplete heads).
    extra = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 50) for i in range(200))
    reply = exchange(gw, request("POST", "/api/chat", CHAT, headers=extra))
    assert reply.status == 431
    ollama_error(reply)
    still_serving(gw)


def test_request_line_over_the_limit_in_many_reads_gets_431(gw: RunningGateway) -> None:
    with Wire(gw) as wire:
        wire.send(b"GET /v1/models/" + b"a" * 100_000)
        reply = wire.reply()
        assert reply.status == 431
    still_serving(gw)


def test_request_line_over_the_limit_in_one_read_is_refused(gw: RunningGateway) -> None:
    target = "/v1/models/" + "a" * (2 * MAX_HEADER)
    reply = exchange(gw, request("GET", target, headers=b"connection: close\r\n"))
    assert reply.status in (414, 431)
    assert len(reply.body) < MAX_HEADER


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/v1/embeddings"])
def test_oversized_body_gets_413_in_the_surface_form(gw: RunningGateway, path: str) -> None:
    reply = exchange(gw, request("POST", path, b"x" * (MAX_BODY + 1)))
    assert reply.status == 413
    if path.startswith("/api"):
        assert "too large" in ollama_error(reply)
    else:
        assert openai_error(reply)["code"] == "request_too_large"
    still_serving(gw)


@pytest.mark.parametrize(
    "length", [b"99999999999999999999999999", b"-5", b"12abc", b"0x10"], ids=str
)
def test_absurd_content_lengths_get_400_or_413(gw: RunningGateway, length: bytes) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: " + length
    reply = exchange(gw, head + b"\r\n\r\n")
    assert reply.status in (400, 413)
    openai_error(reply)
    still_serving(gw)


def test_client_hanging_up_mid_body_costs_nothing(gw: RunningGateway) -> None:
    before = len(gw.ledger.records)
    with Wire(gw) as wire:
        wire.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 500\r\n\r\n{")
        wire.sock.shutdown(socket.SHUT_WR)
        reply = wire.reply()
        assert reply.status == 400
    still_serving(gw)
    wait_for(lambda: len(gw.ledger.records) == before + 1)  # only still_serving's request


# ---- bodies ----------------------------------------------------------------------------------

INVALID_UTF8 = {
    "0xff-in-string": b'{"model":"llama3.2:1b","messages":[{"role":"user","content":"\xff"}]}',
    "0xff-outside": b'{"model":"llama3.2:1b",\xff"messages":[]}',
    "overlong": b'{"model":"llama3.2:1b","messages":[{"role":"user","content":"\xc0\xaf"}]}',
    "truncated": b'{"model":"llama3.2:1b","messages":[{"role":"user","content":"\xe2\x82"}]}',
    "lone-surrogate": b'{"model":"llama3.2:1b","messages":[{"role":"user","content":"\\ud800"}]}',
    "encoded-surrogate": b'{"model":"llama3.2:1b","messages":[{"role":"user","content":"\xed\xa0\x80"}]}',
}
BAD_JSON = {
    "empty": b"",
    "truncated": b'{"model": "llama3.2:1b", "messages": [',
    "trailing": CHAT + b" trailing",
    "bom": b"\xef\xbb\xbf" + CHAT,
    "nan": b'{"model": "llama3.2:1b", "temperature": NaN, "messages": []}',
    "single-quotes": b"{'model': 'llama3.2:1b'}",
    "null": b"null",
    "number": b"42",
}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
@pytest.mark.parametrize(
    "body", [*INVALID_UTF8.values(), *BAD_JSON.values()], ids=[*INVALID_UTF8, *BAD_JSON]
)
def test_malformed_bodies_get_a_clean_400(gw: RunningGateway, path: str, body: bytes) -> None:
    reply = exchange(gw, request("POST", path, body, headers=b"content-type: application/json\r\n"))
    assert reply.status == 400, reply.body
    if path.startswith("/v1"):
        assert openai_error(reply)["type"] == "invalid_request_error"
    else:
        ollama_error(reply)
    still_serving(gw)


DEEP = 100_000


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/show",
    ],
)
@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEEP + b"]" * DEEP,
        b'{"model":"llama3.2:1b","messages":' + b"[" * DEEP + b"]" * DEEP + b"}",
        b'{"model":"llama3.2:1b","options":' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}",
    ],
    ids=["arrays", "in-messages", "objects-in-options"],
)
def test_deeply_nested_json_is_a_clean_400(gw: RunningGateway, path: str, body: bytes) -> None:
    reply = exchange(gw, request("POST", path, body))
    assert reply.status == 400, reply.body
    message = openai_error(reply)["message"] if path.startswith("/v1") else ollama_error(reply)
    assert "depth" in message or "nest" in message
    still_serving(gw)


def _tools_nested(depth: int) -> bytes:
    parameters = b'{"a":' * depth + b"1" + b"}" * depth
    return (
        b'{"model":"llama3.2:1b","messages":[{"role":"user","content":"hi"}],'
        b'"tools":[{"type":"function","function":{"name":"f","parameters":' + parameters + b"}}]}"
    )


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_nesting_the_parser_accepts_but_the_encoder_refuses_is_a_400(
    gw: RunningGateway, path: str
) -> None:
    reply = exchange(gw, request("POST", path, _tools_nested(300)))
    assert reply.status == 400, reply.body


# ---- content types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/json",
        b"text/plain",
        b"application/json; charset=utf-8",
        None,
        b"application/x-www-form-urlencoded",
    ],
    ids=["json", "text-plain", "json-charset", "absent", "form-type-json-body"],
)
def test_a_json_body_is_read_as_json_whatever_the_content_type(
    gw: RunningGateway, content_type: bytes | None
) -> None:
    # Today's behaviour, kept consistent: the gateway (like Ollama) ignores
    # Content-Type and parses the body as JSON.
    headers = b"" if content_type is None else b"content-type: " + content_type + b"\r\n"
    reply = exchange(gw, request("POST", "/v1/chat/completions", CHAT, headers=headers))
    assert reply.status == 200
    assert reply.json()["object"] == "chat.completion"
    still_serving(gw)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"application/x-www-form-urlencoded", b"model=llama3.2%3A1b&messages=hi"),
        (
            b"multipart/form-data; boundary=X",
            b'--X\r\ncontent-disposition: form-data; name="model"\r\n\r\nm\r\n--X--\r\n',
        ),
    ],
    ids=["form", "multipart"],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_form_bodies_get_400(
    gw: RunningGateway, path: str, content_type: bytes, body: bytes
) -> None:
    reply = exchange(
        gw, request("POST", path, body, headers=b"content-type: " + content_type + b"\r\n")
    )
    assert reply.status == 400
    still_serving(gw)


# ---- framing: pipelining, HTTP/1.0, 100-continue, smuggling -------------------------------


def test_pipelined_requests_through_the_backend_are_answered_in_order(gw: RunningGateway) -> None:
    batch = (
        request("POST", "/v1/chat/completions", CHAT)
        + request("POST", "/api/chat", STREAM)
        + request("POST", "/v1/chat/completions", b"{")  # a 400 does not end the connection
        + request("POST", "/v1/chat/completions", STREAM)
        + request("GET", "/health", headers=b"connection: close\r\n")
    )
    with Wire(gw) as wire:
        wire.send(batch)
        whole, ndjson, bad, sse, health = (wire.reply() for _ in range(5))
        assert wire.closed()
    assert whole.status == 200 and whole.json()["object"] == "chat.completion"
    lines = [orjson.loads(line) for line in ndjson.body.splitlines()]
    assert ndjson.status == 200 and lines[-1]["done"] is True
    assert bad.status == 400
    assert sse.status == 200 and sse_payloads(sse.body)[-1] == "[DONE]"
    assert health.status == 200 and health.json() == {"status": "ok"}
    still_serving(gw)


def test_a_connection_handed_to_h11_midway_goes_on_being_served(gw: RunningGateway) -> None:
    """On the fast server with httptools, the plain requests are httptools'
    and the chunked one hands the connection to h11 (adapters/fast_http.py):
    the answers are the same, in order, and the connection is kept."""
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (CHAT[:10], CHAT[10:])) + b"0\r\n\r\n"
    with Wire(gw) as wire:
        wire.send(
            request("GET", "/health")
            + request("HEAD", "/health")
            + b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            + b"transfer-encoding: chunked\r\n\r\n"
            + chunked
            + request("POST", "/v1/chat/completions", CHAT)
        )
        first = wire.reply()
        head = wire.reply(head_only=True)
        switched, after = wire.reply(), wire.reply()
        wire.send(request("GET", "/health", headers=b"connection: close\r\n"))
        last = wire.reply()
        assert wire.closed()
    assert first.status == 200 and first.json() == {"status": "ok"}
    assert head.status == 200 and head.header(b"content-length") == first.header(b"content-length")
    assert switched.status == 200 and switched.json()["object"] == "chat.completion"
    assert after.status == 200 and after.json()["object"] == "chat.completion"
    assert last.status == 200 and last.header(b"connection") == b"close"


def test_pipelined_input_is_bounded_while_a_request_waits(
    gw: RunningGateway, scripted: OllamaEmulator
) -> None:
    scripted.update_reply(MODEL, delay_first_byte=5)
    accepted = 0
    with Wire(gw, timeout=1.0) as wire:
        wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        wire.send(request("POST", "/v1/chat/completions", CHAT))
        piece = b"x" * (1 << 20)
        try:
            while accepted < (128 << 20):
                wire.sock.sendall(piece)
                accepted += len(piece)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
    # Kernel buffers hold a few tens of MiB at most (tcp_rmem max 32 MiB here).
    assert accepted < (96 << 20)


def test_http_1_0_stream_is_close_delimited(gw: RunningGateway) -> None:
    with Wire(gw) as wire:
        wire.send(request("POST", "/v1/chat/completions", STREAM, version=b"1.0"))
        reply = wire.reply()
    assert reply.status == 200
    assert reply.header(b"transfer-encoding") is None  # HTTP/1.0 knows no chunks
    assert reply.header(b"connection") == b"close"
    assert sse_payloads(reply.body)[-1] == "[DONE]"
    still_serving(gw)


def test_http_1_0_keep_alive_is_answered_then_closed(gw: RunningGateway) -> None:
    # h11 does not do HTTP/1.0 keep-alive: the answer says so and the
    # connection closes, consistently.
    with Wire(gw) as wire:
        wire.send(
            request(
                "POST", "/api/chat", WHOLE, headers=b"connection: keep-alive\r\n", version=b"1.0"
            )
        )
        reply = wire.reply()
        assert reply.status == 200 and reply.json()["done"] is True
        assert reply.header(b"connection") == b"close"
        assert wire.closed()
    still_serving(gw)


def test_expect_100_continue_with_an_oversized_body_gets_413_not_100(gw: RunningGateway) -> None:
    with Wire(gw) as wire:
        wire.send(
            b"POST /api/chat HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
            b"content-length: %d\r\n\r\n" % (MAX_BODY * 10)
        )
        reply = wire.reply()
        assert reply.status == 413  # the body was never invited
        assert "too large" in ollama_error(reply)
    still_serving(gw)


def test_expect_100_continue_with_the_body_sent_at_once(gw: RunningGateway) -> None:
    # curl gives up waiting for the 100 after a second and sends the body.
    with Wire(gw) as wire:
        wire.send(request("POST", "/api/chat", STREAM, headers=b"expect: 100-continue\r\n"))
        reply = wire.reply()
        while reply.status == 100:
            reply = wire.reply()
        assert reply.status == 200
        assert orjson.loads(reply.body.splitlines()[-1])["done"] is True
    still_serving(gw)


def test_content_length_and_transfer_encoding_with_a_bad_chunked_body_is_400(
    gw: RunningGateway,
) -> None:
    smuggle = b"5\r\nGET /"  # chunked framing broken after a few bytes
    data = (
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n"
            b"transfer-encoding: chunked\r\n\r\n" % len(smuggle)
        )
        + smuggle
        + b"admin/usage HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    with Wire(gw) as wire:
        wire.send(data)
        assert wire.reply().status == 400
        assert wire.closed()
    still_serving(gw)


def test_content_length_and_transfer_encoding_together_are_refused(gw: RunningGateway) -> None:
    # The classic CL.TE smuggling shape: a proxy trusting Content-Length would
    # forward 4 bytes; we read the chunked body and what follows as a request.
    chunked = b"%x\r\n" % len(CHAT) + CHAT + b"\r\n0\r\n\r\n"
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    ) + chunked
    with Wire(gw) as wire:
        wire.send(data)
        reply = wire.reply()
        closed = wire.closed(within=0.5)
    assert reply.status == 400
    assert closed


# ---- injection --------------------------------------------------------------------------------


def _no_injected_header(reply: Reply) -> None:
    for line in reply.head.split(b"\r\n")[1:]:
        assert not line.lower().startswith(b"x-injected"), reply.head
    assert b"\r\nx-injected" not in reply.head.lower()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/api/generate"])
def test_model_name_with_crlf_adds_no_header(gw: RunningGateway, path: str) -> None:
    model = "m\r\nX-Injected: 1"
    if path == "/api/generate":
        body = orjson.dumps({"model": model, "prompt": "hi"})
    else:
        body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    reply = exchange(gw, request("POST", path, body))
    assert reply.status == 404
    _no_injected_header(reply)
    assert "X-Injected" in str(reply.json())  # in the JSON body, escaped, where it belongs
    still_serving(gw)


CRLF_MESSAGE = "boom\r\nX-Injected: 1\r\n\r\ndata: [DONE]\n\n"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_backend_error_message_with_crlf_adds_no_header(
    gw: RunningGateway, scripted: OllamaEmulator, path: str
) -> None:
    scripted.update_reply(MODEL, error_status=500, error_message=CRLF_MESSAGE)
    reply = exchange(gw, request("POST", path, CHAT))
    assert reply.status == 500
    _no_injected_header(reply)
    message = openai_error(reply)["message"] if path.startswith("/v1") else ollama_error(reply)
    assert message == CRLF_MESSAGE
    still_serving_after_reset(gw, scripted)


def test_backend_error_message_with_crlf_mid_stream_keeps_sse_framing(
    gw: RunningGateway, scripted: OllamaEmulator
) -> None:
    scripted.set_reply(
        MODEL, ScriptedReply(chunks=["a ", "b "], error_after_chunks=1, error_message=CRLF_MESSAGE)
    )
    reply = exchange(gw, request("POST", "/v1/chat/completions", STREAM))
    assert reply.status == 200
    _no_injected_header(reply)
    events = sse_payloads(reply.body)  # every block is one well-formed data line
    assert events[-1]["error"]["message"] == CRLF_MESSAGE
    assert "[DONE]" not in events
    still_serving_after_reset(gw, scripted)


def test_unsafe_request_id_is_not_echoed(gw: RunningGateway) -> None:
    reply = exchange(
        gw, request("GET", "/health", headers=b'x-request-id: a";b,c\\d\r\nconnection: close\r\n')
    )
    assert reply.status == 200
    rid = reply.header(b"x-request-id")
    assert rid is not None and len(rid) == 32 and rid.isalnum()
    still_serving(gw)


def still_serving_after_reset(gw: RunningGateway, emulator: OllamaEmulator) -> None:
    emulator.set_reply(MODEL, ScriptedReply(capabilities=["completion", "tools"]))
    still_serving(gw)


# ---- request targets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["/v1/models/café".encode(), b"/api/\xff\xfe", "/v1/chat/completions?q=日本".encode()],
    ids=["utf8", "latin1", "utf8-query"],
)
def test_non_ascii_request_target_gets_400(gw: RunningGateway, target: bytes) -> None:
    reply = exchange(gw, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    assert reply.status == 400
    assert reply.json()["error"]
    still_serving(gw)


def test_percent_encoded_non_ascii_target_is_decoded(gw: RunningGateway) -> None:
    reply = exchange(gw, request("GET", "/v1/models/caf%C3%A9", headers=b"connection: close\r\n"))
    assert reply.status == 404
    error = openai_error(reply)
    assert error["code"] == "model_not_found" and "café" in error["message"]
    still_serving(gw)
