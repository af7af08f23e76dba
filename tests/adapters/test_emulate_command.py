"""``sansio-gateway emulate`` and what it promises: one HTTP chunk per NDJSON line or SSE event
(counted by a raw HTTP client at the socket), token pauses that hold up no other connection,
seeded failures that look like a real server's, and a clean stop on SIGTERM and Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sansio_gateway.adapters.emulator.ollama import (
    Failure,
    OllamaEmulator,
    default_models,
    run_ollama_emulator,
    token_chunks,
)
from sansio_gateway.adapters.emulator.openai import OpenAIEmulator, run_openai_emulator
from sansio_gateway.adapters.emulator.openai import default_models as openai_models

CHAT = "llama3.2:1b"
USER = [{"role": "user", "content": "hi"}]


# --------------------------------------------------------------------------- a raw HTTP client


def _read_until(sock: socket.socket, buffer: bytearray, marker: bytes) -> bytes:
    while (end := buffer.find(marker)) < 0:
        data = sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed before {marker!r}")
        buffer += data
    taken = bytes(buffer[:end])
    del buffer[: end + len(marker)]
    return taken


def _read_exactly(sock: socket.socket, buffer: bytearray, size: int) -> bytes:
    while len(buffer) < size:
        data = sock.recv(65536)
        if not data:
            raise EOFError("connection closed inside a chunk")
        buffer += data
    taken = bytes(buffer[:size])
    del buffer[:size]
    return taken


def chunked_post(
    port: int, path: str, body: dict[str, Any], on_chunk: Any = None
) -> tuple[bytes, list[bytes], bool]:
    """POST over a plain socket; return the head, every HTTP chunk's payload as framed on the
    wire, and whether the chunked body was terminated (False: the connection was cut). A body
    with a Content-Length comes back as one part."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: emu\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (path.encode(), len(payload), payload)
        )
        buffer = bytearray()
        head = _read_until(sock, buffer, b"\r\n\r\n")
        if b"transfer-encoding: chunked" not in head.lower():
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            return head, [_read_exactly(sock, buffer, length)], True
        chunks: list[bytes] = []
        try:
            while size := int(_read_until(sock, buffer, b"\r\n").split(b";")[0], 16):
                chunks.append(_read_exactly(sock, buffer, size))
                assert _read_exactly(sock, buffer, 2) == b"\r\n"
                if on_chunk is not None:
                    on_chunk(chunks[-1])
        except EOFError:
            return head, chunks, False
        return head, chunks, True


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize("fast", [False, True])
def test_ollama_sends_each_ndjson_line_as_its_own_chunk(fast: bool) -> None:
    with run_ollama_emulator(default_models(tokens=7), fast=fast) as emu:
        head, chunks, ended = chunked_post(emu.port, "/api/chat", {"model": CHAT, "messages": USER})
    assert head.startswith(b"HTTP/1.1 200 ") and ended
    assert len(chunks) == 8  # 7 tokens, then the done line
    assert all(chunk.endswith(b"\n") and chunk.count(b"\n") == 1 for chunk in chunks)
    lines = [json.loads(chunk) for chunk in chunks]
    assert [line["message"]["content"] for line in lines[:-1]] == token_chunks(7)
    assert lines[-1]["done"] is True


