"""Stream framing: SSE and NDJSON decoders and encoders.

Theory of operation
-------------------
The OpenAI-compatible API streams ``text/event-stream`` (SSE); Ollama's native
API streams ``application/x-ndjson``.  Both are line-oriented, so both
decoders sit on one bounded line splitter:

* ``feed(data)`` appends bytes and returns every record completed by them;
  ``feed_eof()`` ends the stream and returns whatever the end completes.
  Returning lists leaves no hidden queue to drain.
* Parsing is linear.  Only the new chunk is searched for line ends; bytes
  after the last line end wait in a bytearray for the next chunk, so no byte
  is scanned twice however the stream is cut.
* Every buffer is bounded: a line (even an unfinished one) longer than
  ``max_line_bytes``, or an SSE event whose data exceeds ``max_event_bytes``,
  raises :class:`FramingError`.
* A failed decoder stays failed, and a finished one stays finished: every
  later call raises :class:`FramingError`.  Records parsed *before* the fault
  in the same ``feed`` call are not lost: that call returns them and the
  error is raised by the next call ("deliver, then fail").  So the records a
  caller sees before the error are the same however the stream was chunked.

SSE follows WHATWG HTML 9.2.5 "Parsing an event stream" and 9.2.6
"Interpreting an event stream", as openai-python's ``SSEDecoder`` does, with
two deliberate differences: invalid UTF-8 raises :class:`FramingError`
instead of being replaced with U+FFFD (a corrupt upstream must not become
silently corrupt output), and ``retry`` is reported on the next dispatched
event instead of setting a reconnection timer (the gateway never reconnects).

The encoders produce the exact framing of docs/wire-notes.md, "Framing: NDJSON and SSE":
``data: <compact JSON>\\n\\n`` with ``data: [DONE]\\n\\n`` as terminator, and
one compact JSON value plus ``\\n`` per NDJSON line.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import orjson

__all__ = [
    "SSE_DONE",
    "FramingError",
    "NDJSONDecoder",
    "SSEDecoder",
    "SSEEvent",
    "encode_ndjson",
    "encode_sse",
    "encode_sse_json",
]

_T = TypeVar("_T")

_BOM: Final = b"\xef\xbb\xbf"
_LF: Final = 0x0A
_COLON: Final = 0x3A
_CLOSED: Final = "feed_eof() was already called; the decoder is finished"

SSE_DONE: Final[bytes] = b"data: [DONE]\n\n"


class FramingError(Exception):
    """The byte stream violates its framing (or a framing limit).

    ``reason`` is a human-readable description.  The decoder that raised it is
    failed for good.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class SSEEvent:
    """One dispatched server-sent event.

    ``data`` is the event's ``data`` lines joined with ``"\\n"``.  ``event`` is
    the ``event`` field, ``None`` when absent or empty (WHATWG then uses the
    default type "message").  ``id`` is the stream's *last event ID* when the
    event was dispatched: per WHATWG 9.2.6 it persists across events until
    another ``id`` field replaces it.  ``retry`` is the last valid ``retry``
    value seen since the previous dispatched event, if any.
    """

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


# ---------------------------------------------------------------------------
# Shared machinery


def _utf8(raw: bytes | memoryview) -> str:
    """Decode strictly; WHATWG would substitute U+FFFD, we refuse instead."""
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise FramingError(f"invalid UTF-8 in stream: {exc.reason}") from None


