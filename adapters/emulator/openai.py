"""An emulated OpenAI-compatible server over real HTTP: for trying the gateway, and for tests.

Theory of operation
-------------------
The emulator speaks OpenAI's wire format (the openapi ``CreateChatCompletionResponse``,
``CreateChatCompletionStreamResponse``, ``CreateCompletionResponse``,
``CreateEmbeddingResponse`` and ``ErrorResponse`` schemas; docs/wire-notes.md)
from one anyio code base, with h11 doing the HTTP/1.1 framing, as ``emulator.ollama``
does for Ollama. Each connection runs a loop: read one request, record it, turn it into a
``_Plan`` (status, headers and every body part, rendered up front by a synchronous handler),
then write the plan. A streamed plan goes out as one HTTP chunk and one write per SSE event,
with ``delay_between_chunks`` between them (``anyio.sleep`` in the connection's own task, so
a pause holds up no other connection).

What it emulates faithfully:

* ``GET /v1/models`` and ``/v1/models/{id}``;
* ``POST /v1/chat/completions``: whole answers and SSE streams (``data: {...}\\n\\n``, ending
  with ``data: [DONE]``); the first chunk carries ``role``; tool calls are streamed as
  fragments -- a first delta with ``id``, ``type`` and ``name`` and empty arguments, then the
  argument text in pieces, parallel calls with ``index`` 0, 1, ...; a dedicated finish chunk;
  with ``stream_options.include_usage`` every chunk has ``usage: null`` and a last chunk has
  ``choices: []`` and the usage;
* ``POST /v1/completions`` (``text_completion`` objects, streamed the same way);
* ``POST /v1/embeddings`` (float or base64 little-endian float32, ``dimensions``);
* ``POST /v1/responses``: the Responses API, a whole ``response`` or its event stream
  (emulator/responses.py), for a backend configured with ``responses = true``;
* errors in OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``: 404
  ``model_not_found``, 400 for malformed requests (the checks OpenAI makes that a translator
  could get wrong: roles, tool-call pairing, argument strings, response formats...), 401 when an
  ``api_key`` is set and not presented.

Each model answers from a ``ScriptedReply`` that tests swap between requests. Faults:
``error_status`` (an error answer), ``error_after_chunks`` (an in-band ``data: {"error": ...}``
event mid-stream), ``die_after_chunks`` (the connection is dropped mid-stream); and
``fail_rate``, a seeded fraction of generation requests that fail as ``Failure`` describes.

Run it with ``sansio-gateway emulate --kind openai`` (adapters/emulator/command.py) or
``run_openai_emulator()`` (a background thread with its own event loop); ``.url`` is the base
URL including ``/v1``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import math
import random
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.abc
import h11
import orjson
from anyio.from_thread import start_blocking_portal

from .ollama import Failure, token_chunks
from .responses import RESPONSES_PARAMS, check_responses_input, response_events, response_object

__all__ = [
    "EmulatorModel",
    "Failure",
    "OpenAIEmulator",
    "RecordedRequest",
    "ScriptedReply",
    "default_models",
    "embedding_for",
    "run_openai_emulator",
]

_READ_SIZE = 65_536
_MAX_BODY = 32 * 1024 * 1024
_JSON_TYPE = b"application/json"
_SSE_TYPE = b"text/event-stream; charset=utf-8"
_WORDISH = re.compile(r"\s*\S+|\s+")
_ROLES = ("system", "developer", "user", "assistant", "tool")
# Parameters of CreateChatCompletionRequest / CreateCompletionRequest / CreateEmbeddingRequest.
# fmt: off
_CHAT_PARAMS = frozenset((
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop",
    "store", "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
    "top_p", "user", "verbosity", "web_search_options",
))
_COMPLETION_PARAMS = frozenset((
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
    "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix",
    "temperature", "top_p", "user",
))
# fmt: on
_EMBEDDING_PARAMS = frozenset(["model", "input", "dimensions", "encoding_format", "user"])
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
# OpenAI's own texts for an overloaded and a failing server, so clients meet real bodies.
_BUSY_MESSAGE = "The server is overloaded or not ready yet."
_CRASHED_MESSAGE = "The server had an error while processing your request. Sorry about that!"


# --------------------------------------------------------------------------- public data


@dataclass(slots=True)
class ScriptedReply:
    """What one model answers. Swap it between requests with ``OpenAIEmulator.set_reply``.

    ``tool_calls`` are ``{"id"?: str, "function": {"name": str, "arguments": dict | str}}``;
    arguments given as a dict are sent as their JSON text. ``error_after_chunks`` /
    ``die_after_chunks`` count the stream's chunks after the role chunk (reasoning, content,
    tool-call fragments).
    """

    content: str = "Hello! How can I help you today?"
    reasoning: str = ""
    reasoning_field: str = "reasoning_content"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_ids: bool = True
    same_index_for_all_calls: bool = False  # a buggy backend: every call at index 0
    argument_piece: int = 5  # streamed tool-call arguments come in pieces of this many chars
    finish_reason: str | None = None  # None: "tool_calls" with calls, else "stop"
    prompt_tokens: int = 26
    completion_tokens: int | None = None  # None: one per generated piece
    chunks: list[str] | None = None
    reasoning_chunks: list[str] | None = None
    honour_include_usage: bool = True
    send_done: bool = True
    error_status: int | None = None
    error_message: str = "The server had an error while processing your request."
    error_type: str = "server_error"
    error_retry_after: int | None = None  # seconds, sent as retry-after with error_status
    error_after_chunks: int | None = None
    die_after_chunks: int | None = None
    delay_between_chunks: float = 0.0  # seconds between a stream's events
    embedding_dim: int = 8
    shuffle_embeddings: bool = False  # return `data` in reverse order (clients sort by index)
    embeddings_as_base64: bool = False  # ignore encoding_format and always send base64


@dataclass(slots=True)
class EmulatorModel:
    id: str
    reply: ScriptedReply = field(default_factory=ScriptedReply)
    created: int = 1_715_367_049
    owned_by: str = "system"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None


def default_models(tokens: int | None = None, token_delay: float = 0.0) -> list[EmulatorModel]:
    """A realistic set of models; ``tokens`` makes every chat model answer that many pieces,
    ``token_delay`` (seconds) paces every stream's events."""
    models = [
        EmulatorModel("gpt-4o-mini"),
        EmulatorModel("o4-mini", ScriptedReply(reasoning="Let me think about the greeting.")),
        EmulatorModel("text-embedding-3-small", ScriptedReply(embedding_dim=16)),
        EmulatorModel("meta-llama/Llama-3.1-8B-Instruct:Q4", owned_by="vllm"),
    ]
    for model in models:
        if tokens is not None and not model.id.startswith("text-embedding"):
            model.reply.chunks = token_chunks(tokens)
        model.reply.delay_between_chunks = token_delay
    return models


def embedding_for(text: str, dim: int = 8, dimensions: int = 0) -> list[float]:
    """A stable, L2-normalised vector for ``text`` (``dimensions`` truncates, then renormalises)."""
    raw = hashlib.shake_256(text.encode()).digest(4 * dim)
    vector = [value / 2_147_483_648.0 - 1.0 for value in struct.unpack(f"<{dim}I", raw)]
    if 0 < dimensions < dim:
        vector = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    # float32 values, so a base64 round trip is exact.
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in vector]


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True, slots=True)
class _Plan:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    parts: tuple[bytes, ...] = ()
    streamed: bool = False
    close_after: bool = False  # drop the connection instead of ending the message
    chunk_delay: float = 0.0


class _Reject(Exception):
    """A request OpenAI would refuse; carries the rendered error plan."""

    def __init__(self, plan: _Plan) -> None:
        super().__init__(plan.status)
        self.plan = plan


def _json_plan(payload: Any, status: int = 200) -> _Plan:
    body = orjson.dumps(payload)
    headers = ((b"content-type", _JSON_TYPE), (b"content-length", b"%d" % len(body)))
    return _Plan(status, headers, (body,))


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> _Plan:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return _json_plan({"error": error}, status)


def _bad(message: str, param: str | None = None) -> _Reject:
    return _Reject(_error(400, message, param=param))


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"


def _pieces(text: str, explicit: list[str] | None) -> list[str]:
    return list(explicit) if explicit is not None else _WORDISH.findall(text)


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()


@dataclass(frozen=True, slots=True)
class _Turn:
    reasoning: list[str]
    content: list[str]
    calls: list[dict[str, Any]]  # complete OpenAI calls, arguments as text
    finish_reason: str
    usage: dict[str, int]