def test_ollama_coalesce_sends_an_unpaced_stream_as_one_chunk() -> None:
    with run_ollama_emulator(default_models(tokens=7), fast=True, coalesce=True) as emu:
        _, chunks, ended = chunked_post(emu.port, "/api/chat", {"model": CHAT, "messages": USER})
    assert ended and len(chunks) == 1 and chunks[0].count(b"\n") == 8


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_openai_sends_each_sse_event_as_its_own_chunk(path: str) -> None:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True}
    body.update({"messages": USER} if "chat" in path else {"prompt": "hi"})
    with run_openai_emulator(openai_models(tokens=5)) as emu:
        head, chunks, ended = chunked_post(emu.port, path, body)
    assert head.startswith(b"HTTP/1.1 200 ") and ended
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"\n\n") == 1
               for c in chunks)  # fmt: skip
    assert chunks[-1] == b"data: [DONE]\n\n"
    events = [json.loads(chunk[6:]) for chunk in chunks[:-1]]
    if "chat" in path:  # the role chunk, 5 tokens, the finish chunk
        assert len(events) == 7
        texts = [e["choices"][0]["delta"].get("content") for e in events[1:-1]]
    else:  # 5 tokens, the finish chunk
        assert len(events) == 6
        texts = [e["choices"][0]["text"] for e in events[:-1]]
    assert texts == token_chunks(5)


# --------------------------------------------------------------------------- pacing


def _paced_stream_and_a_bystander(
    port: int, path: str, body: dict[str, Any], bystander: Any, delay: float, tokens: int
) -> None:
    """Stream a paced answer in a thread and, once its first chunk is in, serve another request
    on another connection: it must complete while the stream still has chunks to come."""
    arrivals: list[float] = []
    first = threading.Event()
    result: list[tuple[bytes, list[bytes], bool]] = []

    def on_chunk(_chunk: bytes) -> None:
        arrivals.append(time.monotonic())
        first.set()

    reader = threading.Thread(
        target=lambda: result.append(chunked_post(port, path, body, on_chunk))
    )
    asked = time.monotonic()
    reader.start()
    try:
        assert first.wait(30)
        bystander()
        served = time.monotonic()
    finally:
        reader.join(60)
    _, chunks, ended = result[0]
    assert ended and len(chunks) >= tokens
    assert arrivals[-1] > served  # the pause left the other connection free
    # A lower bound only: chunk k cannot arrive before the k pauses that precede it have
    # passed since the request was sent.  (Not a bound on the gap between two arrivals: a
    # reader descheduled for a moment sees one chunk late and the next on time.)
    since = [at - asked for at in arrivals[: tokens + 1]]
    assert all(t >= k * delay * 0.98 for k, t in enumerate(since)), since


def test_ollama_token_delay_paces_the_stream_and_blocks_nobody() -> None:
    delay, tokens = 0.15, 6
    with (
        run_ollama_emulator(default_models(tokens=tokens, token_delay=delay)) as emu,
        httpx.Client(base_url=emu.url, timeout=10) as http,
    ):

        def bystander() -> None:
            body = {"model": CHAT, "messages": USER, "stream": False}
            assert http.post("/api/chat", json=body).status_code == 200
            assert emu.active_streams == 1  # the paced stream is still being written

        _paced_stream_and_a_bystander(
            emu.port, "/api/chat", {"model": CHAT, "messages": USER}, bystander, delay, tokens
        )


def test_openai_token_delay_paces_the_stream_and_blocks_nobody() -> None:
    delay, tokens = 0.15, 6
    with (
        run_openai_emulator(openai_models(tokens=tokens, token_delay=delay)) as emu,
        httpx.Client(base_url=emu.url, timeout=10) as http,
    ):

        def bystander() -> None:
            assert http.get("/models").status_code == 200

        body = {"model": "gpt-4o-mini", "messages": USER, "stream": True}
        _paced_stream_and_a_bystander(
            emu.port, "/v1/chat/completions", body, bystander, delay, tokens
        )


# --------------------------------------------------------------------------- failures


def _ollama_outcome(emu: OllamaEmulator, stream: bool) -> str:
    """ "ok", "cut", or the error status and message, as a client of Ollama meets them."""
    body = {"model": CHAT, "messages": USER, "stream": stream}
    head, chunks, ended = chunked_post(emu.port, "/api/chat", body)
    status = int(head.split()[1])
    if status != 200:
        return f"{status} {json.loads(chunks[0])['error']}"
    if not ended:
        assert stream and not any(json.loads(chunk).get("done") for chunk in chunks)
        return "cut"
    assert json.loads(chunks[-1])["done"] is True
    return "ok"