def _check_limit(name: str, value: int) -> int:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class _LineSplitter:
    """Bounded, resumable splitting of a byte stream into lines.

    Call :meth:`feed` with each chunk and iterate the lines it yields
    (terminators removed, errors raised in stream order); call :meth:`close`
    at EOF for the unterminated tail.
    """

    __slots__ = ("_buf", "_cr_ends_line", "_max", "_skip_lf")

    def __init__(self, max_line_bytes: int, *, cr_ends_line: bool) -> None:
        self._max = max_line_bytes
        self._cr_ends_line = cr_ends_line
        self._buf = bytearray()  # the unterminated tail: never holds a line end
        self._skip_lf = False  # the previous chunk ended with "\r"

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Yield the lines ``data`` completes; raise on an over-long line,
        finished or not, at its place in the stream."""
        block = self._take_complete(self._drop_split_lf(data))
        if block:
            if self._cr_ends_line and b"\r" in block:
                # "\r\n" first, so that the pair counts as one line end.
                block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            lines = block.split(b"\n")
            lines.pop()  # the block ends with a line end: the last piece is b""
            for line in lines:
                self._check(len(line))
                yield line
        self._check(len(self._buf))

    @property
    def buffered(self) -> bool:
        """Bytes of an unfinished line wait for the next chunk."""
        return bool(self._buf)

    @property
    def pending(self) -> bool:
        """An unfinished line waits, or a "\r" whose "\n" may follow."""
        return bool(self._buf) or self._skip_lf

    def close(self) -> bytes:
        """End of stream: return (and forget) the unterminated last line."""
        tail = bytes(self._buf)
        self._buf.clear()
        return tail

    def _drop_split_lf(self, data: bytes) -> bytes:
        # WHATWG 9.2.5: "\r\n" is one line end even when a chunk boundary
        # falls between the two bytes.
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == _LF:
                return data[1:]
        return data

    def _take_complete(self, data: bytes) -> bytes:
        """Return buffered bytes plus ``data`` up to its last line end, and
        keep the rest buffered.  Only ``data`` is searched: the buffer is known
        to hold no line end, so nothing is ever rescanned."""
        end = data.rfind(b"\n")
        if self._cr_ends_line and data:  # an empty chunk must not forget a pending "\r"
            end = max(end, data.rfind(b"\r"))
            self._skip_lf = data.endswith(b"\r")
        if end < 0:
            self._buf += data
            return b""
        if self._buf:
            block = b"".join((self._buf, memoryview(data)[: end + 1]))
            self._buf.clear()
        else:
            block = data[: end + 1]  # the whole chunk, uncopied, in the common case
        if end + 1 < len(data):
            self._buf += memoryview(data)[end + 1 :]
        return block

    def _check(self, length: int) -> None:
        if length > self._max:
            raise FramingError(f"line longer than max_line_bytes={self._max}")


class _Decoder(ABC, Generic[_T]):
    """The feed/feed_eof contract and the failure latch of both decoders."""

    __slots__ = ("_stopped",)

    def __init__(self) -> None:
        self._stopped: str | None = None  # why every further call must raise

    def feed(self, data: bytes) -> list[_T]:
        """Consume ``data``; return the records it completes, in order.

        Raises :class:`FramingError` on a framing fault, unless records were
        completed before the fault in this call: those are returned and the
        error is raised by the next call.  Call ``feed_eof()`` at the end.
        """
        out: list[_T] = []
        try:
            self._raise_if_stopped()
            self._consume(data, out)
        except FramingError as exc:
            self._stopped = exc.reason
            if not out:
                raise
        return out

    def feed_eof(self) -> list[_T]:
        """End the stream; return what the end completes.  Afterwards every
        call raises :class:`FramingError`."""
        self._raise_if_stopped()
        self._stopped = _CLOSED
        out: list[_T] = []
        try:
            self._finish(out)
        except FramingError as exc:
            self._stopped = exc.reason
            raise
        return out

    def _raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise FramingError(self._stopped)

    @abstractmethod
    def _consume(self, data: bytes, out: list[_T]) -> None:
        """Parse ``data``, appending completed records to ``out``."""

    @abstractmethod
    def _finish(self, out: list[_T]) -> None:
        """Handle end of stream, appending completed records to ``out``."""


# ---------------------------------------------------------------------------
# SSE


class SSEDecoder(_Decoder[SSEEvent]):
    """Incremental ``text/event-stream`` decoder (WHATWG HTML 9.2.5-9.2.6).

    Line ends are ``\\n``, ``\\r\\n`` or ``\\r``; a blank line dispatches the
    event if it has at least one ``data`` line; ``:`` starts a comment
    (keep-alive); unknown fields are ignored.  One leading UTF-8 BOM is
    skipped.  ``data: [DONE]`` is returned as an ordinary event.

    At EOF an unterminated last line still counts as a line (it is checked
    like any other, so invalid UTF-8 in it raises), but, per WHATWG, the event
    it belongs to is discarded because no blank line dispatched it: so
    ``feed_eof()`` always returns ``[]``.  A stream cut before its blank line
    is therefore visible only as a missing ``[DONE]``.
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_data_size",
        "_event",
        "_head",
        "_id",
        "_lines",
        "_max_event",
        "_retry",
        "_small_limit",
    )

    def __init__(self, *, max_line_bytes: int = 1 << 20, max_event_bytes: int = 8 << 20) -> None:
        super().__init__()
        self._lines = _LineSplitter(
            _check_limit("max_line_bytes", max_line_bytes), cr_ends_line=True
        )
        self._max_event = _check_limit("max_event_bytes", max_event_bytes)
        # An event block no longer than this is within both limits (its
        # line holds "data:" before the value).
        self._small_limit = min(max_line_bytes, max_event_bytes + 5)
        self._at_start = True  # still deciding whether the stream opens with a BOM
        self._head = b""  # up to two bytes that may be the start of a BOM
        self._data: list[str] = []
        self._data_size = 0  # WHATWG data buffer size in bytes: values plus one LF each
        self._event: str | None = None
        self._id: str | None = None  # the "last event ID buffer": never reset
        self._retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        # Hot path: an OpenAI-compatible backend writes whole events of one
        # ``data`` line each, ``data: <JSON>\n\n``, usually one per chunk.
        # When a chunk is only such events, with "\n" line ends, nothing
        # pending (no partial line or event, no unreported retry) and the
        # BOM question settled, the events are the data values: no line
        # loop.  Anything else takes the general path from the start:
        # nothing here has changed the decoder's state (but a first byte
        # that cannot start a BOM settles the BOM question, as it would).
        if self._at_start and not self._head and data[:1] not in (b"", _BOM[:1]):
            self._at_start = False
        if (
            data.endswith(b"\n\n")
            and self._stopped is None
            and not self._at_start
            and not self._data
            and self._event is None
            and self._retry is None
            and not self._lines.pending
            and b"\r" not in data
        ):
            events = self._whole_events(data)
            if events is not None:
                return events
        return super().feed(data)

    def _whole_events(self, data: bytes) -> list[SSEEvent] | None:
        """The events of ``data`` if each is one ``data`` line within the
        limits and valid UTF-8, else None."""
        blocks = data.split(b"\n\n")
        if blocks.pop():  # three or more line ends in a row at the end
            return None
        limit, last_id = self._small_limit, self._id
        out: list[SSEEvent] = []
        for block in blocks:
            if block[:5] != b"data:" or len(block) > limit or b"\n" in block:
                return None
            # WHATWG 9.2.6: one space after the colon is dropped.
            value = block[6:] if block[5:6] == b" " else block[5:]
            try:
                text = str(value, "utf-8")
            except UnicodeDecodeError:
                return None
            out.append(SSEEvent(data=text, event=None, id=last_id, retry=None))
        return out

    def _consume(self, data: bytes, out: list[SSEEvent]) -> None:
        if self._at_start:
            data = self._strip_bom(data)
        for line in self._lines.feed(data):
            self._line(line, out)

    def _finish(self, out: list[SSEEvent]) -> None:
        # A held-back BOM prefix holds no line end, so it is the whole tail.
        tail = self._head + self._lines.close()
        if tail:
            self._line(tail, out)  # a blank line cannot be unterminated: no dispatch

    def _strip_bom(self, data: bytes) -> bytes:
        # WHATWG 9.2.5 decodes with "UTF-8 decode", which drops one leading
        # BOM.  It may arrive split across chunks: hold back a proper prefix.
        head = self._head + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._at_start = False
        self._head = b""
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        # WHATWG 9.2.6: blank line -> dispatch; leading ":" -> comment;
        # otherwise "name[:[ ]value]", losing exactly one space after ":".
        if not line:
            self._dispatch(out)
            return
        colon = line.find(b":")
        if colon == 0:
            _utf8(line)  # a comment is ignored, but must still be valid UTF-8
        elif colon < 0:
            self._field(line, memoryview(b""))
        else:
            start = colon + 2 if line[colon + 1 : colon + 2] == b" " else colon + 1
            self._field(line[:colon], memoryview(line)[start:])

    def _field(self, name: bytes, value: memoryview) -> None:
        if name == b"data":
            self._add_data(value)
        elif name == b"event":
            self._event = _utf8(value)
        elif name == b"id":
            self._set_id(_utf8(value))
        elif name == b"retry":
            self._set_retry(value)
        else:  # unknown fields are ignored (WHATWG 9.2.6), once validated
            _utf8(name)
            _utf8(value)

    def _add_data(self, value: memoryview) -> None:
        # WHATWG appends value + LF and drops the final LF at dispatch, which
        # is "\n".join of the values; the limit applies to that buffer.
        self._data_size += len(value) + 1
        if self._data_size - 1 > self._max_event:
            raise FramingError(f"SSE event data exceeds max_event_bytes={self._max_event}")
        self._data.append(_utf8(value))

    def _set_id(self, value: str) -> None:
        # WHATWG 9.2.6: an id containing NULL is ignored (it could not be sent
        # back in a Last-Event-ID header).
        if "\0" not in value:
            self._id = value

    def _set_retry(self, value: memoryview) -> None:
        # WHATWG 9.2.6: only a value of ASCII digits counts (bytes.isdigit()
        # is ASCII-only); anything else is ignored, once validated.
        raw = value.tobytes()
        if not raw.isdigit():
            _utf8(raw)
            return
        # int() refuses absurdly long numbers (the int/str conversion limit).
        with contextlib.suppress(ValueError):
            self._retry = int(raw)

    def _dispatch(self, out: list[SSEEvent]) -> None:
        # WHATWG 9.2.6 "dispatch the event": with no data the event is not
        # dispatched, but the event type is reset all the same.  (openai-python
        # also yields data-less events that carry event/id/retry; we don't.)
        if self._data:
            data = "\n".join(self._data)
            out.append(
                SSEEvent(data=data, event=self._event or None, id=self._id, retry=self._retry)
            )
            self._data = []
            self._data_size = 0
            self._retry = None
        self._event = None


