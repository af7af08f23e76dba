"""Translate OpenAI-compatible answers into native Ollama answers.

Theory of operation: the flows hand a whole upstream body to one of
:func:`chat_completion_to_ollama` (a ``chat.completion``, for ``/api/chat``
or ``/api/generate``), :func:`completion_to_ollama` (a ``text_completion``,
for ``/api/generate`` in raw/suffix mode) or :func:`embeddings_to_ollama`,
and get the native object back.  The small helpers below --
:func:`rfc3339`, :func:`done_reason`, :func:`tool_arguments`,
:func:`native_tool_calls`, and the dialect's one usage reader
:func:`usage_from_openai` (accounting/usage.py) -- are shared with the
stream translator (:mod:`sansio_gateway.ollama_over_openai.stream`), so a
streamed and a whole answer agree field by field.

Decisions (docs/wire-notes.md, "Serving Ollama clients from an OpenAI backend";
docs/ollama-compatibility.md):

* ``model`` is the name the client asked for; ``created_at`` is RFC 3339 UTC
  of the ``now`` the caller passes in (the core reads no clock);
* ``done_reason``: ``stop`` and ``tool_calls`` -> ``stop`` (Ollama never says
  ``tool_calls``), ``length`` -> ``length``, ``content_filter`` -> ``stop``,
  absent -> ``stop``, anything else passes through;
* tool-call arguments are parsed into an object; ``""`` is ``{}``, and text
  that is not a JSON object is kept as ``{"raw": "<text>"}`` so native
  clients, which expect an object, still get one and lose nothing;
* reasoning comes from ``reasoning_content`` or ``reasoning`` (servers
  disagree on the name: docs/wire-notes.md, "The reasoning field") and becomes ``thinking``;
* ``prompt_eval_count``/``eval_count`` come from ``usage``; durations are
  omitted (optional on the wire; we would only be inventing them);
* a 200 body that holds an ``error`` key is an upstream error.
"""

from __future__ import annotations

import base64
import binascii
import enum
import struct
from datetime import UTC, datetime
from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..accounting.usage import read_openai_usage as usage_from_openai
from ..errors import UpstreamError

__all__ = [
    "Shape",
    "chat_completion_to_ollama",
    "completion_to_ollama",
    "done_reason",
    "embeddings_to_ollama",
    "error_message",
    "final_line",
    "native_tool_calls",
    "reasoning_of",
    "rfc3339",
    "tool_arguments",
    "usage_from_openai",
]

_EPOCH = "1970-01-01T00:00:00Z"
_DONE_REASONS = {
    "stop": "stop",
    "tool_calls": "stop",  # Ollama never says tool_calls natively
    "function_call": "stop",
    "length": "length",
    "content_filter": "stop",  # no native equivalent; the least surprising
}


class Shape(enum.Enum):
    """Where a native answer puts its text: ``/api/chat`` or ``/api/generate``."""

    CHAT = "chat"
    GENERATE = "generate"


# -- small shared helpers ------------------------------------------------------------------


