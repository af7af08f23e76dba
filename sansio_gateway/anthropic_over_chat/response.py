"""A whole chat completion, said as an Anthropic ``message``.

Theory of operation: :func:`chat_to_message` reads the backend's (or the
Ollama translator's) ``chat.completion`` leniently and writes the message:
a ``thinking`` block for the reasoning, a ``text`` block for the content and
one ``tool_use`` block per call, in that order -- the order a stream of the
same answer produces (see :mod:`.stream`), so both agree block for block.

Helpers shared with the stream translator live here too: the stop reason
(:func:`stop_reason`) and tool arguments as an object (:func:`tool_input`).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..errors import UpstreamError

__all__ = ["as_dict", "chat_to_message", "reasoning_of", "stop_reason", "tool_input", "usage_of"]

_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def stop_reason(finish: Any, matched: Any, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)`` for a chat ``finish_reason``.

    Chat backends do not say which stop sequence ended the answer, except
    vLLM, whose choice carries the matched string as ``stop_reason``; when
    that string is one of the request's, the answer is ``stop_sequence``
    (docs/anthropic-compatibility.md, "Stop reasons")."""
    if finish == "stop" and type(matched) is str and matched in stops:
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish, "end_turn"), None


def tool_input(arguments: Any, name: str) -> dict[str, Any]:
    """A call's arguments as the object ``tool_use.input`` must be."""
    if arguments is None or arguments == "":
        return {}
    if type(arguments) is dict:
        return arguments
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if type(value) is not dict:
        raise UpstreamError(f"the backend's arguments for tool '{name}' are not a JSON object")
    return value


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is an object, else empty: backend answers are read leniently."""
    return value if type(value) is dict else {}


def usage_of(value: Any) -> TokenUsage | None:
    if type(value) is not dict:
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens")
    if type(prompt) is not int or type(completion) is not int:
        return None
    return TokenUsage(prompt_tokens=prompt, completion_tokens=completion)


def reasoning_of(message: dict[str, Any]) -> str:
    """Reasoning text under either name the chat dialect uses for it."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if type(value) is str and value:
            return value
    return ""


def anthropic_usage(usage: TokenUsage | None) -> dict[str, int]:
    usage = usage or TokenUsage()
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}


def chat_to_message(
    completion: dict[str, Any], *, model: str, message_id: str, stops: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The Anthropic ``message`` for a whole ``chat.completion``.

    ``model`` is the name the client asked for; ``message_id`` comes from
    the caller (the core mints no ids); ``stops`` are the request's
    ``stop_sequences``.  Raises :class:`UpstreamError` for an answer with no
    choice or with tool arguments that are not a JSON object."""
    choices = completion.get("choices")
    if type(choices) is not list or not choices or type(choices[0]) is not dict:
        raise UpstreamError("the backend's answer has no choices")
    choice = choices[0]
    message = as_dict(choice.get("message"))
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), stops)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _blocks(message),
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage(usage_of(completion.get("usage"))),
    }


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    thinking = reasoning_of(message)
    if thinking:
        blocks.append({"type": "thinking", "thinking": thinking, "signature": ""})
    content = message.get("content")
    if type(content) is str and content:
        blocks.append({"type": "text", "text": content})
    calls = message.get("tool_calls")
    for call in calls if type(calls) is list else ():
        function = as_dict(as_dict(call).get("function"))
        name = str(function.get("name") or "")
        blocks.append({
            "type": "tool_use",
            "id": str(as_dict(call).get("id") or ""),
            "name": name,
            "input": tool_input(function.get("arguments"), name),
        })  # fmt: skip
    return blocks