# ---------------------------------------------------------------------------
# NDJSON


class NDJSONDecoder(_Decoder[Any]):
    """Incremental ``application/x-ndjson`` decoder: one JSON value per line.

    Lines end with ``\\n`` (a ``\\r`` before it is JSON whitespace).  Blank
    and whitespace-only lines are skipped; any other line that is not one
    valid JSON value raises :class:`FramingError`.  At EOF a last line
    without ``\\n`` is parsed like any other.
    """

    __slots__ = ("_lines", "_max")

    def __init__(self, *, max_line_bytes: int = 1 << 20) -> None:
        super().__init__()
        self._max = _check_limit("max_line_bytes", max_line_bytes)
        self._lines = _LineSplitter(self._max, cr_ends_line=False)

    def feed(self, data: bytes) -> list[Any]:
        # Hot path: Ollama writes each line as its own chunk, so a chunk is
        # usually whole lines, nothing is buffered, and every line is JSON.
        # Then the records are just the parsed lines, with no splitter or
        # failure latch to go through.  Anything else (a partial line, a
        # blank or bad line, an over-long one) takes the general path from
        # the start: nothing here has changed the decoder's state.
        if data.endswith(b"\n") and self._stopped is None and not self._lines.buffered:
            loads, limit = orjson.loads, self._max
            try:
                if data.find(b"\n") == len(data) - 1:  # one line ("\n" is JSON whitespace)
                    if len(data) <= limit:
                        return [loads(data)]
                else:
                    lines = data.split(b"\n")
                    lines.pop()  # the chunk ends with a line end: the last piece is b""
                    if len(data) <= limit or max(map(len, lines)) <= limit:
                        return [loads(line) for line in lines]
            except orjson.JSONDecodeError:
                pass
        return super().feed(data)

    def _consume(self, data: bytes, out: list[Any]) -> None:
        for line in self._lines.feed(data):
            if line:
                _append_json_line(line, out)

    def _finish(self, out: list[Any]) -> None:
        tail = self._lines.close()
        if tail:
            _append_json_line(tail, out)


