"""Tests for sansio_gateway.framing: SSE / NDJSON decoders and encoders."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sansio_gateway.framing import (
    SSE_DONE,
    FramingError,
    NDJSONDecoder,
    SSEDecoder,
    SSEEvent,
    encode_ndjson,
    encode_sse,
    encode_sse_json,
)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Decoder = SSEDecoder | NDJSONDecoder

# ---------------------------------------------------------------------------
# Drivers


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (any order, duplicates allowed)."""
    points = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def decode_all(decoder: Decoder, chunks: Sequence[bytes]) -> list[Any]:
    """Feed every chunk, then EOF; return all records.  Errors propagate."""
    out: list[Any] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    out += decoder.feed_eof()
    return out


def decode_until_error(decoder: Decoder, chunks: Sequence[bytes]) -> tuple[list[Any], str | None]:
    """Like decode_all, but stop at the first FramingError and report it."""
    out: list[Any] = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
        out += decoder.feed_eof()
    except FramingError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return out, exc.reason
    return out, None


def outcome(result: tuple[list[Any], str | None]) -> tuple[list[Any], bool]:
    """Records delivered, and whether the stream failed (reasons may differ)."""
    return result[0], result[1] is not None


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def assert_stays_failed(decoder: Decoder) -> None:
    with pytest.raises(FramingError):
        decoder.feed(b"data: ok\n\n{}\n")
    with pytest.raises(FramingError):
        decoder.feed(b"")
    with pytest.raises(FramingError):
        decoder.feed_eof()


# ---------------------------------------------------------------------------
# Strategies

# Field values: anything that is not a line end (or a surrogate, which UTF-8
# cannot carry).  NUL is allowed except in ids, where it voids the field.
_value_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")
values = st.text(_value_chars, max_size=12)
ids = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\0"), max_size=6)
line_ends = st.sampled_from(["\n", "\r\n", "\r"])


@dataclass
class Block:
    """One generated SSE event block: field lines and comments, then a blank line."""

    data: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    event: str | None = None
    id: str | None = None
    retry: int | None = None


def field_line(name: str, space: str, value: object) -> str:
    """``name:value``, with the optional space that the decoder strips; a
    value that itself starts with a space always needs it."""
    text = str(value)
    return f"{name}:{' ' if text.startswith(' ') else space}{text}"


@st.composite
def sse_blocks(draw: st.DrawFn) -> Block:
    block = Block()
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["data", "data", "event", "id", "retry", "comment", "other"]))
        space = draw(st.sampled_from(["", " "]))
        if kind == "data":
            value = draw(values)
            block.data.append(value)
            bare = value == "" and draw(st.booleans())  # "data" with no colon at all
            block.lines.append("data" if bare else field_line("data", space, value))
        elif kind == "event":
            block.event = draw(values)
            block.lines.append(field_line("event", space, block.event))
        elif kind == "id":
            block.id = draw(ids)
            block.lines.append(field_line("id", space, block.id))
        elif kind == "retry":
            block.retry = draw(st.integers(0, 10**6))
            block.lines.append(field_line("retry", space, block.retry))
        elif kind == "comment":
            block.lines.append(":" + draw(values))
        else:
            block.lines.append(field_line("x-unknown", space, draw(values)))
    return block


def expected_events(blocks: Sequence[Block]) -> list[SSEEvent]:
    """The documented semantics, computed from the structure, not the bytes."""
    events: list[SSEEvent] = []
    last_id: str | None = None
    retry: int | None = None
    for block in blocks:
        last_id = block.id if block.id is not None else last_id
        retry = block.retry if block.retry is not None else retry
        if block.data:
            events.append(
                SSEEvent(
                    data="\n".join(block.data), event=block.event or None, id=last_id, retry=retry
                )
            )
            retry = None
    return events


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    """A stream of blocks with mixed line ends, maybe a BOM, maybe an
    unterminated trailing block; plus the events it must produce."""
    blocks = draw(st.lists(sse_blocks(), max_size=5))
    lines = [line for block in blocks for line in [*block.lines, ""]]
    tail = draw(sse_blocks()).lines  # never dispatched: no blank line follows it
    tail = tail[: draw(st.integers(0, len(tail)))]
    lines += tail
    text: list[str] = []
    prev_end = "\n"
    for line in lines:
        end = draw(line_ends)
        if prev_end == "\r" and line == "" and end == "\n":
            end = "\r\n"  # "\r" + "\n" would be one line end, not a blank line
        text.append(line + end)
        prev_end = end
    unterminated = draw(st.booleans())
    if tail and unterminated:
        text[-1] = text[-1].rstrip("\r\n")  # trailing bytes without a terminator
    stream = "".join(text).encode()
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return bom + stream, expected_events(blocks)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # orjson's integer range
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"]), max_size=5), inner, max_size=4
        )
    ),
    max_leaves=12,
)