def test_ollama_fail_rate_fails_like_ollama_and_repeats_with_the_seed() -> None:
    def run(seed: int) -> tuple[list[str], dict[Failure, int]]:
        emu = OllamaEmulator(default_models(tokens=6), fail_rate=0.5, seed=seed)
        with contextlib.ExitStack() as stack:
            stack.enter_context(_served(emu))
            outcomes = [_ollama_outcome(emu, stream=i % 2 == 0) for i in range(40)]
        return outcomes, dict(emu.failures)

    outcomes, failures = run(7)
    assert run(7) == (outcomes, failures)  # the same seed, the same failures
    assert run(8)[0] != outcomes
    busy = "503 server busy, please try again.  maximum pending requests exceeded"
    crashed = "500 llama runner process has terminated: exit status 2"
    assert set(outcomes) <= {"ok", "cut", busy, crashed}
    assert failures[Failure.CUT] == outcomes.count("cut") > 0
    assert failures[Failure.BUSY] == outcomes.count(busy) > 0
    assert failures[Failure.CRASHED] == outcomes.count(crashed) > 0
    assert 8 <= sum(failures.values()) <= 32  # about half of 40
    assert all(outcomes[i] != "cut" for i in range(1, 40, 2))  # whole answers are never cut


@contextlib.contextmanager
def _served(emu: OllamaEmulator | OpenAIEmulator) -> Iterator[None]:
    from anyio.from_thread import start_blocking_portal

    with start_blocking_portal() as portal:
        portal.start_task(emu.serve, "127.0.0.1", 0)
        try:
            yield
        finally:
            portal.call(portal.stop, True)


def test_openai_fail_rate_fails_like_openai() -> None:
    emu = OpenAIEmulator(openai_models(tokens=6), fail_rate=1.0, seed=3)
    seen: set[str] = set()
    with _served(emu), httpx.Client(base_url=emu.url, timeout=10) as http:
        for i in range(30):
            stream = i % 2 == 0
            body = {"model": "gpt-4o-mini", "messages": USER, "stream": stream}
            if stream:
                head, chunks, ended = chunked_post(emu.port, "/v1/chat/completions", body)
                if head.startswith(b"HTTP/1.1 200 "):
                    assert not ended and b"data: [DONE]\n\n" not in chunks
                    seen.add("cut")
                    continue
                status, error = int(head.split()[1]), json.loads(b"".join(chunks))["error"]
            else:
                reply = http.post("/chat/completions", json=body)
                status, error = reply.status_code, reply.json()["error"]
            assert error["type"] == "server_error" and set(error) == {
                "message",
                "type",
                "param",
                "code",
            }
            seen.add(str(status))
        # Embeddings are not generation: they never fail.
        assert (
            http.post(
                "/embeddings", json={"model": "text-embedding-3-small", "input": "x"}
            ).status_code
            == 200
        )
    assert seen == {"cut", "500", "503"}
    assert sum(emu.failures.values()) == 30


def test_fail_rate_zero_never_fails_and_out_of_range_is_refused() -> None:
    with run_ollama_emulator(default_models(tokens=3)) as emu:
        assert all(_ollama_outcome(emu, stream=bool(i % 2)) == "ok" for i in range(10))
    with pytest.raises(ValueError, match="fail_rate"):
        OllamaEmulator(fail_rate=1.5)
    with pytest.raises(ValueError, match="fail_rate"):
        OpenAIEmulator(fail_rate=-0.1)


# --------------------------------------------------------------------------- the command