def _append_json_line(line: bytes, out: list[Any]) -> None:
    """Parse one line into ``out``.  Parse first and look for blankness only
    on failure: blank lines are rare on the wire."""
    try:
        out.append(orjson.loads(line))
    except orjson.JSONDecodeError as exc:
        if line.strip(b" \t\r"):  # not just JSON whitespace: a real error
            raise FramingError(f"invalid JSON in NDJSON line: {exc}") from None


# ---------------------------------------------------------------------------
# Encoders


def encode_sse(payload: bytes) -> bytes:
    """Frame one single-line payload (compact JSON) as an SSE ``data`` event.

    A line end inside ``payload`` would split the event: that is a caller
    bug, reported as ``ValueError``.
    """
    if b"\n" in payload or b"\r" in payload:
        raise ValueError("SSE payload must be a single line")
    return b"".join((b"data: ", payload, b"\n\n"))


def encode_sse_json(obj: Any) -> bytes:
    """``encode_sse(orjson.dumps(obj))``; compact orjson output never holds a
    raw line end, so the check is skipped.  Unserializable input raises
    ``orjson.JSONEncodeError`` (a ``TypeError``)."""
    return b"".join((b"data: ", orjson.dumps(obj), b"\n\n"))


def encode_ndjson(obj: Any) -> bytes:
    """One NDJSON line: compact JSON plus ``\\n``, in a single allocation."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
