"""Translate a native ``/api/chat`` answer into an OpenAI ``chat.completion``.

Theory of operation: :func:`read_native_line` checks one native value -- a
whole non-stream body or one NDJSON stream line, they have the same shape
(docs/wire-notes.md, "The native chat answer" and "Chat stream chunks") -- and returns a
:class:`NativeLine` whose tool calls and logprobs are already in OpenAI form except for their ids.
:func:`ollama_chat_to_completion` (here) and
:class:`sansio_gateway.openai_over_ollama.chat_stream.OllamaChatStream` both build on it
and on the small helpers below, so a streamed and a non-streamed answer to
the same backend output agree on content, reasoning, tool-call ids, finish
reason and usage.

Decisions (see docs/openai-compatibility.md):

* ``model`` is the name the client asked for, not the backend's;
* ``system_fingerprint`` is the constant ``"fp_sansio"``;
* a tool call without a native id gets ``call_<completion id suffix>_<i>``,
  ``i`` being its position among the answer's calls: stable, and the same in
  both modes (Ollama before v0.12.10 sent no ids: docs/wire-notes.md, "Tool-call ids");
* ``content`` is ``None`` when the answer is only tool calls (Ollama sends
  ``""``, "The native chat answer"); the reasoning key appears only when there was thinking;
* when ``tool_choice`` forced a call (:class:`ForcedTool`), the JSON content
  becomes that call; content that is not the expected JSON (e.g. cut short by
  ``length``) is returned as content with the backend's finish reason.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from ..accounting.usage import read_ollama_usage as usage_from_ollama
from ..errors import UpstreamError
from ..wire.openai_chat import ForcedTool

__all__ = [
    "SYSTEM_FINGERPRINT",
    "NativeCall",
    "NativeLine",
    "finish_reason",
    "forced_tool_call",
    "ollama_chat_to_completion",
    "read_native_line",
    "tool_call_id",
    "usage_from_ollama",
]

SYSTEM_FINGERPRINT = "fp_sansio"


class NativeCall(NamedTuple):
    """A tool call: the native id (or None), the name, the arguments as a JSON string."""

    id: str | None
    name: str
    arguments: str


class NativeLine(NamedTuple):
    """One native chat value, checked.  ``logprobs`` are OpenAI entries."""

    content: str
    thinking: str
    tool_calls: list[NativeCall]
    logprobs: list[dict[str, Any]]
    done: bool
    done_reason: str


def _malformed(what: str) -> UpstreamError:
    return UpstreamError(f"upstream sent a malformed chat response ({what})")


def read_native_line(value: Any) -> NativeLine:
    """Check one native value; raises :class:`UpstreamError` for an in-band
    ``{"error": ...}`` (docs/wire-notes.md, "Errors in a stream") or anything malformed."""
    if type(value) is not dict:
        raise _malformed("not a JSON object")
    if "error" in value:
        raise UpstreamError(_error_message(value["error"]))
    msg = value.get("message")
    msg = {} if msg is None else msg
    if type(msg) is not dict:
        raise _malformed("message is not an object")
    done = value.get("done", False)
    done_reason = value.get("done_reason") or ""
    if type(done) is not bool or type(done_reason) is not str:
        raise _malformed("bad done or done_reason")
    return NativeLine(
        content=_text(msg, "content"),
        thinking=_text(msg, "thinking"),
        tool_calls=[_native_call(c) for c in _list(msg.get("tool_calls"), "tool_calls")],
        logprobs=[_logprob(e) for e in _list(value.get("logprobs"), "logprobs")],
        done=done,
        done_reason=done_reason,
    )


def _error_message(error: Any) -> str:
    if type(error) is str and error:
        return error
    if type(error) is dict and type(error.get("message")) is str:
        return str(error["message"])
    return "upstream error"


def _text(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise _malformed(f"{key} is not a string")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if type(value) is not list:
        raise _malformed(f"{what} is not an array")
    return value


def _native_call(call: Any) -> NativeCall:
    function = call.get("function") if type(call) is dict else None
    if type(function) is not dict or type(function.get("name")) is not str:
        raise _malformed("tool call without a function name")
    call_id = call.get("id") or None
    if call_id is not None and type(call_id) is not str:
        raise _malformed("tool call id is not a string")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = "{}"
    elif type(arguments) is not str:
        # Native arguments are an object; OpenAI wants its JSON text.
        try:
            arguments = orjson.dumps(arguments).decode()
        except orjson.JSONEncodeError:
            raise _malformed("tool call arguments are not JSON") from None
    return NativeCall(call_id, function["name"], arguments)


def _logprob(entry: Any) -> dict[str, Any]:
    """A native logprob entry as OpenAI's (``bytes`` and ``top_logprobs`` are
    required keys there; Ollama omits them when empty: docs/wire-notes.md, "The native chat
    answer")."""
    if type(entry) is not dict:
        raise _malformed("logprob entry is not an object")
    top = _list(entry.get("top_logprobs"), "top_logprobs")
    for t in top:
        if type(t) is not dict:
            raise _malformed("top_logprobs entry is not an object")
    return {
        "token": entry.get("token", ""),
        "logprob": entry.get("logprob", 0.0),
        "bytes": entry.get("bytes"),
        "top_logprobs": [
            {"token": t.get("token", ""), "logprob": t.get("logprob", 0.0), "bytes": t.get("bytes")}
            for t in top
        ],
    }