def rfc3339(now: float) -> str:
    """``now`` (Unix seconds) as Go's RFC3339Nano prints UTC: the fraction
    loses its trailing zeros.  Out-of-range values give the epoch."""
    try:
        moment = datetime.fromtimestamp(now, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return _EPOCH
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    head = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{fraction}Z" if fraction else f"{head}Z"


def done_reason(finish_reason: Any) -> str:
    if type(finish_reason) is not str or not finish_reason:
        return "stop"
    return _DONE_REASONS.get(finish_reason, finish_reason)


def tool_arguments(raw: Any) -> dict[str, Any]:
    """A call's arguments as the object native clients expect (see the
    module docstring for the policy on text that is not a JSON object)."""
    if type(raw) is dict:
        return raw
    if raw is None or (type(raw) is str and not raw.strip()):
        return {}
    text = raw if type(raw) is str else orjson.dumps(raw).decode()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    return value if type(value) is dict else {"raw": text}


def native_tool_calls(calls: list[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    """``(id, name, arguments)`` triples as native calls; ``function.index``
    is the position, as Ollama numbers parallel calls."""
    return [
        {"id": call_id, "function": {"index": i, "name": name, "arguments": tool_arguments(args)}}
        for i, (call_id, name, args) in enumerate(calls)
    ]


def reasoning_of(obj: dict[str, Any]) -> str:
    value = obj.get("reasoning_content") or obj.get("reasoning")
    return value if type(value) is str else ""


def error_message(error: Any) -> str:
    """The text of an OpenAI ``error`` value (object or string)."""
    if type(error) is str and error:
        return error
    if type(error) is dict and type(error.get("message")) is str and error["message"]:
        return str(error["message"])
    return "upstream error"


def body_line(
    shape: Shape, model: str, created_at: str, content: str, thinking: str
) -> dict[str, Any]:
    """A native answer object without its ``done`` part."""
    line: dict[str, Any] = {"model": model, "created_at": created_at}
    if shape is Shape.CHAT:
        message = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        line["message"] = message
    else:
        line["response"] = content
        if thinking:
            line["thinking"] = thinking
    return line


def final_line(
    shape: Shape, model: str, created_at: str, reason: str, usage: TokenUsage | None
) -> dict[str, Any]:
    """The ``done: true`` line that ends a native stream (empty message)."""
    line = body_line(shape, model, created_at, "", "")
    return _finished(line, reason, usage)


def _finished(line: dict[str, Any], reason: str, usage: TokenUsage | None) -> dict[str, Any]:
    line["done"] = True
    line["done_reason"] = reason
    if usage is not None:
        line["prompt_eval_count"] = usage.prompt_tokens
        line["eval_count"] = usage.completion_tokens
    return line


# -- whole answers -------------------------------------------------------------------------------


def _load(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError("backend sent a response that is not JSON") from None
    if type(value) is not dict:
        raise UpstreamError("backend sent an unexpected response (not a JSON object)")
    if "error" in value:
        raise UpstreamError(error_message(value["error"]))
    return value


def _first_choice(answer: dict[str, Any]) -> dict[str, Any]:
    choices = answer.get("choices")
    if type(choices) is not list or not choices or type(choices[0]) is not dict:
        raise UpstreamError("backend sent an unexpected response (no choices)")
    return choices[0]


def chat_completion_to_ollama(
    body: bytes, *, shape: Shape, model: str, created_at: str
) -> tuple[dict[str, Any], TokenUsage | None]:
    """A ``chat.completion`` body -> (the native answer, its usage).

    Raises :class:`UpstreamError` when the body is not a completion.
    """
    answer = _load(body)
    choice = _first_choice(answer)
    message = choice.get("message")
    if type(message) is not dict:
        raise UpstreamError("backend sent an unexpected response (no message)")
    content = message.get("content")
    text = content if type(content) is str else ""
    line = body_line(shape, model, created_at, text, reasoning_of(message))
    calls = _calls_of(message.get("tool_calls"))
    if calls and shape is Shape.CHAT:
        line["message"]["tool_calls"] = native_tool_calls(calls)
    logprobs = logprobs_of(choice)
    if logprobs:
        line["logprobs"] = logprobs
    usage = usage_from_openai(answer.get("usage"))
    return _finished(line, done_reason(choice.get("finish_reason")), usage), usage


def _calls_of(value: Any) -> list[tuple[str, str, Any]]:
    out = []
    for call in value if type(value) is list else ():
        function = call.get("function") if type(call) is dict else None
        if type(function) is not dict or type(function.get("name")) is not str:
            raise UpstreamError("backend sent a tool call without a function name")
        call_id = call.get("id")
        out.append(
            (call_id if type(call_id) is str else "", function["name"], function.get("arguments"))
        )
    return out


def logprobs_of(choice: dict[str, Any]) -> list[Any]:
    """Chat logprob entries are already in the native shape (docs/wire-notes.md, "The native chat
    answer"):
    ``{token, logprob, bytes, top_logprobs}``."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if type(logprobs) is dict else None
    return content if type(content) is list else []


def completion_to_ollama(
    body: bytes, *, model: str, created_at: str
) -> tuple[dict[str, Any], TokenUsage | None]:
    """A ``text_completion`` body -> (the native ``/api/generate`` answer, usage)."""
    answer = _load(body)
    choice = _first_choice(answer)
    text = choice.get("text")
    line = body_line(Shape.GENERATE, model, created_at, text if type(text) is str else "", "")
    usage = usage_from_openai(answer.get("usage"))
    return _finished(line, done_reason(choice.get("finish_reason")), usage), usage


def embeddings_to_ollama(
    body: bytes, *, model: str, legacy: bool
) -> tuple[dict[str, Any], TokenUsage | None]:
    """An embeddings list -> ``{model, embeddings, prompt_eval_count}`` or, for
    the legacy endpoint, ``{"embedding": [...]}``.  ``data`` is ordered by
    ``index``; base64 vectors (little-endian float32) are decoded."""
    answer = _load(body)
    data = answer.get("data")
    if type(data) is not list or any(type(item) is not dict for item in data):
        raise UpstreamError("backend sent an unexpected embeddings response")
    ordered = sorted(data, key=lambda item: _index(item.get("index")))
    vectors = [_vector(item.get("embedding")) for item in ordered]
    usage = usage_from_openai(answer.get("usage"))
    if legacy:
        return {"embedding": vectors[0] if vectors else []}, usage
    out: dict[str, Any] = {"model": model, "embeddings": vectors}
    if usage is not None:
        out["prompt_eval_count"] = usage.prompt_tokens
    return out, usage


def _index(value: Any) -> int:
    return value if type(value) is int else 0


def _vector(value: Any) -> list[float]:
    if type(value) is list and all(type(x) in (int, float) for x in value):
        return value
    if type(value) is str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raw = b"\0"
        if len(raw) % 4 == 0:
            return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    raise UpstreamError("backend sent an embedding that is neither floats nor base64")
