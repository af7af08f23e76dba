"""The one stream translator: decoder -> per-record translator -> encoder.

Theory of operation: every streamed answer, whichever way it goes (NDJSON
to SSE, SSE to NDJSON, or either format passed through), is the same
pipeline.  A framing decoder (:mod:`sansio_gateway.framing`) cuts upstream
bytes into records; a per-record translator (:class:`Records`) turns each
record into client payloads and says when the stream is over; an encoder
turns payloads into client bytes.  :class:`TranslatedStream` owns the one
machine of a client stream::

    STREAMING --records done--> DONE      (then the trailer, e.g. SSE's [DONE])
    STREAMING --records failed, framing error, upstream failure--> FAILED

Once DONE or FAILED, every call returns ``b""``: nothing follows the end
of a stream or its in-band error.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from ..accounting.usage import TokenUsage
from ..errors import GatewayError, UpstreamError
from ..framing import FramingError
from ..http import Headers

__all__ = ["Decoder", "Records", "TranslatedStream"]

R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)


class Decoder(Protocol[R]):
    def feed(self, data: bytes) -> list[R]: ...

    def feed_eof(self) -> list[R]: ...


class Records(Protocol[R_contra]):
    """Per record: the client payloads it calls for, in order."""

    @property
    def done(self) -> bool:
        """The upstream's last record was seen and answered."""

    @property
    def failed(self) -> bool:
        """An in-band error payload was returned; the stream is over."""

    @property
    def usage(self) -> TokenUsage | None: ...

    def feed(self, record: R_contra) -> list[Any]: ...

    def finish(self) -> list[Any]:
        """Upstream EOF: the last payloads (an error one unless done)."""

    def fail(self, error: GatewayError) -> list[Any]:
        """The in-band error payload, once."""


class _State(enum.Enum):
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"


class TranslatedStream(Generic[R]):
    """A :class:`~sansio_gateway.flows.base.StreamAnswer` built from its three parts."""

    def __init__(
        self,
        *,
        decoder: Decoder[R],
        records: Records[R],
        encode: Callable[[Any], bytes],
        headers: Headers,
        prompt_bytes: int,
        trailer: bytes = b"",
        count_error: bool = True,
        frame: Callable[[R], bytes | None] | None = None,
    ) -> None:
        self._decoder = decoder
        self._records = records
        self._encode = encode
        # The hot path of the common record, when the translator has one:
        # the client bytes of a record that makes exactly one payload,
        # already encoded (as ``encode(records.feed(record)[0])`` would be,
        # byte for byte), or None when the record needs ``records.feed``.
        self._frame = frame
        self._headers = headers
        self._prompt_bytes = prompt_bytes
        self._trailer = trailer  # sent after the last payload of a stream that is done
        # Whether the in-band error payload counts in the estimate: the
        # translators have always counted it, the OpenAI passthrough not.
        self._count_error = count_error
        self._state = _State.STREAMING
        self._payloads_out = 0

    @property
    def headers(self) -> Headers:
        return self._headers

    @property
    def done(self) -> bool:
        return self._state is not _State.STREAMING

    @property
    def failed(self) -> bool:
        return self._state is _State.FAILED

    @property
    def usage(self) -> TokenUsage | None:
        return self._records.usage

    def estimate_usage(self) -> TokenUsage:
        # Conservative stand-ins when the backend never reported counts: a
        # token is rarely shorter than 4 bytes of JSON, and each streamed
        # payload carries at least one token.
        return TokenUsage(
            prompt_tokens=self._prompt_bytes // 4 + 1, completion_tokens=self._payloads_out
        )

    def feed(self, data: bytes) -> bytes:
        if self._state is not _State.STREAMING:
            return b""
        try:
            records = self._decoder.feed(data)
        except FramingError as exc:
            return self.fail(UpstreamError(f"malformed stream from backend: {exc.reason}"))
        out: list[bytes] = []
        if len(records) == 1 and self._frame is not None:
            # Hot path: one record per chunk, framed by the translator's
            # hot path, which leaves it streaming: no end to check for.
            record = records[0]
            event = self._frame(record)
            if event is not None:
                self._payloads_out += 1
                return event
            # The translator is streaming (or this stream would not be).
            return self._send(out, self._encode_all(self._records.feed(record), out))
        return self._send(out, self._translate(records, out))

    def finish(self) -> bytes:
        if self._state is not _State.STREAMING:
            return b""
        out: list[bytes] = []
        try:
            count = self._translate(self._decoder.feed_eof(), out)
        except FramingError as exc:
            return self.fail(UpstreamError(f"malformed stream from backend: {exc.reason}"))
        if not (self._records.done or self._records.failed):
            count += self._encode_all(self._records.finish(), out)
        return self._send(out, count)

    def fail(self, error: GatewayError) -> bytes:
        if self._state is not _State.STREAMING:
            return b""
        out: list[bytes] = []
        return self._send(out, self._encode_all(self._records.fail(error), out))

    def _translate(self, records: list[R], out: list[bytes]) -> int:
        """Append the client bytes of ``records`` to ``out``; the number of
        payloads they make."""
        count = 0
        frame, translator = self._frame, self._records
        for record in records:
            if frame is not None:
                event = frame(record)
                if event is not None:  # hot path: one payload, encoded already
                    out.append(event)
                    count += 1
                    continue
            if translator.done or translator.failed:
                break  # nothing may follow the last record or an error
            count += self._encode_all(translator.feed(record), out)
        return count

    def _encode_all(self, payloads: list[Any], out: list[bytes]) -> int:
        encode = self._encode
        out += [encode(p) for p in payloads]
        return len(payloads)

    def _send(self, out: list[bytes], count: int) -> bytes:
        """The bytes of ``count`` payloads in ``out``, with the stream's end."""
        self._payloads_out += count
        records = self._records
        if records.failed:
            if count and not self._count_error:
                self._payloads_out -= 1  # the error payload is the last one
            self._state = _State.FAILED
        elif records.done:
            self._state = _State.DONE
            out.append(self._trailer)
        return b"".join(out)