@st.composite
def ndjson_streams(draw: st.DrawFn) -> tuple[bytes, list[Any]]:
    """Values as NDJSON with "\\n" or "\\r\\n", blank lines between them and
    maybe a last line without a terminator."""
    items = draw(st.lists(json_values, max_size=6))
    parts: list[bytes] = []
    for item in items:
        parts.append(draw(st.sampled_from([b"", b"\n", b" \t\r\n", b"\r\n"])))
        parts.append(orjson.dumps(item) + draw(st.sampled_from([b"\n", b"\r\n"])))
    stream = b"".join(parts)
    if stream and draw(st.booleans()):
        stream = stream.rstrip(b"\r\n")
    return stream, items


cuts = st.lists(st.integers(min_value=0), max_size=12)

interesting = st.sampled_from(
    [
        b"data:",
        b"data: ",
        b"event: e",
        b"id:",
        b"\0",
        b"retry: 1",
        b"retry: x",
        b":",
        b" ",
        b"\r",
        b"\n",
        b"\r\n",
        b"\xef\xbb\xbf",
        b"\xff",
        b"\xc3",
        b"\xa9",
        b"{",
        b"}",
        b"[1]",
        b'"a"',
        b"x" * 20,
    ]
)
garbage = st.one_of(st.binary(max_size=200), st.lists(interesting, max_size=40).map(b"".join))

# ---------------------------------------------------------------------------
# Chunking invariance


@PROPERTY
@given(stream=sse_streams(), cut=cuts)
def test_sse_chunking_invariance(stream: tuple[bytes, list[SSEEvent]], cut: list[int]) -> None:
    data, expected = stream
    assert decode_all(SSEDecoder(), [data]) == expected
    assert decode_all(SSEDecoder(), split_at(data, cut)) == expected


@settings(max_examples=40, deadline=None)
@given(stream=sse_streams())
def test_sse_chunking_invariance_one_byte_at_a_time(stream: tuple[bytes, list[SSEEvent]]) -> None:
    data, expected = stream
    assert decode_all(SSEDecoder(), one_byte_at_a_time(data)) == expected


@PROPERTY
@given(stream=ndjson_streams(), cut=cuts)
def test_ndjson_chunking_invariance(stream: tuple[bytes, list[Any]], cut: list[int]) -> None:
    data, expected = stream
    assert decode_all(NDJSONDecoder(), [data]) == expected
    assert decode_all(NDJSONDecoder(), split_at(data, cut)) == expected


@settings(max_examples=40, deadline=None)
@given(stream=ndjson_streams())
def test_ndjson_chunking_invariance_one_byte_at_a_time(stream: tuple[bytes, list[Any]]) -> None:
    data, expected = stream
    assert decode_all(NDJSONDecoder(), one_byte_at_a_time(data)) == expected


SSE_SAMPLE = (
    b': keep-alive\r\ndata: {"a":1}\r\n\r\nevent: x\rdata: l1\rdata: l2\r\rdata: [DONE]\n\n'
)
SSE_SAMPLE_EVENTS = [
    SSEEvent(data='{"a":1}'),
    SSEEvent(data="l1\nl2", event="x"),
    SSEEvent(data="[DONE]"),
]


@pytest.mark.parametrize(
    "chunker",
    [lambda d: [d], one_byte_at_a_time, lambda d: split_at(d, range(0, len(d), 7))],
    ids=["whole", "one-byte", "every-7"],
)
def test_sse_deterministic_chunkings(chunker: Callable[[bytes], list[bytes]]) -> None:
    assert decode_all(SSEDecoder(), chunker(SSE_SAMPLE)) == SSE_SAMPLE_EVENTS


def test_sse_trailing_bytes_without_terminator_are_discarded_at_eof() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [SSEEvent(data="a")]
    assert decoder.feed(b"data: c") == []
    assert decoder.feed_eof() == []  # WHATWG: an unterminated event is not dispatched


def test_ndjson_trailing_line_without_newline_is_parsed_at_eof() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"b"') == [{"a": 1}]
    assert decoder.feed(b":2}") == []
    assert decoder.feed_eof() == [{"b": 2}]


@pytest.mark.parametrize("chunker", [lambda d: [d], one_byte_at_a_time], ids=["whole", "one-byte"])
def test_ndjson_deterministic_chunkings(chunker: Callable[[bytes], list[bytes]]) -> None:
    data = b'{"done":false}\r\n\n  \n[1,2]\n"s"\ntrue'
    assert decode_all(NDJSONDecoder(), chunker(data)) == [{"done": False}, [1, 2], "s", True]


# ---------------------------------------------------------------------------
# Garbage gives events or FramingError


@PROPERTY
@given(data=garbage, cut=cuts)
def test_sse_garbage_gives_events_or_framing_error(data: bytes, cut: list[int]) -> None:
    def run(chunks: list[bytes]) -> tuple[list[Any], str | None]:
        return decode_until_error(SSEDecoder(max_line_bytes=16, max_event_bytes=24), chunks)

    chunked = run(split_at(data, cut))
    assert all(isinstance(e, SSEEvent) for e in chunked[0])
    # Deliver, then fail: what precedes the error does not depend on chunking.
    assert outcome(chunked) == outcome(run([data]))


@PROPERTY
@given(data=garbage, cut=cuts)
def test_ndjson_garbage_gives_values_or_framing_error(data: bytes, cut: list[int]) -> None:
    def run(chunks: list[bytes]) -> tuple[list[Any], str | None]:
        return decode_until_error(NDJSONDecoder(max_line_bytes=16), chunks)

    assert outcome(run(split_at(data, cut))) == outcome(run([data]))


@settings(max_examples=50, deadline=None)
@given(data=garbage)
def test_garbage_then_failed_decoder_stays_failed(data: bytes) -> None:
    for decoder in (SSEDecoder(max_line_bytes=8), NDJSONDecoder(max_line_bytes=8)):
        _, error = decode_until_error(decoder, [data, b"\xff\n" + b"y" * 9])
        assert error is not None  # the appended chunk always fails
        assert_stays_failed(decoder)


# ---------------------------------------------------------------------------
# Round trips


@PROPERTY
@given(items=st.lists(json_values, max_size=5), cut=cuts)
def test_sse_json_round_trip(items: list[Any], cut: list[int]) -> None:
    data = b"".join(map(encode_sse_json, items)) + SSE_DONE
    events = decode_all(SSEDecoder(), split_at(data, cut))
    assert [orjson.loads(e.data) for e in events[:-1]] == items
    assert events[-1] == SSEEvent(data="[DONE]")


@PROPERTY
@given(items=st.lists(json_values, max_size=5), cut=cuts)
def test_ndjson_round_trip(items: list[Any], cut: list[int]) -> None:
    data = b"".join(map(encode_ndjson, items))
    assert decode_all(NDJSONDecoder(), split_at(data, cut)) == items