def _take_turn(reply: ScriptedReply, body: dict[str, Any], new_id: Callable[[], str]) -> _Turn:
    think = body.get("reasoning_effort") != "none"
    reasoning = _pieces(reply.reasoning, reply.reasoning_chunks) if think else []
    content = _pieces(reply.content, reply.chunks)
    calls = [
        {
            "id": (call.get("id") or new_id()) if reply.tool_call_ids else "",
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": _arguments_text(call["function"].get("arguments", {})),
            },
        }
        for call in reply.tool_calls
    ]
    finish = reply.finish_reason or ("tool_calls" if calls else "stop")
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(cap, int) and len(reasoning) + len(content) > cap:
        reasoning = reasoning[:cap]
        content = content[: cap - len(reasoning)]
        calls, finish = [], "length"
    generated = len(reasoning) + len(content)
    completion = generated if reply.completion_tokens is None else reply.completion_tokens
    usage = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": reply.prompt_tokens + completion,
    }
    return _Turn(reasoning, content, calls, finish, usage)


# --------------------------------------------------------------------------- request checks


def _load(body: bytes, known: frozenset[str], strict: bool) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        ) from None
    if not isinstance(data, dict):
        raise _bad("The request body must be a JSON object.")
    if strict:
        for key in data:
            if key not in known:
                raise _bad(f"Unrecognized request argument supplied: {key}", key)
    if not data.get("model"):
        raise _bad("you must provide a model parameter", "model")
    return data


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise _bad("Missing required parameter: 'messages'.", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("Invalid 'messages': empty array.", "messages")
    open_ids: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _bad(f"Invalid value: '{message}'. Supported roles...", f"messages[{i}].role")
        _check_content(message, i)
        if message["role"] == "assistant":
            open_ids = {_check_call(call, i) for call in message.get("tool_calls") or ()}
        elif message["role"] == "tool":
            if message.get("tool_call_id") not in open_ids:
                raise _bad(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
        else:
            open_ids = set()


def _check_content(message: dict[str, Any], i: int) -> None:
    content = message.get("content")
    if content is None and not (message["role"] == "assistant" and message.get("tool_calls")):
        raise _bad(
            "Invalid value for 'content': expected a string, got null.", f"messages.[{i}].content"
        )
    if isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image_url":
                if message["role"] != "user":
                    raise _bad("Image parts are only allowed in user messages.", f"messages[{i}]")
                url = part.get("image_url", {}).get("url", "")
                if not re.match(r"^(https?://|data:image/(png|jpeg|gif|webp);base64,)", url):
                    raise _bad("Invalid image URL.", f"messages[{i}].content")
            elif kind != "text":
                raise _bad(f"Invalid content part type: {kind}", f"messages[{i}].content")
    elif content is not None and not isinstance(content, str):
        raise _bad("Invalid type for 'content'.", f"messages.[{i}].content")


def _check_call(call: Any, i: int) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        raise _bad(
            "Invalid type for 'tool_calls.function.arguments': expected a string.",
            f"messages.[{i}].tool_calls",
        )
    if not call.get("id"):
        raise _bad("Missing required parameter: 'tool_calls.id'.", f"messages.[{i}].tool_calls")
    return str(call["id"])


def _check_chat(data: dict[str, Any]) -> None:
    _check_messages(data.get("messages"))
    effort = data.get("reasoning_effort")
    if effort is not None and effort not in _EFFORTS:
        raise _bad(f"Invalid value: '{effort}'.", "reasoning_effort")
    fmt = data.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise _bad("Invalid value for 'response_format.type'.", "response_format.type")
        if kind == "json_schema" and not (fmt.get("json_schema") or {}).get("name"):
            raise _bad(
                "Missing required parameter: 'response_format.json_schema.name'.",
                "response_format.json_schema.name",
            )
    stop = data.get("stop")
    if isinstance(stop, list) and len(stop) > 4:
        raise _bad("Invalid 'stop': array too long.", "stop")


# --------------------------------------------------------------------------- the server


class OpenAIEmulator:
    """The emulated server. Use ``run_openai_emulator()``."""

    def __init__(
        self,
        models: Sequence[EmulatorModel] | None = None,
        *,
        api_key: str | None = None,
        strict_params: bool = False,
        fail_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, not {fail_rate}")
        self.models: dict[str, EmulatorModel] = {}
        for model in default_models() if models is None else models:
            self.models[model.id] = model
        self.api_key = api_key
        self.strict_params = strict_params  # True: unknown parameters are a 400, as on OpenAI
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self.url, self.port = "", 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # A seeded fraction of generation requests fails, as OllamaEmulator documents.
        self.fail_rate = fail_rate
        self._faults = random.Random(seed)
        self.failures: dict[Failure, int] = dict.fromkeys(Failure, 0)

    # ----------------------------------------------------------------- test controls

    def set_reply(self, model: str, reply: ScriptedReply) -> None:
        self.models[model].reply = reply

    def update_reply(self, model: str, **changes: Any) -> ScriptedReply:
        reply = replace(self.models[model].reply, **changes)
        self.set_reply(model, reply)
        return reply

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def last_request(self, path: str | None = None) -> RecordedRequest:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path][-1]

    def _new_id(self) -> str:
        return f"call_{next(self._ids):08d}"

    def _inject(self, reply: ScriptedReply, stream: bool) -> ScriptedReply:
        """The reply with a drawn failure applied; BUSY and CRASHED raise their error answer."""
        if self.fail_rate <= 0.0 or self._faults.random() >= self.fail_rate:
            return reply
        kinds = list(Failure) if stream else [Failure.BUSY, Failure.CRASHED]
        failure = self._faults.choice(kinds)
        with self._lock:
            self.failures[failure] += 1
        if failure is Failure.BUSY:
            raise _Reject(_error(503, _BUSY_MESSAGE, type_="server_error"))
        if failure is Failure.CRASHED:
            raise _Reject(_error(500, _CRASHED_MESSAGE, type_="server_error"))
        pieces = len(_pieces(reply.reasoning, reply.reasoning_chunks))
        pieces += len(_pieces(reply.content, reply.chunks))
        return replace(reply, error_after_chunks=None, die_after_chunks=pieces // 2)

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
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            raise _Reject(_error(401, "Incorrect API key provided.", code="invalid_api_key"))

    def _route(self, method: str, path: str, body: bytes) -> _Plan:
        if method == "GET" and path == "/v1/models":
            return _json_plan(
                {"object": "list", "data": [self._model_object(m) for m in self.models.values()]}
            )
        if method == "GET" and path.startswith("/v1/models/"):
            return _json_plan(self._model_object(self._model(path[len("/v1/models/") :])))
        handlers = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
            "/v1/responses": self._responses,
        }
        handler = handlers.get(path)
        if method != "POST" or handler is None:
            return _error(404, f"Invalid URL ({method} {path})", code="unknown_url")
        return handler(body)

    @staticmethod
    def _model_object(model: EmulatorModel) -> dict[str, Any]:
        return {
            "id": model.id,
            "object": "model",
            "created": model.created,
            "owned_by": model.owned_by,
        }

    def _model(self, name: str) -> EmulatorModel:
        model = self.models.get(name)
        if model is None:
            raise _Reject(
                _error(
                    404,
                    f"The model `{name}` does not exist or you do not have access to it.",
                    code="model_not_found",
                )
            )
        return model

    def _scripted_error(self, reply: ScriptedReply) -> None:
        if reply.error_status is not None:
            plan = _error(reply.error_status, reply.error_message, type_=reply.error_type)
            if reply.error_retry_after is not None:
                wait = (b"retry-after", b"%d" % reply.error_retry_after)
                plan = _Plan(plan.status, (*plan.headers, wait), plan.parts)
            raise _Reject(plan)

    # ----------------------------------------------------------------- chat

    def _chat(self, body: bytes) -> _Plan:
        data = _load(body, _CHAT_PARAMS, self.strict_params)
        model = self._model(data["model"])
        _check_chat(data)
        reply = model.reply
        self._scripted_error(reply)
        reply = self._inject(reply, bool(data.get("stream")))
        turn = _take_turn(reply, data, self._new_id)
        cid = f"chatcmpl-{next(self._ids)}"
        if not data.get("stream"):
            return _json_plan(_chat_completion(cid, model.id, reply, turn))
        usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return _stream_plan(_ChatStream(cid, model.id, reply, turn, usage).events(), reply)

    # ----------------------------------------------------------------- responses

    def _responses(self, body: bytes) -> _Plan:
        data = _load(body, RESPONSES_PARAMS, self.strict_params)
        model = self._model(data["model"])
        problem = check_responses_input(data.get("input"))
        if problem is not None:
            raise _bad(problem, "input")
        reply = model.reply
        self._scripted_error(reply)
        effort = (data.get("reasoning") or {}).get("effort")
        chat_like = {"max_tokens": data.get("max_output_tokens"), "reasoning_effort": effort}
        turn = _take_turn(reply, chat_like, self._new_id)
        rid = f"{next(self._ids):024d}"
        if not data.get("stream"):
            return _json_plan(response_object(rid, model.id, data, turn))
        events = response_events(rid, model.id, data, turn, reply.argument_piece)
        if reply.error_after_chunks is not None:
            cut = reply.error_after_chunks + 2
            error = {"type": "error", "code": "server_error", "message": reply.error_message,
                     "param": None, "sequence_number": cut}  # fmt: skip
            events = [*events[:cut], b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"]
            reply = replace(reply, error_after_chunks=None)
        elif reply.die_after_chunks is not None:
            events = events[: reply.die_after_chunks + 2]
        headers = ((b"content-type", _SSE_TYPE), (b"cache-control", b"no-cache"))
        return _Plan(200, headers, tuple(events), streamed=True,
                     close_after=reply.die_after_chunks is not None,
                     chunk_delay=reply.delay_between_chunks)  # fmt: skip

    # ----------------------------------------------------------------- completions

    def _completions(self, body: bytes) -> _Plan:
        data = _load(body, _COMPLETION_PARAMS, self.strict_params)
        model = self._model(data["model"])
        if not isinstance(data.get("prompt"), str | list):
            raise _bad("Missing required parameter: 'prompt'.", "prompt")
        reply = model.reply
        self._scripted_error(reply)
        reply = self._inject(reply, bool(data.get("stream")))
        turn = _take_turn(reply, {**data, "reasoning_effort": "none"}, self._new_id)
        cid = f"cmpl-{next(self._ids)}"
        envelope = {
            "id": cid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": model.id,
        }
        if not data.get("stream"):
            choice = {
                "text": "".join(turn.content),
                "index": 0,
                "logprobs": None,
                "finish_reason": turn.finish_reason,
            }
            return _json_plan({**envelope, "choices": [choice], "usage": turn.usage})
        events = [
            _sse(
                {
                    **envelope,
                    "choices": [{"text": p, "index": 0, "logprobs": None, "finish_reason": None}],
                }
            )
            for p in turn.content
        ]
        events.append(
            _sse(
                {
                    **envelope,
                    "choices": [
                        {
                            "text": "",
                            "index": 0,
                            "logprobs": None,
                            "finish_reason": turn.finish_reason,
                        }
                    ],
                }
            )
        )
        if (data.get("stream_options") or {}).get("include_usage") and reply.honour_include_usage:
            events.append(_sse({**envelope, "choices": [], "usage": turn.usage}))
        return _stream_plan(events, reply)

    # ----------------------------------------------------------------- embeddings

    def _embeddings(self, body: bytes) -> _Plan:
        data = _load(body, _EMBEDDING_PARAMS, self.strict_params)
        model = self._model(data["model"])
        inputs = data.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(i, str) and i for i in inputs)
        ):
            raise _bad("'$.input' is invalid. Please check the API reference.", "input")
        encoding = data.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _bad(f"Invalid value for 'encoding_format' = {encoding}.", "encoding_format")
        reply = model.reply
        self._scripted_error(reply)
        dimensions = data.get("dimensions") or 0
        as_base64 = encoding == "base64" or reply.embeddings_as_base64
        items = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encode_vector(
                    embedding_for(text, reply.embedding_dim, dimensions), as_base64
                ),
            }
            for i, text in enumerate(inputs)
        ]
        if reply.shuffle_embeddings:
            items.reverse()
        tokens = sum(len(_WORDISH.findall(text)) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json_plan({"object": "list", "data": items, "model": model.id, "usage": usage})


def _encode_vector(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _chat_completion(cid: str, model: str, reply: ScriptedReply, turn: _Turn) -> dict[str, Any]:
    content = "".join(turn.content)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content if content or not turn.calls else None,
        "refusal": None,
        "annotations": [],
    }
    if turn.reasoning:
        message[reply.reasoning_field] = "".join(turn.reasoning)
    if turn.calls:
        message["tool_calls"] = turn.calls
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": turn.finish_reason}
        ],
        "usage": turn.usage,
        "service_tier": "default",
        "system_fingerprint": "fp_emulator",
    }


