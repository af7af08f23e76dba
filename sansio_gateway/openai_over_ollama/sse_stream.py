"""The stream half of a /v1 flow over Ollama: NDJSON in, SSE out.

Both ``/v1/chat/completions`` and ``/v1/completions`` over Ollama decode
the native NDJSON stream, feed each line to their translator (an
``OllamaChatStream`` or ``OllamaCompletionStream``), encode the payloads as
SSE events, and close with ``data: [DONE]`` once the translator is done
and not failed.  :class:`NdjsonToSseStream` is that glue, with the
accounting both share; the flows set ``_stream`` (the translator) and
``_decoder`` in ``plan``.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from ..accounting.usage import TokenUsage
from ..errors import GatewayError, UpstreamError
from ..flows.base import SSE_HEADERS
from ..framing import SSE_DONE, FramingError, NDJSONDecoder, encode_sse_json
from ..http import Headers

__all__ = ["NdjsonToSseStream", "StreamTranslator"]


class StreamTranslator(Protocol):
    @property
    def done(self) -> bool: ...

    @property
    def failed(self) -> bool: ...

    @property
    def usage(self) -> TokenUsage | None: ...

    def feed(self, line: Any) -> list[dict[str, Any]]: ...

    def finish(self) -> list[dict[str, Any]]: ...

    def fail(self, error: GatewayError) -> list[dict[str, Any]]: ...


T = TypeVar("T", bound=StreamTranslator)


class NdjsonToSseStream(Generic[T]):
    def _reset_stream_state(self, body: bytes) -> None:
        """Called by the flow's constructor."""
        self._stream: T | None = None
        self._decoder: NDJSONDecoder | None = None
        self._usage: TokenUsage | None = None  # from a whole (non-stream) answer
        self._chunks_out = 0
        self._prompt_bytes = len(body)

    @property
    def usage(self) -> TokenUsage | None:
        if self._stream is not None:
            return self._stream.usage
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        # Conservative stand-ins when the backend never reported counts: a
        # token is rarely shorter than 4 bytes of JSON, and each streamed
        # chunk carries at least one token.
        return TokenUsage(
            prompt_tokens=self._prompt_bytes // 4 + 1, completion_tokens=self._chunks_out
        )

    def stream_headers(self) -> Headers:
        return SSE_HEADERS

    def _encode(self, payloads: list[dict[str, Any]]) -> bytes:
        assert self._stream is not None
        out = b"".join([encode_sse_json(p) for p in payloads])
        self._chunks_out += len(payloads)
        if self._stream.done and not self._stream.failed:
            out += SSE_DONE
        return out

    def feed(self, data: bytes) -> bytes:
        assert self._stream is not None and self._decoder is not None
        try:
            lines = self._decoder.feed(data)
        except FramingError as exc:
            return self.fail(UpstreamError(f"malformed stream from backend: {exc.reason}"))
        stream = self._stream
        payloads: list[dict[str, Any]] = []
        for line in lines:
            payloads += stream.feed(line)
        return self._encode(payloads) if payloads else b""

    def finish(self) -> bytes:
        assert self._stream is not None and self._decoder is not None
        payloads: list[dict[str, Any]] = []
        try:
            for line in self._decoder.feed_eof():
                payloads += self._stream.feed(line)
        except FramingError as exc:
            return self.fail(UpstreamError(f"malformed stream from backend: {exc.reason}"))
        payloads += self._stream.finish()
        return self._encode(payloads) if payloads else b""

    def fail(self, error: GatewayError) -> bytes:
        assert self._stream is not None
        return self._encode(self._stream.fail(error))

    @property
    def stream_done(self) -> bool:
        stream = self._stream
        return stream is not None and (stream.done or stream.failed)

    @property
    def stream_failed(self) -> bool:
        return self._stream is not None and self._stream.failed
