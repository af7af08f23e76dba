"""A chat completion stream, said as Anthropic's Messages event stream.

Theory of operation: :class:`ChatToMessagesStream` is fed the backend's (or
the Ollama translator's) ``chat.completion.chunk`` dicts, one at a time, and
returns the SSE bytes of Anthropic's events for each:

* the first chunk opens the message: ``message_start`` (usage zero: the
  counts arrive last) and one ``ping``, as Anthropic's own streams begin;
* reasoning, content and each tool call (by its ``index``) are content
  blocks: a change of kind closes the open block (``content_block_stop``)
  and opens the next (``content_block_start``); deltas are
  ``thinking_delta``, ``text_delta`` and ``input_json_delta``;
* the ``finish_reason`` and the usage chunk are remembered, and
  :meth:`finish` closes the last block and sends ``message_delta`` (stop
  reason, usage) and ``message_stop``.

A tool call's arguments must add up to a JSON object; when they do not,
the stream fails at that block's end, as the whole-answer translation
(:func:`.response.chat_to_message`) refuses the same answer.  :meth:`fail`
sends Anthropic's ``error`` event; a failed or finished stream then ignores
further input.  A stream that ends without a ``finish_reason`` was cut
short and fails.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..errors import GatewayError, UpstreamError
from ..wire.anthropic import anthropic_error_body
from .response import anthropic_usage, as_dict, reasoning_of, stop_reason, tool_input, usage_of

__all__ = ["ChatToMessagesStream", "sse_event"]

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def sse_event(payload: dict[str, Any]) -> bytes:
    """One named SSE event; Anthropic names each event after its ``type``."""
    name = payload["type"].encode()
    return b"".join((b"event: ", name, b"\ndata: ", orjson.dumps(payload), b"\n\n"))


class ChatToMessagesStream:
    """Chat chunks in, Anthropic SSE bytes out.

    ``feed(chunk)`` for each decoded chunk, then ``finish()`` at the
    backend's end of stream (``[DONE]`` or the Ollama translator's last
    chunk); ``fail(error)`` when the backend breaks off.  ``usage`` is the
    backend's count once its usage chunk arrived."""

    def __init__(self, *, model: str, message_id: str, stops: tuple[str, ...] = ()) -> None:
        self._model = model
        self._id = message_id
        self._stops = stops
        self._started = False
        self._block = -1  # index of the open block, -1 for none
        self._kind = ""  # "thinking", "text" or "tool:<chat index>"
        self._tool_name = ""
        self._arguments: list[str] = []
        self._finish: Any = None
        self._matched: Any = None
        self._usage: TokenUsage | None = None
        self.done = False
        self.failed = False

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def ping(self) -> list[bytes]:
        """A keep-alive ``ping`` (after the start only).  Nothing calls it yet:
        a timed keep-alive needs a timer result from the adapter
        (docs/anthropic-compatibility.md, "Pings")."""
        return [_PING] if self._started and not (self.done or self.failed) else []

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        if self.done or self.failed:
            return []
        out = self._start()
        usage = usage_of(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        choices = chunk.get("choices")
        if type(choices) is list and choices and type(choices[0]) is dict:
            try:
                out += self._choice(choices[0])
            except UpstreamError as exc:
                return out + self.fail(exc)
        return out

    def finish(self) -> list[bytes]:
        if self.done or self.failed:
            return []
        out = self._start()
        if self._finish is None:
            return out + self.fail(UpstreamError("the backend's stream ended before its answer"))
        try:
            out += self._close()
        except UpstreamError as exc:
            return out + self.fail(exc)
        reason, sequence = stop_reason(self._finish, self._matched, self._stops)
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out.append(sse_event(
            {"type": "message_delta", "delta": delta, "usage": anthropic_usage(self._usage)}
        ))  # fmt: skip
        out.append(sse_event({"type": "message_stop"}))
        self.done = True
        return out

    def fail(self, error: GatewayError) -> list[bytes]:
        if self.done or self.failed:
            return []
        self.failed = True
        return [sse_event(anthropic_error_body(error))]

    # -- internals ---------------------------------------------------------------

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [sse_event({"type": "message_start", "message": message}), _PING]

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        delta = choice.get("delta")
        if type(delta) is dict:
            out += self._delta(delta)
        if choice.get("finish_reason") is not None:
            self._finish = choice["finish_reason"]
            self._matched = choice.get("stop_reason")
        return out

    def _delta(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        thinking = reasoning_of(delta)
        if thinking:
            out += self._into("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append(self._delta_event({"type": "thinking_delta", "thinking": thinking}))
        content = delta.get("content")
        if type(content) is str and content:
            out += self._into("text", {"type": "text", "text": ""})
            out.append(self._delta_event({"type": "text_delta", "text": content}))
        calls = delta.get("tool_calls")
        for call in calls if type(calls) is list else ():
            out += self._tool_delta(as_dict(call))
        return out

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        function = as_dict(call.get("function"))
        kind = f"tool:{call.get('index', 0)}"
        out: list[bytes] = []
        if kind != self._kind:
            name = str(function.get("name") or "")
            block = {"type": "tool_use", "id": str(call.get("id") or ""), "name": name,
                     "input": {}}  # fmt: skip
            out += self._into(kind, block)
            self._tool_name = name
        arguments = function.get("arguments")
        if type(arguments) is str and arguments:
            self._arguments.append(arguments)
            out.append(self._delta_event({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def _into(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        """Open a ``kind`` block unless it is the open one."""
        if kind == self._kind:
            return []
        out = self._close()
        self._block += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        return [*out, sse_event(start)]

    def _close(self) -> list[bytes]:
        if not self._kind:
            return []
        if self._kind.startswith("tool:"):
            tool_input("".join(self._arguments), self._tool_name)  # raises when not an object
            self._arguments = []
        self._kind = ""
        return [sse_event({"type": "content_block_stop", "index": self._block})]

    def _delta_event(self, delta: dict[str, Any]) -> bytes:
        return sse_event({"type": "content_block_delta", "index": self._block, "delta": delta})
