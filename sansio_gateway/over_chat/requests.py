"""The typed requests of the surfaces served over the chat dialect, and their stages.

Theory of operation: ``/v1/messages`` and ``/v1/responses`` are parsed once,
strictly, in their own dialect (wire/anthropic.py, wire/openai_responses.py),
then translated to a Chat Completions body and parsed again as one
(``parse_chat_request``).  The route's typed request, :class:`OverChatRequest`,
carries both: the chat request is what every backend kind is sent (so the
chat flows serve it), and ``decoded`` is the *chat* body, so admission charges
the prompt as the backend will see it and reads the output cap where the
chat dialect puts it (docs/rate-limiting.md, "What is charged").

A *stage* is the last step of the answer: a whole ``chat.completion`` or a
stream of chat chunks, said in the client's dialect.  It needs the request
id and the time, which the flow's context holds, so the flow builds it
(:func:`stage_for`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..accounting.usage import TokenUsage
from ..anthropic_over_chat.request import messages_to_chat_body
from ..anthropic_over_chat.response import chat_to_message
from ..anthropic_over_chat.stream import ChatToMessagesStream
from ..errors import GatewayError
from ..flows.context import FlowContext
from ..responses_over_chat.request import responses_to_chat_body
from ..responses_over_chat.response import chat_to_response
from ..responses_over_chat.stream import ChatToResponsesStream
from ..wire import anthropic, openai_responses
from ..wire.anthropic import MessagesRequest
from ..wire.openai_chat import ChatRequest, parse_chat_request
from ..wire.openai_responses import ResponsesRequest

__all__ = [
    "CountTokensRequest",
    "OverChatRequest",
    "Stage",
    "StageStream",
    "parse_count_tokens_route",
    "parse_messages_route",
    "parse_responses_route",
    "stage_for",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class OverChatRequest:
    """A Messages or Responses request and the chat request it became."""

    original: MessagesRequest | ResponsesRequest
    chat: ChatRequest
    # The client's body as decoded on arrival, and its size: what a backend
    # of the client's own dialect is sent (passthrough/anthropic.py,
    # passthrough/responses.py), the model aside.
    native: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    native_size: int = 0

    @property
    def model(self) -> str:
        return self.original.model

    @property
    def decoded(self) -> dict[str, Any]:
        return self.chat.decoded

    @property
    def size(self) -> int:
        return self.chat.size

    @property
    def stream(self) -> bool:
        return self.chat.stream


def parse_messages_route(body: bytes) -> OverChatRequest:
    """``POST /v1/messages``: raises :class:`InvalidRequest` in Anthropic's terms."""
    native = anthropic.load_body(body)
    original = anthropic.messages_request_from(native)
    chat = parse_chat_request(orjson.dumps(messages_to_chat_body(original)))
    return OverChatRequest(original=original, chat=chat, native=native, native_size=len(body))


def parse_responses_route(body: bytes) -> OverChatRequest:
    """``POST /v1/responses``."""
    native = openai_responses.load_body(body)
    original = openai_responses.responses_request_from(native)
    chat = parse_chat_request(orjson.dumps(responses_to_chat_body(original)))
    return OverChatRequest(original=original, chat=chat, native=native, native_size=len(body))


@dataclass(frozen=True, slots=True, kw_only=True)
class CountTokensRequest:
    """A ``count_tokens`` request: counted by the gateway's estimate, or
    forwarded to an Anthropic-compatible backend as the client sent it."""

    original: MessagesRequest
    native: dict[str, Any] = field(compare=False, repr=False)
    size: int = 0

    @property
    def model(self) -> str:
        return self.original.model

    @property
    def decoded(self) -> dict[str, Any]:
        return self.native


def parse_count_tokens_route(body: bytes) -> CountTokensRequest:
    """``POST /v1/messages/count_tokens``: model-addressed, so an unknown
    model refreshes the catalogue as on every other route, and a backend
    of Anthropic's own kind counts with its tokenizer."""
    native = anthropic.load_body(body)
    original = anthropic.count_tokens_request_from(native)
    return CountTokensRequest(original=original, native=native, size=len(body))


class StageStream(Protocol):
    """Chat chunks in, the client's SSE bytes out (the translators in
    anthropic_over_chat/stream.py and responses_over_chat/stream.py)."""

    done: bool
    failed: bool

    @property
    def usage(self) -> TokenUsage | None: ...

    def feed(self, chunk: dict[str, Any]) -> list[bytes]: ...

    def finish(self) -> list[bytes]: ...

    def fail(self, error: GatewayError) -> list[bytes]: ...


class Stage(Protocol):
    def whole(self, completion: dict[str, Any]) -> dict[str, Any]:
        """A whole ``chat.completion`` -> the client's answer."""

    def stream(self) -> StageStream:
        """A fresh stream translator for one attempt."""


@dataclass(frozen=True, slots=True)
class _MessagesStage:
    request: MessagesRequest
    message_id: str

    def whole(self, completion: dict[str, Any]) -> dict[str, Any]:
        return chat_to_message(
            completion,
            model=self.request.model,
            message_id=self.message_id,
            stops=self.request.stop_sequences,
        )

    def stream(self) -> StageStream:
        return ChatToMessagesStream(
            model=self.request.model, message_id=self.message_id, stops=self.request.stop_sequences
        )


@dataclass(frozen=True, slots=True)
class _ResponsesStage:
    request: ResponsesRequest
    response_id: str
    created_at: int

    def whole(self, completion: dict[str, Any]) -> dict[str, Any]:
        return chat_to_response(
            completion, self.request, response_id=self.response_id, created_at=self.created_at
        )

    def stream(self) -> StageStream:
        return ChatToResponsesStream(
            self.request, response_id=self.response_id, created_at=self.created_at
        )


def stage_for(request: OverChatRequest, context: FlowContext) -> Stage:
    """The stage of ``request``; its ids come from the request id."""
    original = request.original
    if isinstance(original, MessagesRequest):
        return _MessagesStage(original, f"msg_{context.request_id}")
    return _ResponsesStage(original, f"resp_{context.request_id}", int(context.now))