def test_encoders_exact_bytes() -> None:
    assert encode_sse(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_sse_json({"a": [1, "é"]}) == b'data: {"a":[1,"\xc3\xa9"]}\n\n'
    assert encode_ndjson({"done": True}) == b'{"done":true}\n'
    assert SSE_DONE == b"data: [DONE]\n\n"


@pytest.mark.parametrize("payload", [b"a\nb", b"a\rb", b"a\r\n"])
def test_encode_sse_rejects_multi_line_payload(payload: bytes) -> None:
    with pytest.raises(ValueError):
        encode_sse(payload)


# ---------------------------------------------------------------------------
# Limits and the failure latch


@pytest.mark.parametrize(
    "make", [lambda: SSEDecoder(max_line_bytes=10), lambda: NDJSONDecoder(max_line_bytes=10)]
)
def test_line_at_the_limit_is_accepted(make: Callable[[], Decoder]) -> None:
    line = b'data: "12"' if isinstance(make(), SSEDecoder) else b'"12345678"'
    assert len(line) == 10
    assert decode_all(make(), [line + b"\n\n"]) != []


@pytest.mark.parametrize(
    "make", [lambda: SSEDecoder(max_line_bytes=10), lambda: NDJSONDecoder(max_line_bytes=10)]
)
def test_over_long_complete_line_raises(make: Callable[[], Decoder]) -> None:
    decoder = make()
    with pytest.raises(FramingError, match="max_line_bytes=10"):
        decoder.feed(b'"' + b"x" * 10 + b'"\n')
    assert_stays_failed(decoder)


@pytest.mark.parametrize(
    "make", [lambda: SSEDecoder(max_line_bytes=10), lambda: NDJSONDecoder(max_line_bytes=10)]
)
def test_over_long_line_raises_while_incomplete_one_byte_at_a_time(
    make: Callable[[], Decoder],
) -> None:
    decoder = make()
    for _ in range(10):
        assert decoder.feed(b"x") == []
    with pytest.raises(FramingError):
        decoder.feed(b"x")  # the 11th byte, no line end in sight
    assert_stays_failed(decoder)


def test_sse_over_large_event_raises() -> None:
    decoder = SSEDecoder(max_line_bytes=100, max_event_bytes=10)
    assert decoder.feed(b"data: 12345\ndata: 1234\n\n") == [SSEEvent(data="12345\n1234")]
    assert decoder.feed(b"data: 12345\n") == []
    with pytest.raises(FramingError, match="max_event_bytes=10"):
        decoder.feed(b"data: 12345\n")
    assert_stays_failed(decoder)


def test_records_before_a_fault_are_delivered_then_the_decoder_fails() -> None:
    sse = SSEDecoder()
    assert sse.feed(b"data: a\n\ndata: \xff\n\n") == [SSEEvent(data="a")]
    assert_stays_failed(sse)
    nd = NDJSONDecoder()
    assert nd.feed(b'{"a":1}\nnot json\n') == [{"a": 1}]
    assert_stays_failed(nd)


@pytest.mark.parametrize("make", [SSEDecoder, NDJSONDecoder])
def test_feed_after_feed_eof_raises(make: Callable[[], Decoder]) -> None:
    decoder = make()
    assert decoder.feed_eof() == []
    with pytest.raises(FramingError, match="feed_eof"):
        decoder.feed(b"data: x\n\n")
    with pytest.raises(FramingError, match="feed_eof"):
        decoder.feed_eof()


@pytest.mark.parametrize(
    "make",
    [
        lambda: SSEDecoder(max_line_bytes=0),
        lambda: SSEDecoder(max_event_bytes=0),
        lambda: NDJSONDecoder(max_line_bytes=-1),
    ],
)
def test_limits_must_be_positive(make: Callable[[], Decoder]) -> None:
    with pytest.raises(ValueError):
        make()


# ---------------------------------------------------------------------------
# SSE line ends, fields and quirks (WHATWG HTML 9.2.5 / 9.2.6)


def test_crlf_split_across_chunks_counts_once() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []  # an empty chunk does not forget the pending "\r"
    assert decoder.feed(b"\n") == []  # counted twice, this would dispatch
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\n\r") == [SSEEvent(data="a\nb")]
    assert decoder.feed(b"\ndata: c\r\r") == [SSEEvent(data="c")]


def test_lone_cr_is_a_line_end() -> None:
    assert SSEDecoder().feed(b"data: a\rdata: b\r\r") == [SSEEvent(data="a\nb")]


def test_comments_are_ignored_and_do_not_end_the_stream() -> None:
    data = b": ping\n\n:\ndata: x\n: mid-event\ndata: y\n\n: ping\n\n"
    assert decode_all(SSEDecoder(), [data]) == [SSEEvent(data="x\ny")]


def test_bom_is_skipped_once_and_only_at_the_start() -> None:
    assert decode_all(SSEDecoder(), one_byte_at_a_time(b"\xef\xbb\xbfdata: x\n\n")) == [
        SSEEvent(data="x")
    ]
    # A second BOM belongs to the field name, which then is unknown.
    assert decode_all(SSEDecoder(), [b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n"]) == []
    assert decode_all(SSEDecoder(), [b"data: x\n\n\xef\xbb\xbfdata: y\n\n"]) == [SSEEvent(data="x")]


@pytest.mark.parametrize("stream", [b"\xef", b"\xef\xbb", b"\xef\xbc"])
def test_bom_prefix_at_eof_is_a_line_of_invalid_utf8(stream: bytes) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(stream) == []
    with pytest.raises(FramingError, match="UTF-8"):
        decoder.feed_eof()


@pytest.mark.parametrize(
    ("line", "retry"),
    [
        (b"retry: 3000", 3000),
        (b"retry:0", 0),
        (b"retry: 30a", None),
        (b"retry: -1", None),
        (b"retry: 1.5", None),
        (b"retry:", None),
        (b"retry", None),
        (b"retry:  1", None),  # only one space is stripped
        ("retry: \uff13".encode(), None),  # a non-ASCII digit
        (b"retry: " + b"9" * 5000, None),  # beyond int()'s conversion limit
    ],
)
def test_retry_is_parsed_only_when_all_ascii_digits(line: bytes, retry: int | None) -> None:
    assert SSEDecoder().feed(line + b"\ndata: x\n\n") == [SSEEvent(data="x", retry=retry)]


def test_retry_is_carried_to_the_next_dispatched_event_only() -> None:
    data = b"retry: 5\n\ndata: a\n\ndata: b\n\n"
    assert decode_all(SSEDecoder(), [data]) == [SSEEvent(data="a", retry=5), SSEEvent(data="b")]


def test_multi_line_data_is_joined_with_lf() -> None:
    data = b"data: a\ndata\ndata:\ndata:  b\ndata:c:d\n\n"
    assert decode_all(SSEDecoder(), [data]) == [SSEEvent(data="a\n\n\n b\nc:d")]


def test_single_empty_data_line_is_dispatched() -> None:
    assert decode_all(SSEDecoder(), [b"data:\n\n"]) == [SSEEvent(data="")]


def test_event_without_data_is_not_dispatched_and_its_type_is_reset() -> None:
    data = b"event: ping\nid: 1\n\ndata: x\n\nevent:\ndata: y\n\n"
    assert decode_all(SSEDecoder(), [data]) == [
        SSEEvent(data="x", id="1"),
        SSEEvent(data="y", id="1"),
    ]


def test_id_persists_and_an_id_with_nul_is_ignored() -> None:
    data = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\0\ndata: c\n\nid\ndata: d\n\n"
    assert decode_all(SSEDecoder(), [data]) == [
        SSEEvent(data="a", id="1"),
        SSEEvent(data="b", id="1"),
        SSEEvent(data="c", id="1"),
        SSEEvent(data="d", id=""),
    ]


def test_unknown_fields_are_ignored_and_done_is_an_ordinary_event() -> None:
    data = b"foo: bar\nDATA: no\ndata: [DONE]\n\n"
    assert decode_all(SSEDecoder(), [data]) == [SSEEvent(data="[DONE]")]


def test_non_ascii_data_split_inside_a_character() -> None:
    data = "data: héllo 😀\n\n".encode()
    assert decode_all(SSEDecoder(), one_byte_at_a_time(data)) == [SSEEvent(data="héllo 😀")]


@pytest.mark.parametrize(
    "data",
    [
        b"data: \xff\n\n",
        b": \xff\n",
        b"x-\xff: y\n",
        b"event: \xc3\n",
        b"id: \xff\n",
        b"retry: \xff\n",
    ],
)
def test_sse_invalid_utf8_raises(data: bytes) -> None:
    decoder = SSEDecoder()
    with pytest.raises(FramingError, match="UTF-8"):
        decoder.feed(data)
    assert_stays_failed(decoder)


def test_sse_invalid_utf8_in_unterminated_last_line_raises_at_eof() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: \xff") == [SSEEvent(data="a")]
    with pytest.raises(FramingError):
        decoder.feed_eof()


# ---------------------------------------------------------------------------
# NDJSON specifics


def test_ndjson_blank_lines_are_skipped() -> None:
    data = b"\n\r\n \t\n1\n\n \r\n2\r\n \t"
    assert decode_all(NDJSONDecoder(), [data]) == [1, 2]


@pytest.mark.parametrize("data", [b"{\n", b"1 2\n", b"\xff\n", b'"\xff"\n', b"\x0b\n"])
def test_ndjson_invalid_line_raises(data: bytes) -> None:
    decoder = NDJSONDecoder()
    with pytest.raises(FramingError, match="invalid JSON"):
        decoder.feed(data)
    assert_stays_failed(decoder)


def test_ndjson_invalid_trailing_line_raises_at_eof() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"a":') == [{"a": 1}]
    with pytest.raises(FramingError):
        decoder.feed_eof()
    assert_stays_failed(decoder)
