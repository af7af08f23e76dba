"""The fast server's request reader and response writer without sockets
(adapters/fast_http.py): whatever the chunking, the same requests, the same
refusals and the same response heads as h11 (which reads whatever the
reader hands over)."""

from __future__ import annotations

import itertools
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sansio_gateway.adapters.fast_http import (
    NEED_DATA,
    USE_H11,
    RequestHead,
    RequestReader,
    response_head,
)

MAX_HEAD = 300
POST = (
    b'POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\n\r\n{"a":"bc"}\n'
)

# The heads the reader takes, and the ones it hands to h11 (all of them
# read, refused or answered by h11 the same way whoever starts).
REQUESTS = [
    b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    POST,
    b"HEAD /api/tags HTTP/1.1\r\nHost: x\r\nX-Odd:  spaced  value \t\r\nEmpty:\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"GET /obs HTTP/1.1\r\nHost: x\r\nX: \x80\xff\x7f\x01\r\n\r\n",
    b"GET /close HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n",
    b"GET /ten HTTP/1.0\r\n\r\n",
    b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"POST /twice HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"POST /differ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    b"POST /sign HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\nok",
    b"GET /nohost HTTP/1.1\r\n\r\n",
    b"GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /lf HTTP/1.1\nHost: x\n\n",
    b"GET /fold HTTP/1.1\r\nHost: x\r\nX: a\r\n  b\r\n\r\n",
    b"\r\nGET /leading HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET  /double-space HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /sp HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET /nul HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * MAX_HEAD + b"\r\n\r\n",
    b"GET /target\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    b"garbage\r\n\r\n",
]

Outcome = tuple[list[tuple[Any, ...]], Any]


def _respond(conn: h11.Connection) -> bool:
    """Answer the request just read; whether the connection goes on."""
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    conn.send(h11.EndOfMessage())
    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
        return False
    conn.start_next_cycle()
    return True


def _h11_read(conn: h11.Connection, pieces: list[bytes], seen: list[tuple[Any, ...]]) -> Any:
    current: list[Any] = []
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                return ("refused", exc.error_status_hint)
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Request):
                current = [event.method, event.target, list(event.headers), b""]
            elif isinstance(event, h11.Data):
                current[3] += event.data
            elif isinstance(event, h11.EndOfMessage):
                seen.append(tuple(current))
                if not _respond(conn):
                    return "closed"
            elif isinstance(event, h11.ConnectionClosed):
                return "eof"
            else:
                return ("event", type(event).__name__)
    return "eof"


def _new_h11() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)


def by_h11(pieces: list[bytes]) -> Outcome:
    seen: list[tuple[Any, ...]] = []
    return seen, _h11_read(_new_h11(), pieces, seen)


def by_reader(pieces: list[bytes]) -> Outcome:
    """The fast server's way: the reader until it hands over, then h11."""
    reader = RequestReader(MAX_HEAD)
    seen: list[tuple[Any, ...]] = []
    head: RequestHead | None = None
    body = b""
    for index, piece in enumerate(pieces):
        reader.buf += piece
        while True:
            if head is None:
                answer = reader.next_head()
                if answer is NEED_DATA:
                    break
                if answer is USE_H11:
                    return seen, _h11_read(
                        _new_h11(), [bytes(reader.buf), *pieces[index + 1 :]], seen
                    )
                assert isinstance(answer, RequestHead)
                head, body = answer, b""
            part = reader.next_body()
            if part is NEED_DATA:
                break
            if isinstance(part, bytes):
                body += part
                continue
            seen.append((head.method, head.target, head.headers, body))
            if not head.keep_alive:
                return seen, "closed"
            head = None
    if head is not None:
        return seen, ("refused", 400)  # a body cut short: the server says what h11 says
    if reader.buf:
        return seen, _h11_read(_new_h11(), [bytes(reader.buf)], seen)
    return seen, "eof"


