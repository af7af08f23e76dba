"""Messages and Responses flows: a chat flow, then the client's stage.

Theory of operation: the request became a chat request on arrival
(requests.py).  Each attempt builds the chat flow for the backend's kind --
the translation to Ollama's ``/api/chat`` (openai_over_ollama/chat.py) or
the chat body sent to an OpenAI-compatible ``/chat/completions``
(passthrough/openai.py) -- takes its upstream call as it is, and swaps in
the translator of the answer:

* a whole answer: the chat flow's ``chat.completion`` -> the stage's answer;
* a stream: the one stream base (flows/stream.py), whose per-record
  translator is the chat flow's (``OllamaChatStream`` for NDJSON lines,
  :class:`~sansio_gateway.passthrough.openai.ChatEvents` for SSE events)
  feeding each chat chunk to the stage; the chat side's in-band error
  becomes the stage's error event, its end the stage's ``finish``.

The stage's events are already SSE bytes, so the encoder is the identity
and there is no trailer (neither dialect ends with ``[DONE]``).

An ``openai`` backend that serves ``/responses`` itself (``responses =
true``) is sent the client's own body instead: :class:`OpenAIResponsesFlow`
decides per attempt, from the attempt's backend, since fallbacks of the
same kind may differ.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ..accounting.usage import TokenUsage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, UpstreamError
from ..flows.base import SSE_HEADERS, Plan, UpstreamCall, WholeAnswer
from ..flows.context import FlowContext
from ..flows.stream import Decoder, TranslatedStream
from ..framing import NDJSONDecoder, SSEDecoder
from ..openai_over_ollama.chat import OpenAIChatFlow
from ..openai_over_ollama.chat_stream import OllamaChatStream
from ..passthrough.openai import ChatEvents, OpenAIPassthroughFlow
from ..passthrough.responses import ResponsesPassthroughFlow
from .requests import OverChatRequest, Stage, StageStream, stage_for

__all__ = ["OpenAIResponsesFlow", "OverChatOllamaFlow", "OverChatOpenAIFlow"]


class _ChatRecords(Protocol):
    """A chat flow's per-record stream translator (chat chunk dicts out)."""

    @property
    def done(self) -> bool: ...

    @property
    def failed(self) -> bool: ...

    @property
    def usage(self) -> TokenUsage | None: ...

    def feed(self, record: Any) -> list[dict[str, Any]]: ...

    def finish(self) -> list[dict[str, Any]]: ...

    def fail(self, error: GatewayError) -> list[dict[str, Any]]: ...


class _Staged:
    """Records: the chat translator's chunks, said by the stage."""

    def __init__(self, chat: _ChatRecords, stage: StageStream) -> None:
        self._chat = chat
        self._stage = stage

    @property
    def done(self) -> bool:
        return self._stage.done

    @property
    def failed(self) -> bool:
        return self._stage.failed

    @property
    def usage(self) -> TokenUsage | None:
        return self._chat.usage or self._stage.usage

    def feed(self, record: Any) -> list[bytes]:
        return self._relay(self._chat.feed(record))

    def finish(self) -> list[bytes]:
        return self._relay(self._chat.finish())

    def fail(self, error: GatewayError) -> list[bytes]:
        self._chat.fail(error)
        return self._stage.fail(error)

    def _relay(self, chunks: list[dict[str, Any]]) -> list[bytes]:
        out: list[bytes] = []
        for chunk in chunks:
            error = chunk.get("error")
            if error is not None:
                message = error.get("message") if isinstance(error, dict) else None
                return out + self._stage.fail(UpstreamError(str(message or error)))
            out += self._stage.feed(chunk)
        if self._chat.done and not self._chat.failed:
            out += self._stage.finish()
        return out


def _identity(payload: bytes) -> bytes:
    return payload


def _staged_stream(
    decoder: Decoder[Any], chat: _ChatRecords, stage: Stage, prompt_bytes: int
) -> TranslatedStream[Any]:
    return TranslatedStream(
        decoder=decoder,
        records=_Staged(chat, stage.stream()),
        encode=_identity,
        headers=SSE_HEADERS,
        prompt_bytes=prompt_bytes,
    )


class _StagedWhole:
    """A whole answer: the chat flow's completion, said by the stage."""

    def __init__(self, chat: WholeAnswer, stage: Stage) -> None:
        self._chat = chat
        self._stage = stage

    def complete(self, body: bytes) -> bytes:
        completion = orjson.loads(self._chat.complete(body))
        return orjson.dumps(self._stage.whole(completion))

    @property
    def usage(self) -> TokenUsage | None:
        return self._chat.usage

    def estimate_usage(self) -> TokenUsage:
        return self._chat.estimate_usage()


class OverChatOllamaFlow:
    """One attempt at an Ollama backend."""

    def __init__(self, context: FlowContext, request: OverChatRequest, model: str) -> None:
        self._context = context
        self._request = request
        self._chat = OpenAIChatFlow(context, request.chat, model)
        self._stage = stage_for(request, context)

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        call = self._chat.plan(route, backend)
        assert isinstance(call, UpstreamCall)
        if not self._request.stream:
            whole = _StagedWhole(self._chat, self._stage)
            return UpstreamCall(method=call.method, path=call.path, body=call.body, whole=whole)
        chat = self._request.chat
        lines = OllamaChatStream(
            completion_id=self._chat.completion_id,
            created=self._chat.created,
            model=chat.model,
            include_usage=True,  # the stage reads the counts from the usage chunk
            reasoning_field=self._context.reasoning_field,
            forced_tool=chat.forced_tool,
        )
        stream = _staged_stream(NDJSONDecoder(), lines, self._stage, chat.size)
        return UpstreamCall(method=call.method, path=call.path, body=call.body, stream=stream)


class OverChatOpenAIFlow:
    """One attempt at an OpenAI-compatible backend."""

    def __init__(self, context: FlowContext, request: OverChatRequest, model: str) -> None:
        self._request = request
        self._chat = OpenAIPassthroughFlow(context, request.chat, model)
        self._stage = stage_for(request, context)
        self._model = model

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        call = self._chat.plan(route, backend)
        assert isinstance(call, UpstreamCall)
        if not self._request.stream:
            whole = _StagedWhole(self._chat, self._stage)
            return UpstreamCall(method=call.method, path=call.path, body=call.body, whole=whole)
        events = ChatEvents(self._model, client_wants_usage=True)
        stream = _staged_stream(SSEDecoder(), events, self._stage, self._request.size)
        return UpstreamCall(method=call.method, path=call.path, body=call.body, stream=stream)


class OpenAIResponsesFlow:
    """``/v1/responses`` at an ``openai`` backend: passed through when the
    backend serves ``/responses`` itself (passthrough/responses.py), through
    the chat dialect otherwise."""

    def __init__(self, context: FlowContext, request: OverChatRequest, model: str) -> None:
        self._context = context
        self._request = request
        self._model = model

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        native = backend is not None and backend.responses
        flow = ResponsesPassthroughFlow if native else OverChatOpenAIFlow
        return flow(self._context, self._request, self._model).plan(route, backend)
