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
"""

from __future__ import annotations

import re
from typing import Any

import h11

from .upstream_pool import ConnectionLost

try:
    import httptools
except ImportError:  # the `fast` extra is optional: h11 parses instead
    httptools = None  # type: ignore[assignment]

__all__ = ["HTTPTOOLS", "ParsedResponse", "request_bytes"]

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
