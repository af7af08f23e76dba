"""An emulated Anthropic Messages API over real HTTP: for trying the gateway, and for tests.

Theory of operation
-------------------
The same server as ``emulator.openai`` (anyio + h11, one ``_Plan`` per request, rendered up
front by a synchronous handler, then written; a stream is one write per SSE event), speaking
Anthropic's Messages API instead:

* ``GET /v1/models`` (Anthropic's page: ``data``, ``has_more``, ``first_id``, ``last_id``);
* ``POST /v1/messages``: a whole ``message``, or the event stream -- ``message_start`` (the
  input tokens already counted), ``content_block_start``, a ``ping`` after the first block
  opens, ``content_block_delta`` (``thinking_delta`` then ``signature_delta``, ``text_delta``,
  ``input_json_delta`` in pieces), ``content_block_stop``, ``message_delta`` (``stop_reason``
  and the output tokens), ``message_stop``; ``thinking`` enabled gives a thinking block;
* ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, N one per word-ish piece of
  the system, messages and tools, plus a small overhead;
* every request must carry ``anthropic-version`` (400 otherwise, as Anthropic answers), and
  ``x-api-key`` when the emulator has a key (401);
* errors in Anthropic's envelope ``{"type": "error", "error": {"type", "message"}}`` with its
  types by status: 400 for what Anthropic refuses (a missing ``max_tokens``, an unknown
  parameter, a ``tool_result`` that answers no ``tool_use``...), 404 ``not_found_error`` for
  an unknown model, 429 ``rate_limit_error`` with ``retry-after``, 529 ``overloaded_error``.

Each model answers from the OpenAI emulator's ``ScriptedReply`` (the text, reasoning, tool
calls, token counts and faults mean the same here). ``.url`` is the base URL including
``/v1``, the form a ``kind = "anthropic"`` backend's ``url`` takes.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import h11
import orjson
from anyio.from_thread import start_blocking_portal

from .openai import (
    RecordedRequest,
    ScriptedReply,
    _json_plan,
    _pieces,
    _Plan,
    _read_request,
    _send_plan,
    _take_turn,
    _Turn,
)

__all__ = [
    "AnthropicEmulator",
    "AnthropicModel",
    "default_models",
    "run_anthropic_emulator",
]

_SSE_TYPE = b"text/event-stream; charset=utf-8"
_PARAMS = frozenset(
    (
        "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "metadata", "tools", "tool_choice", "thinking", "service_tier",
        "container", "mcp_servers", "context_management",
    )
)  # fmt: skip
_COUNT_PARAMS = frozenset(("model", "messages", "system", "tools", "tool_choice", "thinking"))
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


@dataclass(slots=True)
class AnthropicModel:
    id: str
    reply: ScriptedReply = field(default_factory=ScriptedReply)
    display_name: str = ""
    created_at: str = "2025-05-14T00:00:00Z"


def default_models() -> list[AnthropicModel]:
    return [
        AnthropicModel("claude-sonnet-4-5", display_name="Claude Sonnet 4.5"),
        AnthropicModel(
            "claude-opus-4-1",
            ScriptedReply(reasoning="Let me think about the greeting."),
            display_name="Claude Opus 4.1",
        ),
    ]


class _Reject(Exception):
    def __init__(self, plan: _Plan) -> None:
        super().__init__(plan.status)
        self.plan = plan


def _error(status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> _Plan:
    type_ = _TYPES.get(status, "api_error")
    plan = _json_plan({"type": "error", "error": {"type": type_, "message": message}}, status)
    return _Plan(plan.status, (*plan.headers, *headers), plan.parts)


def _bad(message: str) -> _Reject:
    return _Reject(_error(400, message))


def _event(payload: dict[str, Any]) -> bytes:
    name = str(payload["type"]).encode()
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _words(value: Any) -> int:
    """Word-ish pieces of every string in ``value``: the emulator's tokenizer."""
    if isinstance(value, str):
        return len(_pieces(value, None))
    if isinstance(value, dict):
        return sum(_words(v) for v in value.values())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    return 0


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: at least one message is required")
    open_ids: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        if not isinstance(content, (str, list)):
            raise _bad(f"messages.{i}.content: Field required")
        if message["role"] == "assistant":
            open_ids = {b.get("id") for b in blocks if b.get("type") == "tool_use"}
            continue
        for block in blocks:
            if block.get("type") == "tool_result" and block.get("tool_use_id") not in open_ids:
                raise _bad(
                    f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` "
                    "blocks. Each `tool_result` block must have a corresponding `tool_use` "
                    "block in the previous message."
                )
            source = block.get("source") if block.get("type") == "image" else None
            if source is not None and source.get("type") not in ("base64", "url"):
                raise _bad(f"messages.{i}.content: invalid image source")
        open_ids = set()


class _Stream:
    """A turn as Anthropic's event stream."""

    def __init__(self, message: dict[str, Any], turn: _Turn, reply: ScriptedReply) -> None:
        self.message, self.turn, self.reply = message, turn, reply
        self.index = -1
        self.events: list[bytes] = []
        self.pinged = False

    def open(self, block: dict[str, Any]) -> None:
        self.index += 1
        self.events.append(
            _event({"type": "content_block_start", "index": self.index, "content_block": block})
        )
        if not self.pinged:
            self.events.append(_event({"type": "ping"}))
            self.pinged = True

    def delta(self, delta: dict[str, Any]) -> None:
        self.events.append(
            _event({"type": "content_block_delta", "index": self.index, "delta": delta})
        )

    def close(self) -> None:
        self.events.append(_event({"type": "content_block_stop", "index": self.index}))

    def render(self) -> list[bytes]:
        turn, message = self.turn, self.message
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**message["usage"], "output_tokens": 1}
        self.events.append(_event({"type": "message_start", "message": start}))
        if turn.reasoning:
            self.open({"type": "thinking", "thinking": "", "signature": ""})
            for piece in turn.reasoning:
                self.delta({"type": "thinking_delta", "thinking": piece})
            self.delta({"type": "signature_delta", "signature": "c2lnbmF0dXJl"})
            self.close()
        if turn.content:
            self.open({"type": "text", "text": ""})
            for piece in turn.content:
                self.delta({"type": "text_delta", "text": piece})
            self.close()
        for call in turn.calls:
            head = {"type": "tool_use", "id": call["id"], "name": call["function"]["name"]}
            self.open({**head, "input": {}})
            text = call["function"]["arguments"]
            size = max(1, self.reply.argument_piece)
            for at in range(0, len(text), size):
                self.delta({"type": "input_json_delta", "partial_json": text[at : at + size]})
            self.close()
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        usage = {"output_tokens": message["usage"]["output_tokens"]}
        self.events.append(_event({"type": "message_delta", "delta": delta, "usage": usage}))
        self.events.append(_event({"type": "message_stop"}))
        return self.events


class AnthropicEmulator:
    """The emulated server. Use ``run_anthropic_emulator()``."""

    def __init__(
        self, models: Sequence[AnthropicModel] | None = None, *, api_key: str | None = None
    ) -> None:
        self.models = {m.id: m for m in (default_models() if models is None else models)}
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self.url, self.port = "", 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.retry_after = 7  # seconds, on a scripted 429

    # ----------------------------------------------------------------- test controls

    def set_reply(self, model: str, reply: ScriptedReply) -> None:
        self.models[model].reply = reply

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def last_request(self, path: str | None = None) -> RecordedRequest:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path][-1]

    # ----------------------------------------------------------------- serving

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}/v1"
            task_status.started(self.url)
            await listener.serve(self._serve_connection)

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (received := await _read_request(conn, stream)) is not None:
                request, body = received
                plan = self._plan(request, body)
                if not await _send_plan(conn, stream, plan, request.method == b"HEAD"):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        except Exception as exc:  # an emulator bug must not take the listener down
            self.errors.append(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    def _plan(self, request: h11.Request, body: bytes) -> _Plan:
        method = request.method.decode()
        path = request.target.decode("latin-1").partition("?")[0]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers, body))
        try:
            self._authorize(headers)
            return self._route(method, path, body)
        except _Reject as reject:
            return reject.plan

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.api_key is not None and headers.get("x-api-key") != self.api_key:
            raise _Reject(_error(401, "invalid x-api-key"))
        if not headers.get("anthropic-version"):
            raise _bad("anthropic-version: header is required")

    def _route(self, method: str, path: str, body: bytes) -> _Plan:
        if method == "GET" and path == "/v1/models":
            data = [
                {"type": "model", "id": m.id, "display_name": m.display_name or m.id,
                 "created_at": m.created_at}
                for m in self.models.values()
            ]  # fmt: skip
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            return _json_plan({"data": data, "has_more": False, "first_id": first, "last_id": last})
        if method == "POST" and path == "/v1/messages":
            return self._messages(body)
        if method == "POST" and path == "/v1/messages/count_tokens":
            return self._count(body)
        return _error(404, f"Not found: {method} {path}")

    def _load(self, body: bytes, known: frozenset[str]) -> tuple[dict[str, Any], AnthropicModel]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _bad("There was an issue with your request body: invalid JSON") from None
        if not isinstance(data, dict):
            raise _bad("The request body must be a JSON object.")
        for key in data:
            if key not in known:
                raise _bad(f"{key}: Extra inputs are not permitted")
        if not isinstance(data.get("model"), str):
            raise _bad("model: Field required")
        _check_messages(data.get("messages"))
        model = self.models.get(data["model"])
        if model is None:
            raise _Reject(_error(404, f"model: {data['model']}"))
        return data, model

    def _count(self, body: bytes) -> _Plan:
        data, _ = self._load(body, _COUNT_PARAMS)
        counted = _words([data.get("system"), data["messages"], data.get("tools")])
        return _json_plan({"input_tokens": 3 + counted})

    def _messages(self, body: bytes) -> _Plan:
        data, model = self._load(body, _PARAMS)
        if not isinstance(data.get("max_tokens"), int):
            raise _bad("max_tokens: Field required")
        reply = model.reply
        if reply.error_status is not None:
            extra = (
                ((b"retry-after", b"%d" % self.retry_after),) if reply.error_status == 429 else ()
            )
            raise _Reject(_error(reply.error_status, reply.error_message, extra))
        thinking = (data.get("thinking") or {}).get("type") == "enabled"
        chat_like = {"max_tokens": data["max_tokens"],
                     "reasoning_effort": "high" if thinking else "none"}  # fmt: skip
        turn = _take_turn(reply, chat_like, lambda: f"toolu_{next(self._ids):08d}")
        message = self._message(data["model"], turn, reply)
        if not data.get("stream"):
            return _json_plan(message)
        events = _Stream(message, turn, reply).render()
        close_after = False
        if reply.error_after_chunks is not None:
            error = {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
            }
            events = [*events[: reply.error_after_chunks + 2], _event(error)]
        elif reply.die_after_chunks is not None:
            events, close_after = events[: reply.die_after_chunks + 2], True
        headers = ((b"content-type", _SSE_TYPE), (b"cache-control", b"no-cache"))
        return _Plan(200, headers, tuple(events), streamed=True, close_after=close_after,
                     chunk_delay=reply.delay_between_chunks)  # fmt: skip

    def _message(self, model: str, turn: _Turn, reply: ScriptedReply) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if turn.reasoning:
            content.append(
                {"type": "thinking", "thinking": "".join(turn.reasoning),
                 "signature": "c2lnbmF0dXJl"}
            )  # fmt: skip
        if turn.content:
            content.append({"type": "text", "text": "".join(turn.content)})
        for call in turn.calls:
            content.append(
                {"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                 "input": orjson.loads(call["function"]["arguments"])}
            )  # fmt: skip
        usage = {
            "input_tokens": turn.usage["prompt_tokens"],
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": turn.usage["completion_tokens"],
        }
        return {
            "id": f"msg_{next(self._ids):024d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": _STOP_REASONS.get(turn.finish_reason, "end_turn"),
            "stop_sequence": None,
            "usage": usage,
        }


@contextlib.contextmanager
def run_anthropic_emulator(
    models: Sequence[AnthropicModel] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api_key: str | None = None,
) -> Iterator[AnthropicEmulator]:
    """Serve an emulator from a background thread; ``emu.url`` ends in ``/v1``."""
    emulator = AnthropicEmulator(models, api_key=api_key)
    with start_blocking_portal(name="anthropic-emulator") as portal:
        portal.start_task(emulator.serve, host, port)
        try:
            yield emulator
        finally:
            portal.call(portal.stop, True)
