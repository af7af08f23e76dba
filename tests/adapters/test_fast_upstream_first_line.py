"""The fast upstream client sends a stream's first line on its own when a
backend's first read holds several (the client's first token then waits
for one line's work, not the whole read's); every byte still arrives once,
in order, and a whole answer is never cut."""

from __future__ import annotations

import asyncio

import pytest
from sansio_gateway.adapters.fast_upstream import FastUpstreamClient

from sansio_gateway.actions import (
    Result,
    SendUpstream,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamResponseStarted,
)
from tests.helpers import make_config

NDJSON = b'{"n":1}\n{"n":2}\n{"n":3}\n'
SSE = b'data: {"n":1}\n\ndata: {"n":2}\n\ndata: [DONE]\n\n'
JSON = b'{\n  "n": 1,\n  "m": 2\n}\n'


async def _answer_once(
    content_type: bytes, body: bytes, done: asyncio.Event
) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # Head and the whole body in one write: the client reads them at once.
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (content_type, len(body), body)
        )
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()
        await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("content_type", "body", "pieces"),
    [
        (b"application/x-ndjson", NDJSON, [b'{"n":1}\n', b'{"n":2}\n{"n":3}\n']),
        (b"text/event-stream; charset=utf-8", SSE, [SSE[:14], SSE[14:]]),
        (b"application/json", JSON, [JSON]),  # a whole answer: never cut
        (b"application/x-ndjson", b'{"n":1}\n', [b'{"n":1}\n']),  # one line: nothing to cut
    ],
)
def test_the_first_line_of_a_stream_goes_alone(
    content_type: bytes, body: bytes, pieces: list[bytes]
) -> None:
    async def main() -> list[Result]:
        done = asyncio.Event()
        server, url = await _answer_once(content_type, body, done)
        config = make_config(f'[[backends]]\nname = "b"\nkind = "ollama"\nurl = "{url}"\n')
        client = FastUpstreamClient()
        seen: list[Result] = []

        async def deliver(result: Result) -> bool:
            seen.append(result)
            return True

        action = SendUpstream(
            backend="b", method="POST", url=url + "/api/chat", headers=(), body=b"{}",
            reason="first",
        )  # fmt: skip
        try:
            await client.request(action, config.backend("b"), deliver)
        finally:
            await client.aclose()
            await asyncio.wait_for(done.wait(), 10)
            server.close()
        return seen

    seen = asyncio.run(main())
    assert isinstance(seen[0], UpstreamResponseStarted)
    assert isinstance(seen[-1], UpstreamClosed)
    chunks = [r.data for r in seen[1:-1] if isinstance(r, UpstreamChunkReceived)]
    assert len(chunks) == len(seen) - 2
    assert chunks == pieces
    assert b"".join(chunks) == body
