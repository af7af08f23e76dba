"""A whole chat completion, said as an OpenAI Responses ``response``.

Theory of operation: :func:`chat_to_response` reads the ``chat.completion``
leniently and writes the output items in the order a stream of the same
answer opens them (see :mod:`.stream`): a ``reasoning`` item (its text as
``reasoning_text`` content), a ``message`` with one ``output_text`` part,
then one ``function_call`` per call.  The message is left out when the
answer is only tool calls.  Item ids are derived from the response id and
the item's output index, so the stream and the whole answer name them
alike without the core minting ids.

A ``finish_reason`` of ``length`` makes the response ``incomplete`` with
``incomplete_details.reason = "max_output_tokens"`` (``content_filter``
likewise), and its last item too; anything else is ``completed``.
"""

from __future__ import annotations

from typing import Any

from ..accounting.usage import TokenUsage
from ..anthropic_over_chat.response import as_dict, reasoning_of, usage_of
from ..errors import UpstreamError
from ..wire.openai_responses import ResponsesRequest

__all__ = ["chat_to_response", "incomplete_reason", "item_id", "response_object", "usage_object"]

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc"}


def item_id(response_id: str, kind: str, index: int) -> str:
    """``msg_<response suffix>_<output index>`` and likewise ``rs_``/``fc_``."""
    suffix = response_id.removeprefix("resp_")
    return f"{_PREFIXES[kind]}_{suffix}_{index}"


def incomplete_reason(finish: Any) -> str | None:
    return _INCOMPLETE.get(finish) if type(finish) is str else None


def usage_object(usage: TokenUsage | None) -> dict[str, Any]:
    usage = usage or TokenUsage()
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def response_object(
    req: ResponsesRequest,
    *,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete: str | None = None,
) -> dict[str, Any]:
    """The ``response`` object, echoing the request the way OpenAI does."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": None if incomplete is None else {"reason": incomplete},
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata or {},
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": None,
        "reasoning": {"effort": req.reasoning_effort, "summary": None},
        "store": False,
        "temperature": req.temperature,
        "text": {"format": _format(req.text_format)},
        "tool_choice": _choice(req.tool_choice),
        "tools": [_tool(t) for t in req.tools],
        "top_p": req.top_p,
        "truncation": "disabled",
        "usage": usage,
        "user": req.user,
    }


def _format(fmt: dict[str, Any] | None) -> dict[str, Any]:
    if fmt is None:
        return {"type": "text"}
    if fmt["type"] == "json_schema":
        return {"type": "json_schema", **fmt["json_schema"]}
    return {"type": fmt["type"]}


def _choice(choice: Any) -> Any:
    if choice is None:
        return "auto"
    if type(choice) is dict and choice.get("type") == "function":
        return {"type": "function", "name": choice["function"]["name"]}
    if type(choice) is dict:
        spec = choice["allowed_tools"]
        tools = [{"type": "function", "name": t["function"]["name"]} for t in spec["tools"]]
        return {"type": "allowed_tools", "mode": spec["mode"], "tools": tools}
    return choice


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    return {"type": "function", "strict": function.get("strict"), **function}


def chat_to_response(
    completion: dict[str, Any], req: ResponsesRequest, *, response_id: str, created_at: int
) -> dict[str, Any]:
    """The ``response`` for a whole ``chat.completion``.

    ``response_id`` and ``created_at`` (Unix seconds) come from the caller.
    Raises :class:`UpstreamError` for an answer without choices."""
    choices = completion.get("choices")
    if type(choices) is not list or not choices or type(choices[0]) is not dict:
        raise UpstreamError("the backend's answer has no choices")
    choice = choices[0]
    message = as_dict(choice.get("message"))
    incomplete = incomplete_reason(choice.get("finish_reason"))
    output = output_items(message, response_id, "incomplete" if incomplete else "completed")
    return response_object(
        req,
        response_id=response_id,
        created_at=created_at,
        status="incomplete" if incomplete else "completed",
        output=output,
        usage=usage_object(usage_of(completion.get("usage"))),
        incomplete=incomplete,
    )


def output_items(message: dict[str, Any], response_id: str, status: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    reasoning = reasoning_of(message)
    if reasoning:
        out.append(reasoning_item(item_id(response_id, "reasoning", 0), reasoning))
    calls = [as_dict(c) for c in message.get("tool_calls") or () if type(c) is dict]
    content = message.get("content")
    text = content if type(content) is str else ""
    if text or not calls:
        out.append(message_item(item_id(response_id, "message", len(out)), text, "completed"))
    for call in calls:
        function = as_dict(call.get("function"))
        out.append(function_call_item(
            item_id(response_id, "function_call", len(out)),
            call_id=str(call.get("id") or ""),
            name=str(function.get("name") or ""),
            arguments=str(function.get("arguments") or ""),
        ))  # fmt: skip
    # Only the item the answer was cut in is incomplete; the stream closes
    # the earlier ones before it learns how the answer ends.
    out[-1]["status"] = status
    return out


def reasoning_item(id_: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": id_, "type": "reasoning", "summary": [], "content": content, "status": status}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(id_: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [text_part(text)]
    return {"id": id_, "type": "message", "role": "assistant", "status": status,
            "content": content}  # fmt: skip


def function_call_item(
    id_: str, *, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {"id": id_, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip
