"""The fast transport's own guarantees: flow control end to end, coalesced
writes, and its selection (docs/architecture.md, "The fast transport").

The behaviour it shares with the anyio transport is tested by the common
suites, which run on both (tests/integration/conftest.py, test_faults.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson
import pytest
from sansio_gateway.adapters.fast_server import FastGatewayServer
from sansio_gateway.adapters.fast_upstream import HIGH_WATER, FastUpstreamClient
from sansio_gateway.adapters.server import GatewayServer

from tests.emulators.ollama import run_ollama_emulator
from tests.helpers import make_config, running_gateway, wait_for

LINE = (
    orjson.dumps(
        {
            "model": "llama3.2:1b",
            "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "x" * 200},
            "done": False,
        }
    )
    + b"\n"
)
CHUNK = b"%x\r\n%s\r\n" % (len(LINE), LINE)


@dataclass
class FloodingBackend:
    """An Ollama that streams NDJSON lines, one HTTP chunk each, as fast as
    its socket takes them, for ever; it counts what it managed to send."""

    port: int = 0
    sent: int = 0
    blocked: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def serve(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length")
            )
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            conn.settimeout(0.05)
            burst = CHUNK * 64
            while not self.stop.is_set():
                try:
                    self.sent += conn.send(burst)
                except TimeoutError:
                    self.blocked.set()  # the gateway stopped reading us
                except OSError:
                    self.gone.set()
                    return


@contextlib.contextmanager
def flooding_backend() -> Iterator[FloodingBackend]:
    backend = FloodingBackend()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        backend.port = listener.getsockname()[1]
        thread = threading.Thread(target=backend.serve, args=(listener,), daemon=True)
        thread.start()
        try:
            yield backend
        finally:
            backend.stop.set()
            thread.join(timeout=10)


def _config(port: int) -> str:
    return (
        f'[[backends]]\nname = "flood"\nurl = "http://127.0.0.1:{port}"\n'
        f"discover = false\nidle_timeout = 30\ntotal_timeout = 120\n"
        f'[[models]]\nname = "m"\nbackend = "flood"\ntarget = "llama3.2:1b"\n'
    )


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_a_client_that_does_not_read_pauses_the_backend_and_memory_stays_bounded(
    parser: str,
) -> None:
    with (
        contextlib.ExitStack() as stack,
        flooding_backend() as backend,
        running_gateway(make_config(_config(backend.port)), parser=parser) as gw,
    ):
        server = gw.app.server
        upstream = gw.app.upstream
        assert isinstance(server, FastGatewayServer)
        assert isinstance(upstream, FastUpstreamClient)
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        host, port = gw.url.removeprefix("http://").split(":")
        client = socket.socket()
        stack.callback(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.connect((host, int(port)))
        client.sendall(
            b"POST /api/chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        # The client reads nothing: the gateway's write buffer fills, the
        # upstream read stops, the backend's socket is paused, and the
        # backend's own sends block.
        wait_for(
            lambda: upstream.pauses >= 1,
            timeout=30,
            what=lambda: (
                backend.sent,
                upstream.pauses,
                [(c.buffered, c.paused) for c in upstream.busy],
                [
                    (c.write_paused, c.transport and c.transport.get_write_buffer_size())
                    for c in server._open
                ],
            ),
        )
        wait_for(backend.blocked.is_set, timeout=30)
        [conn] = list(upstream.busy)
        # The reader may drain the buffer once more before the client side
        # fills up for good; with nothing read, paused is where it settles.
        wait_for(lambda: conn.paused, timeout=30)
        sent_when_blocked = backend.sent
        assert conn.buffered < HIGH_WATER + 256 * 1024
        [client_side] = [c for c in server._open if c.transport is not None]
        assert client_side.transport is not None
        # One write past the high-water mark at most, never the whole stream.
        assert client_side.transport.get_write_buffer_size() < 4 * 1024 * 1024
        # Bounded by socket buffers and high-water marks, not by the stream:
        # the backend could not push more than a few MiB into the gateway.
        assert sent_when_blocked < 32 * 1024 * 1024
        # The client reads: the stream flows again.
        client.settimeout(30)
        wait_for(lambda: bool(client.recv(65536)) and backend.sent > sent_when_blocked, timeout=30)
        # It hangs up: the upstream is cancelled, one usage record is written.
        client.close()
        wait_for(backend.gone.is_set, timeout=30)
        wait_for(lambda: len(gw.ledger.records) == 1, timeout=10)
        wait_for(lambda: server.active == 0, timeout=10)
        assert gw.ledger.records[0].outcome == "client_disconnected"


def test_the_transport_follows_the_config() -> None:
    with flooding_backend() as backend:
        text = _config(backend.port)
        with running_gateway(make_config(text)) as gw:
            assert isinstance(gw.app.server, FastGatewayServer)
        with running_gateway(make_config(text), transport="anyio") as gw:
            assert isinstance(gw.app.server, GatewayServer)
        with running_gateway(make_config(text), runtime="trio") as gw:
            assert isinstance(gw.app.server, GatewayServer)


def _read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One response off a kept-alive socket: (head, body), the chunked
    framing checked strictly and decoded."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"\r\ntransfer-encoding: chunked" in head.lower(), head
    body = b""
    while True:
        while b"\r\n" not in rest:
            rest += sock.recv(65536)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)  # no extensions, nothing but hex digits
        assert size_line == b"%x" % size
        while len(rest) < size + 2:
            rest += sock.recv(65536)
        assert rest[size : size + 2] == b"\r\n"
        body, rest = body + rest[:size], rest[size + 2 :]
        if size == 0:
            assert rest == b""
            return head, body


@pytest.mark.parametrize(
    ("parser", "uvloop"),
    [("httptools", False), ("h11", False), ("httptools", True)],
    ids=["httptools", "h11", "httptools-uvloop"],
)
def test_streams_relay_the_same_bytes_on_each_parser_and_loop(parser: str, uvloop: bool) -> None:
    """The fast server frames stream chunks itself and its client reads
    backends with httptools or h11, on asyncio's loop or uvloop's: the
    client gets well-formed chunked SSE, the connections are kept."""
    text = '[[models]]\nname = "m"\nbackend = "local"\ntarget = "llama3.2:1b"\n'
    with run_ollama_emulator() as emu:
        config = make_config(
            f'[[backends]]\nname = "local"\nkind = "ollama"\nurl = "{emu.url}"\n' + text
        )
        with running_gateway(config, parser=parser, uvloop=uvloop) as gw:
            upstream = gw.app.upstream
            assert isinstance(upstream, FastUpstreamClient)
            assert upstream.use_httptools is (parser == "httptools")
            host, port = gw.url.removeprefix("http://").split(":")
            body = orjson.dumps(
                {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            )
            request = (
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            with socket.create_connection((host, int(port)), timeout=30) as client:
                answers = []
                for _ in range(3):  # one connection each side, kept alive
                    client.sendall(request)
                    answers.append(_read_response(client))
                # The client's requests were read by the parser asked for:
                # httptools kept the connection, h11 never took it over.
                server = gw.app.server
                assert isinstance(server, FastGatewayServer)
                [conn] = list(server._open)
                assert (conn.reader is not None) is (parser == "httptools")
            for head, sse in answers:
                assert head.startswith(b"HTTP/1.1 200 ")
                events = [e for e in sse.split(b"\n\n") if e]
                assert events[-1] == b"data: [DONE]"
                chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
                content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
                assert content == "Hello! How can I help you today?"
                assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
            wait_for(lambda: len(gw.ledger.records) == 3)
            assert all(r.completion_tokens > 0 for r in gw.ledger.records)
            # The backend's connection went back to the pool each time.
            wait_for(lambda: [len(idle) for idle in upstream._idle.values()] == [1])
            assert not upstream.busy