# -- shared by the completion and the stream ------------------------------------


def tool_call_id(completion_id: str, position: int) -> str:
    """The id of a call that came without one: derived from the completion id
    and the call's position, so both modes and retries of a render agree."""
    return f"call_{completion_id.rpartition('-')[2]}_{position}"


def finish_reason(done_reason: str, has_tool_calls: bool) -> str:
    """OpenAI's finish_reason: ``stop`` with calls is ``tool_calls``; empty is
    ``stop``; ``length`` and anything else (``load``, ``unload``) pass."""
    if not done_reason or done_reason == "stop":
        return "tool_calls" if has_tool_calls else "stop"
    return done_reason


def forced_tool_call(content: str, forced: ForcedTool) -> NativeCall | None:
    """The call a forced ``tool_choice`` made the model write as JSON, or
    None when ``content`` is not that JSON (then it stays content)."""
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not dict:
        return None
    if forced.name is not None:
        return NativeCall(None, forced.name, orjson.dumps(value).decode())
    name, arguments = value.get("name"), value.get("arguments")
    if name not in forced.names or type(arguments) is not dict:
        return None
    return NativeCall(None, name, orjson.dumps(arguments).decode())


# -- non-stream --------------------------------------------------------------------


def ollama_chat_to_completion(
    resp: dict[str, Any],
    *,
    completion_id: str,
    created: int,
    model: str,
    reasoning_field: str = "reasoning_content",
    forced_tool: ForcedTool | None = None,
) -> dict[str, Any]:
    """Build the ``chat.completion`` for a native non-stream body.

    ``model`` is the name the client sent; ``reasoning_field`` is where native
    thinking goes (``reasoning_content`` as most clients read, or Ollama's
    ``reasoning``: docs/wire-notes.md, "The reasoning field").  Raises :class:`UpstreamError` when
    the body is an error or malformed.
    """
    line = read_native_line(resp)
    calls = list(line.tool_calls)
    content = line.content
    if forced_tool is not None and content:
        forced = forced_tool_call(content, forced_tool)
        if forced is not None:
            calls.append(forced)
            content = ""
    message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
    message["refusal"] = None
    if line.thinking:
        message[reasoning_field] = line.thinking
    if calls:
        message["tool_calls"] = [_call(c, completion_id, k) for k, c in enumerate(calls)]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": {"content": line.logprobs} if line.logprobs else None,
        "finish_reason": finish_reason(line.done_reason, bool(calls)),
    }
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
        "usage": usage_from_ollama(resp).as_openai(),
    }


def _call(call: NativeCall, completion_id: str, position: int) -> dict[str, Any]:
    return {
        "id": call.id or tool_call_id(completion_id, position),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
