"""The fast upstream client's httptools reader and request writer, without
sockets (adapters/fast_http.py): the same answers as h11 on the same bytes."""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sansio_gateway.adapters.fast_http import HTTPTOOLS, ParsedResponse, request_bytes
from sansio_gateway.adapters.upstream_pool import ConnectionLost

LINES = [b'{"message":{"content":"tok%d"},"done":false}\n' % i for i in range(5)]
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in LINES)
    + b"0\r\n\r\n"
)


def test_httptools_is_installed_for_the_tests() -> None:
    # The test extra installs it: the httptools path is never silently skipped.
    assert HTTPTOOLS


def _h11_body(data: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    return response.status_code, list(response.headers), body


def _parse(pieces: list[bytes], *, eof: bool = False) -> tuple[ParsedResponse, bytes]:
    parsed = ParsedResponse()
    body = b""
    for piece in pieces:
        parsed.feed(piece)
        body += parsed.take_body()
    if eof:
        parsed.feed_eof()
    return parsed, body


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(CHUNKED)), max_size=12))
def test_chunking_invariance_and_the_same_answer_as_h11(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(CHUNKED)]
    pieces = [CHUNKED[a:b] for a, b in itertools.pairwise(bounds)]
    parsed, body = _parse(pieces)
    status, headers, h11_body = _h11_body(CHUNKED)
    assert (parsed.status, parsed.headers, body) == (status, headers, h11_body)
    assert parsed.complete and parsed.keep_alive and not parsed.extra


def test_what_one_feed_parsed_is_taken_as_one_piece() -> None:
    parsed = ParsedResponse()
    parsed.feed(CHUNKED)
    assert parsed.take_body() == b"".join(LINES)
    assert parsed.take_body() == b""


def test_content_length_body() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    parsed, body = _parse([data[:20], data[20:]])
    assert (parsed.status, body, parsed.complete, parsed.keep_alive) == (200, b"hello", True, True)


def test_informational_responses_are_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    parsed, body = _parse([data])
    assert (parsed.status, parsed.headers, body) == (201, [(b"content-length", b"2")], b"ok")
    assert parsed.complete


def test_a_body_without_length_ends_at_eof_and_the_connection_is_not_kept() -> None:
    parsed, body = _parse([b"HTTP/1.1 200 OK\r\n\r\nall of it"], eof=True)
    assert (body, parsed.complete, parsed.keep_alive) == (b"all of it", True, False)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        CHUNKED[:-7],
    ],
    ids=["nothing", "short-body", "unterminated-chunks"],
)
def test_eof_before_the_end_is_a_lost_connection(data: bytes) -> None:
    with pytest.raises(ConnectionLost, match="closed the connection"):
        _parse([data], eof=True)


def test_garbage_is_a_broken_exchange() -> None:
    with pytest.raises(ConnectionLost, match="broke the HTTP exchange"):
        _parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])


def test_connection_close_and_bytes_after_the_end_forbid_reuse() -> None:
    parsed, _ = _parse([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    assert parsed.complete and not parsed.keep_alive
    parsed, body = _parse([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"])
    assert body == b"ok" and parsed.complete and parsed.extra
    parsed, body = _parse([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\x00\x01garbage"])
    assert body == b"ok" and parsed.complete and parsed.extra


def test_request_bytes_are_h11s() -> None:
    headers = [(b"host", b"127.0.0.1:9"), (b"content-type", b"application/json")]
    body = b'{"model":"m"}'
    headers.append((b"content-length", b"%d" % len(body)))
    conn = h11.Connection(h11.CLIENT)
    expected = conn.send(h11.Request(method="POST", target="/api/chat?x=1", headers=headers))
    expected = (expected or b"") + (conn.send(h11.Data(data=body)) or b"")
    assert request_bytes("POST", "/api/chat?x=1", headers, body) == expected


@pytest.mark.parametrize(
    ("method", "target", "header"),
    [
        ("POST", "/", (b"x-key", b"a\r\nx-injected: 1")),
        ("POST", "/", (b"bad name", b"v")),
        ("POST", "/", (b"x-nul", b"a\x00b")),
        ("PO ST", "/", (b"x", b"y")),
        ("POST", "/a b", (b"x", b"y")),
        ("POST", "/\u00e9", (b"x", b"y")),
    ],
)
def test_request_bytes_refuse_what_h11_refuses(
    method: str, target: str, header: tuple[bytes, bytes]
) -> None:
    with pytest.raises((h11.LocalProtocolError, UnicodeError)) as by_h11:
        h11.Connection(h11.CLIENT).send(
            h11.Request(method=method, target=target, headers=[(b"host", b"x"), header])
        )
    with pytest.raises(by_h11.type):
        request_bytes(method, target, [(b"host", b"x"), header], b"")
