"""Same-dialect passthrough: a Responses client in front of a Responses-capable backend.

Theory of operation: an ``openai`` backend with ``responses = true``
(OpenAI itself, vLLM, ...) serves ``/responses`` on its own, so
``/v1/responses`` forwards the client's body (as decoded on arrival, after
the strict parse every backend kind shares) with ``model`` rewritten to the
backend's name, and puts the client's name back in every ``response``
object of the answer.  The gateway keeps no conversation state
(docs/responses-compatibility.md, "No conversation state"), and OpenAI
stores a response unless told not to, so ``store: false`` is always sent.

Usage is read from the whole response's ``usage``, or from the ``response``
of the stream's terminal event (``response.completed``,
``response.incomplete``, ``response.failed``).  The stream is the one
stream base (flows/stream.py) with SSE on both sides, decoded and
re-encoded event by event, each named after its ``type``.  An ``error``
event passes through and ends the stream; a stream that breaks off ends
with a ``response.failed`` built from the last ``response`` object the
backend sent, numbered after its last event, as the translated stream does
(responses_over_chat/stream.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage, read_responses_usage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, UpstreamError
from ..flows.base import SSE_HEADERS, Plan, UpstreamCall, upstream_object
from ..flows.context import FlowContext
from ..flows.stream import TranslatedStream
from ..framing import SSEDecoder, SSEEvent
from ..over_chat.requests import OverChatRequest

__all__ = ["ResponseEvents", "ResponsesPassthroughFlow", "sse_named"]

_TERMINAL = frozenset(("response.completed", "response.incomplete"))


def sse_named(payload: dict[str, Any]) -> bytes:
    """One SSE event named after the payload's ``type``."""
    name = str(payload.get("type", "message")).encode()
    return b"".join((b"event: ", name, b"\ndata: ", orjson.dumps(payload), b"\n\n"))


class ResponsesPassthroughFlow:
    """One attempt at a Responses-capable backend; the flow itself
    translates a whole answer."""

    def __init__(self, context: FlowContext, request: OverChatRequest, model: str) -> None:
        self._model = model
        self._data = request.native
        self._stream = request.stream
        self._size = request.native_size
        self._usage: TokenUsage | None = None

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert route is not None
        body = {**self._data, "model": route.target, "store": False}
        encoded = orjson.dumps(body)
        if not self._stream:
            return UpstreamCall(method="POST", path="/responses", body=encoded, whole=self)
        stream = TranslatedStream(
            decoder=SSEDecoder(),
            records=ResponseEvents(self._model),
            encode=sse_named,
            headers=SSE_HEADERS,
            prompt_bytes=self._size,
        )
        return UpstreamCall(method="POST", path="/responses", body=encoded, stream=stream)

    def complete(self, body: bytes) -> bytes:
        answer = upstream_object(body)
        self._usage = read_responses_usage(answer.get("usage"))
        if "model" in answer:
            answer["model"] = self._model
        return orjson.dumps(answer)

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage(prompt_tokens=self._size // 4 + 1)


class ResponseEvents:
    """The stream base's per-record translator for a Responses stream."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._last: dict[str, Any] = {}  # the last ``response`` object seen
        self._next_seq = 0
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
        seq = event.get("sequence_number")
        if type(seq) is int:
            self._next_seq = seq + 1
        response = event.get("response")
        if type(response) is dict:
            if "model" in response:
                response["model"] = self._model
            self._last = response
            self.usage = read_responses_usage(response.get("usage")) or self.usage
        kind = event["type"]
        if kind in _TERMINAL:
            self.done = True
        elif kind in ("response.failed", "error"):
            self.failed = True
        return [event]

    def finish(self) -> list[dict[str, Any]]:
        return self.fail(UpstreamError("backend closed the stream before it finished"))

    def fail(self, error: GatewayError) -> list[dict[str, Any]]:
        self.failed = True
        code = "rate_limit_exceeded" if error.status_code == 429 else "server_error"
        response = {
            "object": "response",
            "model": self._model,
            "output": [],
            **self._last,
            "status": "failed",
            "error": {"code": code, "message": error.message},
        }
        return [
            {"type": "response.failed", "sequence_number": self._next_seq, "response": response}
        ]
