"""Same-dialect passthrough: an Anthropic client in front of an Anthropic-compatible backend.

Theory of operation: a backend of ``kind = "anthropic"`` speaks the
Messages API itself, so ``/v1/messages`` and ``/v1/messages/count_tokens``
forward the client's body (as decoded on arrival, after the strict parse
every backend kind shares) with only ``model`` rewritten to the backend's
name for it, and put the client's name back in the answer.  The backend's
headers (``x-api-key``, ``anthropic-version``) come from the registry's
kind (backends/registry.py); the client's ``anthropic-beta`` and
``anthropic-version``, which the route forwards (routes.py), go with them,
the client's version replacing the kind's default.  An error answer is
mapped like any backend's and rendered in Anthropic's envelope by the
Exchange.

Usage is read where Anthropic reports it: a whole message's ``usage``; in a
stream, ``message_start``'s ``message.usage`` (the input side, cache reads
and writes included) and ``message_delta``'s cumulative ``usage`` (the
output side; newer servers repeat the input side there too).  The stream
is the one stream base (flows/stream.py) with SSE on both sides, decoded
and re-encoded event by event, each named after its ``type``:
``message_stop`` ends it, an ``error`` event passes through and ends it,
``ping`` and event types the gateway does not know pass through, and a
stream that ends before ``message_stop`` gets Anthropic's ``error`` event.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage, read_anthropic_usage
from ..anthropic_over_chat.stream import sse_event
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, UpstreamError
from ..flows.base import SSE_HEADERS, Plan, UpstreamCall, upstream_object
from ..flows.context import FlowContext
from ..flows.stream import TranslatedStream
from ..framing import SSEDecoder, SSEEvent
from ..over_chat.requests import CountTokensRequest, OverChatRequest
from ..wire.anthropic import anthropic_error_body

__all__ = ["AnthropicPassthroughFlow", "MessageEvents"]


class AnthropicPassthroughFlow:
    """One attempt at an Anthropic-compatible backend (``/v1/messages`` or
    ``count_tokens``); the flow itself translates a whole answer."""

    def __init__(
        self, context: FlowContext, request: OverChatRequest | CountTokensRequest, model: str
    ) -> None:
        self._model = model
        self._data = request.native
        self._headers = context.forwarded
        if isinstance(request, CountTokensRequest):
            self._path, self._stream, self._size = "/messages/count_tokens", False, request.size
        else:
            self._path, self._stream = "/messages", request.stream
            self._size = request.native_size
        self._counting = isinstance(request, CountTokensRequest)
        self._usage: TokenUsage | None = None

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert route is not None
        body = {**self._data, "model": route.target}
        encoded = orjson.dumps(body)
        if not self._stream:
            return UpstreamCall(
                method="POST", path=self._path, body=encoded, whole=self, headers=self._headers
            )
        stream = TranslatedStream(
            decoder=SSEDecoder(),
            records=MessageEvents(self._model),
            encode=sse_event,
            headers=SSE_HEADERS,
            prompt_bytes=self._size,
        )
        return UpstreamCall(
            method="POST", path=self._path, body=encoded, stream=stream, headers=self._headers
        )

    # ---- whole answers ---------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        answer = upstream_object(body)
        if self._counting:
            # Counting generates nothing: the request reached a backend, so
            # it is recorded, with no tokens.
            self._usage = TokenUsage()
            return orjson.dumps(answer)
        self._usage = read_anthropic_usage(answer.get("usage"))
        if "model" in answer:
            answer["model"] = self._model
        return orjson.dumps(answer)

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        if self._counting:
            return TokenUsage()
        return TokenUsage(prompt_tokens=self._size // 4 + 1)


class MessageEvents:
    """The stream base's per-record translator: each Anthropic event passes
    with ``model`` put back and its usage read; ``message_stop`` or an
    ``error`` event ends the stream."""

    def __init__(self, model: str) -> None:
        self._model = model
        self.done = False
        self.failed = False
        self.usage: TokenUsage | None = None

    def feed(self, record: SSEEvent) -> list[dict[str, Any]]:
        try:
            event = orjson.loads(record.data)
        except orjson.JSONDecodeError:
            return self.fail(UpstreamError("backend sent an event that is not JSON"))
        if type(event) is not dict or type(event.get("type")) is not str:
            return self.fail(UpstreamError("backend sent an unexpected event"))
        kind = event["type"]
        if kind == "message_start":
            message = event.get("message")
            if type(message) is dict:
                self.usage = read_anthropic_usage(message.get("usage")) or self.usage
                if "model" in message:
                    message["model"] = self._model
        elif kind == "message_delta":
            self.usage = read_anthropic_usage(event.get("usage"), prior=self.usage) or self.usage
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.failed = True
        return [event]

    def finish(self) -> list[dict[str, Any]]:
        return self.fail(UpstreamError("backend closed the stream before it finished"))

    def fail(self, error: GatewayError) -> list[dict[str, Any]]:
        self.failed = True
        return [anthropic_error_body(error)]
