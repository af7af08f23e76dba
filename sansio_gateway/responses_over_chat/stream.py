"""A chat completion stream, said as the Responses event stream.

Theory of operation: :class:`ChatToResponsesStream` is fed
``chat.completion.chunk`` dicts and returns the SSE bytes of the Responses
events, each named after its ``type`` and numbered by ``sequence_number``
from 0:

* the first chunk opens the response: ``response.created`` and
  ``response.in_progress`` (status ``in_progress``, no output yet);
* reasoning, content and each tool call (by ``index``) are output items.
  Opening one sends ``response.output_item.added`` (and, for text,
  ``response.content_part.added``); its deltas are
  ``response.reasoning_text.delta``, ``response.output_text.delta`` and
  ``response.function_call_arguments.delta``; a change of kind closes it
  with the matching ``.done`` events and ``response.output_item.done``;
* :meth:`finish` closes the last item (``incomplete`` when the answer was
  cut at ``max_output_tokens``), adds an empty message when the answer had
  neither text nor calls -- as :func:`.response.chat_to_response` does --
  and sends ``response.completed`` (or ``response.incomplete``) carrying
  the whole response with usage.

:meth:`fail` closes the open item as ``incomplete`` and sends
``response.failed`` with the error and the items so far; a failed or
finished stream ignores further input.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..anthropic_over_chat.response import as_dict, reasoning_of, usage_of
from ..errors import GatewayError, UpstreamError
from ..wire.openai_responses import ResponsesRequest
from .response import (
    function_call_item,
    incomplete_reason,
    item_id,
    message_item,
    reasoning_item,
    response_object,
    text_part,
    usage_object,
)

__all__ = ["ChatToResponsesStream"]


class ChatToResponsesStream:
    """Chat chunks in, Responses SSE bytes out (``feed``/``finish``/``fail``)."""

    def __init__(self, req: ResponsesRequest, *, response_id: str, created_at: int) -> None:
        self._req = req
        self._id = response_id
        self._created_at = created_at
        self._seq = 0
        self._started = False
        self._items: list[dict[str, Any]] = []  # closed items, in output order
        self._kind = ""  # "reasoning", "message" or "tool:<chat index>"
        self._open: dict[str, Any] = {}  # the open item
        self._text: list[str] = []
        self._has_message = False
        self._has_calls = False
        self._finish: Any = None
        self._usage: TokenUsage | None = None
        self.done = False
        self.failed = False

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        if self.done or self.failed:
            return []
        out = self._start()
        usage = usage_of(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        choices = chunk.get("choices")
        if type(choices) is list and choices and type(choices[0]) is dict:
            choice = choices[0]
            if type(choice.get("delta")) is dict:
                out += self._delta(choice["delta"])
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
        return out

    def finish(self) -> list[bytes]:
        if self.done or self.failed:
            return []
        out = self._start()
        if self._finish is None:
            return out + self.fail(UpstreamError("the backend's stream ended before its answer"))
        incomplete = incomplete_reason(self._finish)
        status = "incomplete" if incomplete else "completed"
        if not self._has_message and not self._has_calls:
            out += self._into("message")
        out += self._close(status)
        kind = "response.incomplete" if incomplete else "response.completed"
        response = self._response(status, usage=usage_object(self._usage), incomplete=incomplete)
        out.append(self._event(kind, response=response))
        self.done = True
        return out

    def fail(self, error: GatewayError) -> list[bytes]:
        if self.done or self.failed:
            return []
        self.failed = True
        out = self._close("incomplete")  # what arrived of the open item stays readable
        code = "rate_limit_exceeded" if error.status_code == 429 else "server_error"
        failure = {"code": code, "message": error.message}
        response = self._response("failed", error=failure)
        return [*out, self._event("response.failed", response=response)]

    # -- internals ---------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"".join((b"event: ", kind.encode(), b"\ndata: ", orjson.dumps(payload), b"\n\n"))

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(self._req, response_id=self._id, created_at=self._created_at,
                               status=status, output=list(self._items), **extra)  # fmt: skip

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        response = self._response("in_progress")
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def _delta(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        reasoning = reasoning_of(delta)
        if reasoning:
            out += self._into("reasoning")
            out.append(self._event("response.reasoning_text.delta", **self._at(), delta=reasoning))
            self._text.append(reasoning)
        content = delta.get("content")
        if type(content) is str and content:
            out += self._into("message")
            out.append(self._event("response.output_text.delta", **self._at(), delta=content,
                                   logprobs=[]))  # fmt: skip
            self._text.append(content)
        calls = delta.get("tool_calls")
        for call in calls if type(calls) is list else ():
            out += self._tool_delta(as_dict(call))
        return out

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        function = as_dict(call.get("function"))
        out: list[bytes] = []
        kind = f"tool:{call.get('index', 0)}"
        if kind != self._kind:
            out += self._into(kind, call_id=str(call.get("id") or ""),
                              name=str(function.get("name") or ""))  # fmt: skip
        arguments = function.get("arguments")
        if type(arguments) is str and arguments:
            out.append(self._event("response.function_call_arguments.delta",
                                   item_id=self._open["id"], output_index=len(self._items),
                                   delta=arguments))  # fmt: skip
            self._text.append(arguments)
        return out

    def _at(self) -> dict[str, Any]:
        return {"item_id": self._open["id"], "output_index": len(self._items), "content_index": 0}

    def _into(self, kind: str, *, call_id: str = "", name: str = "") -> list[bytes]:
        """Open a ``kind`` item unless it is the open one."""
        if kind == self._kind:
            return []
        out = self._close("completed")
        index = len(self._items)
        self._kind, self._text = kind, []
        if kind == "reasoning":
            self._open = reasoning_item(item_id(self._id, "reasoning", index), "", "in_progress")
            part: dict[str, Any] | None = {"type": "reasoning_text", "text": ""}
        elif kind == "message":
            self._open = message_item(item_id(self._id, "message", index), None, "in_progress")
            part, self._has_message = text_part(""), True
        else:
            self._open = function_call_item(item_id(self._id, "function_call", index),
                                            call_id=call_id, name=name, arguments="",
                                            status="in_progress")  # fmt: skip
            part, self._has_calls = None, True
        out.append(self._event("response.output_item.added", output_index=index, item=self._open))
        if part is not None:
            out.append(self._event("response.content_part.added", **self._at(), part=part))
        return out

    def _close(self, status: str) -> list[bytes]:
        if not self._kind:
            return []
        text, at = "".join(self._text), self._at()
        out: list[bytes] = []
        if self._kind == "reasoning":
            item = reasoning_item(at["item_id"], text, status)
            part = {"type": "reasoning_text", "text": text}
            out.append(self._event("response.reasoning_text.done", **at, text=text))
            out.append(self._event("response.content_part.done", **at, part=part))
        elif self._kind == "message":
            item = message_item(at["item_id"], text, status)
            out.append(self._event("response.output_text.done", **at, text=text, logprobs=[]))
            out.append(self._event("response.content_part.done", **at, part=text_part(text)))
        else:
            item = {**self._open, "arguments": text, "status": status}
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                   output_index=at["output_index"], name=item["name"],
                                   arguments=text))  # fmt: skip
        out.append(self._event("response.output_item.done", output_index=at["output_index"],
                               item=item))  # fmt: skip
        self._items.append(item)
        self._kind, self._open = "", {}
        return out