@contextlib.contextmanager
def emulate(*args: str) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """``python -m sansio_gateway.adapters.cli emulate ARGS``; yields it, its URL and its lines."""
    command = [sys.executable, "-m", "sansio_gateway.adapters.cli", "emulate", "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if " listening on " in line:
                break
        else:
            raise AssertionError(f"emulate exited without a URL: {lines}")
        yield process, lines[-1].rsplit(" ", 1)[-1], lines
    finally:
        if process.poll() is None:
            process.kill()  # ours, by its own handle
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_emulate_serves_ollama_and_stops_cleanly(signum: signal.Signals) -> None:
    with emulate("--tokens", "4", "--token-delay-ms", "1") as (process, url, lines):
        assert any(line.startswith("models: llama3.2:1b") for line in lines)
        assert f"gateway: OLLAMA_HOST={url} sansio-gateway serve" in lines
        body = {"model": CHAT, "messages": USER, "stream": False}
        reply = httpx.post(f"{url}/api/chat", json=body, timeout=10).json()
        assert reply["message"]["content"] == "".join(token_chunks(4))
        process.send_signal(signum)
        rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, rest
    assert rest.splitlines() == [f"{signum.name}: stopping", "stopped"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


def test_emulate_serves_openai_with_an_api_key() -> None:
    with emulate("--kind", "openai", "--api-key", "sk-emu", "--tokens", "3") as (
        process,
        url,
        lines,
    ):
        assert url.endswith("/v1") and any('kind = "openai"' in line for line in lines)
        assert httpx.get(f"{url}/models").status_code == 401
        reply = httpx.get(f"{url}/models", headers={"Authorization": "Bearer sk-emu"})
        assert "gpt-4o-mini" in [model["id"] for model in reply.json()["data"]]
        process.terminate()
        assert process.wait(30) == 0


def test_emulate_serves_anthropic_with_an_api_key() -> None:
    with emulate("--kind", "anthropic", "--api-key", "sk-ant-emu", "--tokens", "3") as (
        process,
        url,
        lines,
    ):
        assert url.endswith("/v1") and any('kind = "anthropic"' in line for line in lines)
        version = {"anthropic-version": "2023-06-01"}
        assert httpx.get(f"{url}/models", headers=version).status_code == 401
        headers = {**version, "x-api-key": "sk-ant-emu"}
        assert httpx.get(f"{url}/models", headers={"x-api-key": "sk-ant-emu"}).status_code == 400
        body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": USER}
        reply = httpx.post(f"{url}/messages", json=body, headers=headers).json()
        assert reply["content"][0]["text"] == "".join(token_chunks(3))
        assert reply["usage"]["output_tokens"] == 3
        process.terminate()
        assert process.wait(30) == 0


def test_anthropic_stream_sends_each_event_as_its_own_chunk() -> None:
    from sansio_gateway.adapters.emulator.anthropic import run_anthropic_emulator

    with run_anthropic_emulator() as emu:
        port = int(emu.url.rsplit(":", 1)[1].split("/")[0])
        body = {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": USER, "stream": True}
        payload = json.dumps(body).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/messages HTTP/1.1\r\nHost: emu\r\nanthropic-version: 2023-06-01\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(payload), payload)
            )
            buffer = bytearray()
            _read_until(sock, buffer, b"\r\n\r\n")
            chunks = []
            while size := int(_read_until(sock, buffer, b"\r\n").split(b";")[0], 16):
                chunks.append(_read_exactly(sock, buffer, size))
                _read_exactly(sock, buffer, 2)
    names = [chunk.split(b"\n", 1)[0] for chunk in chunks]
    assert names[:3] == [b"event: message_start", b"event: content_block_start", b"event: ping"]
    assert names[-2:] == [b"event: message_delta", b"event: message_stop"]
    assert all(chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1 for chunk in chunks)


@pytest.mark.parametrize(
    ("flag", "value"), [("--fail-rate", "1.5"), ("--token-delay-ms", "-1"), ("--tokens", "-2")]
)
def test_emulate_refuses_bad_values(flag: str, value: str) -> None:
    command = [sys.executable, "-m", "sansio_gateway.adapters.cli", "emulate", flag, value]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and flag in done.stderr
