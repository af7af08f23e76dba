"""HTTP/1.1 pieces of the fast upstream client that skip h11 on the hot path.

Theory of operation: h11 stays the reference parser and the fallback.  Its
per-event state machine costs about 6 µs for each HTTP chunk of a backend's
stream, more than everything else the client does per chunk (the profile in
docs/architecture.md, "The fast transport").  When httptools (llhttp, in C;
the ``fast`` extra) is installed, :class:`ParsedResponse` reads the backend's
response instead, at a fraction of a microsecond per chunk; without it
:data:`HTTPTOOLS` is False and the client uses h11 throughout.

- :func:`request_bytes` writes a request head and body the way h11 would,
  refusing what h11 refuses on the way out (a CR, LF or NUL in a header, a
  method or name that is not a token, a target that is not visible ASCII),
  with the same exceptions.
- :class:`ParsedResponse` is fed the bytes of one response and collects its
  head, the body pieces of the last feed (joined, since every stream decoder
  of the core is chunking-invariant), and its end.  1xx responses are
  skipped, as h11 reports them apart.  A body without a length ends at EOF
  (:meth:`ParsedResponse.feed_eof`); any other EOF before the end is the
  backend's fault.  Bytes after the end (a talker) make the connection
  unfit for reuse.
- :class:`RequestReader` reads a client's requests for the fast server: the
  heads h11 would read the same way (HTTP/1.1, a Content-Length body or
  none, no Expect, no Transfer-Encoding, no Upgrade, one Host, the exact
  grammar of h11's head, matched by one regular expression) are split at
  their delimiters, with no parser built per head; for anything else it answers
  :data:`USE_H11` and the server hands the same bytes to h11, so every
  refusal and every rarer feature (HTTP/1.0, 100-continue, chunked request
  bodies, folded lines) keeps h11's behaviour exactly.
- :func:`response_head` writes a response head as h11 would for such a
  request, with h11's checks and framing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import h11

from .upstream_pool import ConnectionLost

try:
    import httptools
except ImportError:  # the `fast` extra is optional: h11 parses instead
    httptools = None  # type: ignore[assignment]

__all__ = [
    "HTTPTOOLS",
    "NEED_DATA",
    "USE_H11",
    "Marker",
    "ParsedResponse",
    "RequestHead",
    "RequestReader",
    "request_bytes",
    "response_head",
]

HTTPTOOLS: bool = httptools is not None

# RFC 9110 5.6.2 token; field values may hold neither CR, LF nor NUL (5.5).
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_TARGET = re.compile(rb"[\x21-\x7e]+")  # visible ASCII, as h11's request-target check


def request_bytes(
    method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """The request as HTTP/1.1 bytes; ``headers`` carries host and framing."""
    method_b, target_b = method.encode("ascii"), target.encode("ascii")
    if not _TOKEN.fullmatch(method_b) or not _TARGET.fullmatch(target_b):
        raise h11.LocalProtocolError("illegal request line")
    head = [b"%s %s HTTP/1.1" % (method_b, target_b)]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise h11.LocalProtocolError(f"illegal header {name!r}")
        head.append(name + b": " + value)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class ParsedResponse:
    """One backend response read by httptools; see the module docstring."""

    __slots__ = (
        "_informational",
        "_parser",
        "_pieces",
        "complete",
        "extra",
        "head_done",
        "headers",
        "keep_alive",
        "status",
        "until_eof",
    )

    def __init__(self) -> None:
        assert httptools is not None
        self._parser: Any = httptools.HttpResponseParser(self)
        self._pieces: list[bytes] = []
        self._informational = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.until_eof = False
        self.keep_alive = False
        self.extra = False  # bytes past the end of the response

    def feed(self, data: bytes) -> None:
        """Parse ``data``; raises ConnectionLost on a broken exchange."""
        if self.extra:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:
                self.extra = True  # garbage after the end: only reuse is off
                return
            raise ConnectionLost(f"the backend broke the HTTP exchange: {exc}") from None

    def feed_eof(self) -> None:
        """The backend closed: the end of a body without a length, else a fault."""
        if self.head_done and not self.complete and self.until_eof:
            self.complete = True
            self.keep_alive = False
            return
        if not self.complete:
            raise ConnectionLost("the backend closed the connection")

    def close(self) -> None:
        """Done with this response: the parser holds this object's bound
        methods, a reference cycle that only the cyclic GC would free;
        letting go of it here frees both at once.  (That garbage, a parser
        and seven other objects a request, set off most of the GC's runs.)"""
        self._parser = None

    def take_body(self) -> bytes:
        """The body bytes parsed since the last call (b"" if none)."""
        pieces = self._pieces
        if not pieces:
            return b""
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        return data

    # ---- httptools' callbacks ------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.head_done:
            return
        status = self._parser.get_status_code()
        if status < 200:
            self._informational = True
            self.headers = []
            return
        self.status = status
        self.head_done = True
        self.keep_alive = bool(self._parser.should_keep_alive())
        chunked = any(
            n == b"transfer-encoding" and b"chunked" in v.lower() for n, v in self.headers
        )
        has_length = any(n == b"content-length" for n, _ in self.headers)
        self.until_eof = not chunked and not has_length and status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self._pieces.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        elif self.head_done:
            self.complete = True


# ---- the server side: client requests -----------------------------------------

# h11's own grammar (h11/_abnf.py), restricted to HTTP/1.1 and CRLF endings:
# a head this matches is one h11 reads without complaint, up to the checks
# on Host, Content-Length and Transfer-Encoding made in _split_head.
_FIELD_CONTENT = rb"[^\x00\s]+(?:[ \t]+[^\x00\s]+)*"
_TOKEN_RE = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_HEAD = re.compile(
    rb"%s [\x21-\x7e]+ HTTP/1\.1\r\n(?:%s:[ \t]*(?:%s)?[ \t]*\r\n)*\r\n"
    % (_TOKEN_RE, _TOKEN_RE, _FIELD_CONTENT)
)
_DIGITS = re.compile(rb"[0-9]+")


class Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA: Final = Marker("NEED_DATA")
USE_H11: Final = Marker("USE_H11")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request head as h11 reports it (names lower-cased, values stripped)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    length: int  # of the body that follows
    keep_alive: bool  # h11's _keep_alive: no "close" in Connection


def _split_head(head: bytes) -> RequestHead | None:
    """``head`` (through its blank line) parsed, or None to let h11 decide."""
    if _HEAD.fullmatch(head) is None:
        return None
    # _HEAD is h11's grammar: what it matched splits at its delimiters, with
    # no parser to build (an httptools parser per head cost three times this).
    line_end = head.index(b"\r\n")
    method, target, _ = head[:line_end].split(b" ", 2)
    fields = []
    for line in head[line_end + 2 : -4].split(b"\r\n"):
        name, _, value = line.partition(b":")
        fields.append((name.lower(), value.strip(b" \t")))
    hosts = 0
    length = 0
    lengths = 0
    keep_alive = True
    for name, value in fields:
        if name == b"host":
            hosts += 1
        elif name == b"content-length":
            # h11 merges equal repeated lengths and refuses others: h11 says which.
            if lengths or _DIGITS.fullmatch(value) is None:
                return None
            lengths = 1
            length = int(value)
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
        elif name == b"connection" and b"close" in _comma_tokens(value):
            keep_alive = False
    if hosts != 1:
        return None
    return RequestHead(method, target, fields, length, keep_alive)


class RequestReader:
    """A client's byte stream, cut into request heads and body pieces.

    :meth:`next_head` answers a :class:`RequestHead`, :data:`NEED_DATA`, or
    :data:`USE_H11` (every byte not yet taken is then h11's to read);
    :meth:`next_body` answers the next piece of the body, None at its end,
    or :data:`NEED_DATA`.
    """

    __slots__ = ("body_left", "buf", "max_head_bytes")

    def __init__(self, max_head_bytes: int) -> None:
        self.buf = bytearray()
        self.body_left = 0
        self.max_head_bytes = max_head_bytes

    def next_head(self) -> RequestHead | Marker:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            # h11 ends a head at a bare LF too, and refuses one past the size limit.
            if len(buf) > self.max_head_bytes or buf.count(b"\n") != buf.count(b"\r\n"):
                return USE_H11
            return NEED_DATA
        end += 4
        head = bytes(buf[:end])
        if head.count(b"\n") != head.count(b"\r\n"):
            return USE_H11
        parsed = _split_head(head)
        if parsed is None:
            return USE_H11
        del buf[:end]
        self.body_left = parsed.length
        return parsed

    def next_body(self) -> bytes | Marker | None:
        left = self.body_left
        if not left:
            return None
        buf = self.buf
        if not buf:
            return NEED_DATA
        if len(buf) <= left:
            piece = bytes(buf)
            buf.clear()
        else:
            piece = bytes(buf[:left])
            del buf[:left]
        self.body_left = left - len(piece)
        return piece


def response_head(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    head_request: bool,
    keep_alive: bool,
) -> tuple[bytes, int | None, bool]:
    """The head h11 writes for this response to an HTTP/1.1 request; with the
    body's length (None: chunked) and whether the connection stays open.
    Raises h11.LocalProtocolError where h11 would."""
    lean = _lean_head(status, reason, headers, head_request) if keep_alive else None
    if lean is not None:
        return lean
    # h11 validates and normalizes through its own event: the same checks.
    response = h11.Response(status_code=status, headers=headers, reason=reason)
    raw = response.headers.raw_items()
    names = [name.lower() for name, _ in raw]
    # h11 chooses the framing headers as for a GET, even for a HEAD: a body
    # of unknown length becomes chunked (the client speaks HTTP/1.1).
    if status not in (204, 304) and (
        b"transfer-encoding" in names or b"content-length" not in names
    ):
        raw = [(n, v) for n, v in raw if n.lower() not in (b"content-length", b"transfer-encoding")]
        raw.append((b"Transfer-Encoding", b"chunked"))
        names = [name.lower() for name, _ in raw]
    length: int | None
    if status in (204, 304) or head_request:
        length = 0
    elif b"transfer-encoding" in names:
        length = None
    else:
        length = int(raw[names.index(b"content-length")][1].split(b",")[0])
    if not keep_alive:
        tokens = {t for n, v in raw if n.lower() == b"connection" for t in _comma_tokens(v)}
        tokens.discard(b"keep-alive")
        tokens.add(b"close")
        raw = [(n, v) for n, v in raw if n.lower() != b"connection"]
        raw += [(b"Connection", t) for t in sorted(tokens)]
    elif any(n.lower() == b"connection" and b"close" in _comma_tokens(v) for n, v in raw):
        keep_alive = False
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, response.reason)]
    lines += [b"%s: %s\r\n" % (n, v) for n, v in raw]
    lines.append(b"\r\n")
    return b"".join(lines), length, keep_alive


# h11's own grammar for field values (h11._abnf.field_value).
_FIELD_VALUE = re.compile(rb"([^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
# Headers whose handling the lean path leaves to h11.
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))


def _lean_head(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]], head_request: bool
) -> tuple[bytes, int | None, bool] | None:
    """The common response head without building h11's event (a third of the
    head's cost): the same bytes, or None for anything h11 must decide --
    a header it would refuse or rewrite, framing headers but one plain
    Content-Length, a status without a body, a connection that closes."""
    if not 200 <= status <= 999 or status in (204, 304):
        return None
    length: int | None = None
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
            return None
        lower = name.lower()
        if lower in _FRAMING:
            if lower != b"content-length" or length is not None:
                return None
            if _DIGITS.fullmatch(value) is None:
                return None
            length = int(value)
        lines.append(b"%s: %s\r\n" % (name, value))
    if length is None:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    lines.append(b"\r\n")
    return b"".join(lines), 0 if head_request else length, True


def _comma_tokens(value: bytes) -> list[bytes]:
    # h11's get_comma_header: lower-cased, split on commas, stripped, no empties.
    return [t for t in (part.strip(b" \t").lower() for part in value.split(b",")) if t]