@given(
    picks=st.lists(st.integers(min_value=0, max_value=len(REQUESTS) - 1), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
    truncate=st.integers(min_value=0, max_value=20),
)
@settings(max_examples=400, deadline=None)
def test_any_chunking_gives_the_requests_h11_gives(
    picks: list[int], cuts: list[int], truncate: int
) -> None:
    stream = b"".join(REQUESTS[i] for i in picks)
    stream = stream[: len(stream) - truncate]
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    # (an empty piece is an EOF to h11: none is sent)
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    # Against h11 fed the same pieces: h11 itself answers by chunking in one
    # case (a head past the limit is a 431 only if it arrives incomplete).
    assert by_reader(pieces) == by_h11(pieces)


@pytest.mark.parametrize("index", range(len(REQUESTS)))
def test_the_reader_takes_only_what_h11_reads_the_same_way(index: int) -> None:
    answer = RequestReader(MAX_HEAD)
    answer.buf += REQUESTS[index]
    taken = answer.next_head()
    assert by_reader([REQUESTS[index]]) == by_h11([REQUESTS[index]])
    # Every head in h11's grammar without a feature left to h11 is taken:
    # the plain ones, control and obs-text bytes in a value (4) and a method
    # no RFC names (20), as h11 reads them.  A big head that arrives whole is
    # taken (22): the server refuses it, 431, as it does after h11.
    assert isinstance(taken, RequestHead) is (index in (0, 1, 2, 3, 4, 5, 20, 22))


def _h11_head(
    method: bytes,
    request_headers: list[tuple[bytes, bytes]],
    status: int,
    headers: list[tuple[bytes, bytes]],
) -> tuple[bytes, bool]:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(
        b"%s / HTTP/1.1\r\nhost: x\r\n%s\r\n"
        % (method, b"".join(n + b": " + v + b"\r\n" for n, v in request_headers))
    )
    assert isinstance(conn.next_event(), h11.Request)
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=b"R"))
    assert data is not None
    # h11 keeps whether the connection outlives this exchange in its state.
    return data, bool(conn._cstate.keep_alive)


RESPONSES = [
    (200, [(b"Content-Type", b"application/json"), (b"Content-Length", b"12")]),
    (200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]),
    (200, [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")]),
    (204, [(b"x-a", b"b")]),
    (304, []),
    (503, [(b"Connection", b"close"), (b"content-length", b"2")]),
    (200, [(b"Connection", b"keep-alive, Upgrade"), (b"content-length", b"2")]),
    (200, [(b"content-length", b"2"), (b"Content-Length", b"2")]),
]


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST"])
@pytest.mark.parametrize("close", [False, True])
@pytest.mark.parametrize(("status", "headers"), RESPONSES)
def test_response_heads_are_h11s(
    method: bytes, close: bool, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    request_headers = [(b"connection", b"close")] if close else []
    expected, keep = _h11_head(method, request_headers, status, headers)
    head, _, keep_alive = response_head(
        status, b"R", headers, head_request=method == b"HEAD", keep_alive=not close
    )
    assert head == expected
    assert keep_alive is keep


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x", b"a\r\nb")],
        [(b"bad name", b"v")],
        [(b"content-length", b"x")],
        [(b"transfer-encoding", b"gzip")],
        [(b"content-length", b"1"), (b"content-length", b"2")],
    ],
)
def test_response_heads_refused_as_h11_refuses(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(h11.LocalProtocolError) as ours:
        response_head(200, b"OK", headers, head_request=False, keep_alive=True)
    with pytest.raises(h11.LocalProtocolError) as theirs:
        _h11_head(b"GET", [], 200, headers)
    assert str(ours.value) == str(theirs.value)


_NAMES = st.sampled_from(
    [b"content-type", b"X-Request-Id", b"content-length", b"Content-Length",
     b"transfer-encoding", b"connection", b"x-ratelimit-limit-requests", b"bad name",
     b"caf\xc3\xa9", b""]
)  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from([b"12", b"0", b"1, 1", b" 3", b"chunked", b"close", b"keep-alive",
                     b"text/event-stream", b"a  b", b"", b"x\r\ny", b"\x00", b"\xff\xfe"]),
    st.binary(max_size=8),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from([200, 201, 204, 299, 304, 400, 429, 503, 999]),
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=5),
    method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
    close=st.booleans(),
)
def test_any_response_head_is_h11s_or_refused_as_h11_refuses(
    status: int, headers: list[tuple[bytes, bytes]], method: bytes, close: bool
) -> None:
    """Whichever path writes it (the lean one for common heads, h11's event
    for the rest), the head is h11's bytes, or h11's refusal."""
    request_headers = [(b"connection", b"close")] if close else []
    try:
        expected, keep = _h11_head(method, request_headers, status, headers)
    except h11.LocalProtocolError as theirs:
        with pytest.raises(h11.LocalProtocolError) as ours:
            response_head(status, b"R", headers, head_request=method == b"HEAD",
                          keep_alive=not close)  # fmt: skip
        assert str(ours.value) == str(theirs)
        return
    head, length, keep_alive = response_head(
        status, b"R", headers, head_request=method == b"HEAD", keep_alive=not close
    )
    assert head == expected
    assert keep_alive is keep
    fields = dict(line.lower().split(b": ", 1) for line in expected.split(b"\r\n")[1:-2])
    if method == b"HEAD" or status in (204, 304):
        assert length == 0
    elif fields.get(b"transfer-encoding") == b"chunked":
        assert length is None
    else:
        assert length == int(fields[b"content-length"])