class _ChatStream:
    """Render a turn as ``chat.completion.chunk`` events, OpenAI's way."""

    def __init__(
        self, cid: str, model: str, reply: ScriptedReply, turn: _Turn, usage: bool
    ) -> None:
        self.reply, self.turn = reply, turn
        self.usage = usage and reply.honour_include_usage
        self.envelope = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_emulator",
        }

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        payload: dict[str, Any] = {**self.envelope, "choices": [choice]}
        if self.usage:
            payload["usage"] = None
        return _sse(payload)

    def events(self) -> list[bytes]:
        reply, turn = self.reply, self.turn
        events = [self.chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [self.chunk({reply.reasoning_field: piece}) for piece in turn.reasoning]
        events += [self.chunk({"content": piece}) for piece in turn.content]
        for index, call in enumerate(turn.calls):
            events += self.call_fragments(0 if reply.same_index_for_all_calls else index, call)
        events.append(self.chunk({}, turn.finish_reason))
        if self.usage:
            events.append(_sse({**self.envelope, "choices": [], "usage": turn.usage}))
        return events

    def call_fragments(self, index: int, call: dict[str, Any]) -> list[bytes]:
        head: dict[str, Any] = {"index": index, "type": "function"}
        if call["id"]:
            head["id"] = call["id"]
        head["function"] = {"name": call["function"]["name"], "arguments": ""}
        text = call["function"]["arguments"]
        size = max(1, self.reply.argument_piece)
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        return [self.chunk({"tool_calls": [head]})] + [
            self.chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
            for p in pieces
        ]


def _stream_plan(events: list[bytes], reply: ScriptedReply) -> _Plan:
    headers = ((b"content-type", _SSE_TYPE), (b"cache-control", b"no-cache"))
    close_after = False
    if reply.error_after_chunks is not None:
        error = {
            "message": reply.error_message,
            "type": reply.error_type,
            "param": None,
            "code": None,
        }
        events = [*events[: reply.error_after_chunks + 1], _sse({"error": error})]
    elif reply.die_after_chunks is not None:
        events, close_after = events[: reply.die_after_chunks + 1], True
    elif reply.send_done:
        events = [*events, _SSE_DONE]
    return _Plan(
        200,
        headers,
        tuple(events),
        streamed=True,
        close_after=close_after,
        chunk_delay=reply.delay_between_chunks,
    )


# --------------------------------------------------------------------------- HTTP plumbing


def _wire(conn: h11.Connection, event: h11.Event) -> bytes:
    return conn.send(event) or b""


async def _send_plan(
    conn: h11.Connection, stream: anyio.abc.SocketStream, plan: _Plan, head_only: bool
) -> bool:
    """Write the plan; False when the connection must not carry another request."""
    head = _wire(conn, h11.Response(status_code=plan.status, headers=list(plan.headers)))
    if head_only or not plan.streamed:
        body = b"" if head_only else b"".join(_wire(conn, h11.Data(data=p)) for p in plan.parts)
        await stream.send(head + body + _wire(conn, h11.EndOfMessage()))
        return True
    await stream.send(head)
    for index, part in enumerate(plan.parts):
        if index and plan.chunk_delay > 0:
            await anyio.sleep(plan.chunk_delay)
        await stream.send(_wire(conn, h11.Data(data=part)))
    if plan.close_after:
        return False  # abrupt close: no chunked terminator
    await stream.send(_wire(conn, h11.EndOfMessage()))
    return True


async def _next_event(conn: h11.Connection, stream: anyio.abc.ByteReceiveStream) -> object:
    while (event := conn.next_event()) is h11.NEED_DATA:
        try:
            data = await stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            data = b""
        conn.receive_data(data)
    return event


async def _read_request(
    conn: h11.Connection, stream: anyio.abc.ByteReceiveStream
) -> tuple[h11.Request, bytes] | None:
    request = await _next_event(conn, stream)
    if not isinstance(request, h11.Request):
        return None
    body = bytearray()
    while isinstance(event := await _next_event(conn, stream), h11.Data):
        body += event.data
        if len(body) > _MAX_BODY:
            raise h11.RemoteProtocolError("request body too large", 413)
    return (request, bytes(body)) if isinstance(event, h11.EndOfMessage) else None


@contextlib.contextmanager
def run_openai_emulator(
    models: Sequence[EmulatorModel] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api_key: str | None = None,
    strict_params: bool = False,
) -> Iterator[OpenAIEmulator]:
    """Serve an emulator from a background thread; ``emu.url`` ends in ``/v1``."""
    emulator = OpenAIEmulator(models, api_key=api_key, strict_params=strict_params)
    with start_blocking_portal(name="openai-emulator") as portal:
        portal.start_task(emulator.serve, host, port)
        try:
            yield emulator
        finally:
            portal.call(portal.stop, True)
