"""The OpenAI emulator's Responses API (``POST /v1/responses``): a turn rendered as a
``response`` object, or as the Responses event stream.

A turn (``emulator.openai._take_turn``: reasoning pieces, content pieces, complete tool
calls, finish reason, usage) becomes output items in OpenAI's order -- a ``reasoning`` item,
a ``message`` with one ``output_text`` part, one ``function_call`` item per call -- and the
stream says them as ``response.created``, ``response.in_progress``, per item
``response.output_item.added``, its parts and deltas and their ``.done`` events,
``response.output_item.done``, then ``response.completed`` (``response.incomplete`` when the
answer was cut at ``max_output_tokens``), every event numbered by ``sequence_number``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

__all__ = [
    "RESPONSES_PARAMS",
    "check_responses_input",
    "response_events",
    "response_object",
]

# CreateResponse's parameters.
RESPONSES_PARAMS = frozenset(
    (
        "model", "input", "instructions", "tools", "tool_choice", "max_output_tokens",
        "reasoning", "text", "stream", "stream_options", "temperature", "top_p", "user",
        "metadata", "store", "previous_response_id", "conversation", "background",
        "parallel_tool_calls", "include", "prompt_cache_key", "safety_identifier",
        "service_tier", "truncation", "max_tool_calls", "top_logprobs", "prompt",
    )
)  # fmt: skip


def check_responses_input(items: Any) -> str | None:
    """What OpenAI refuses in ``input`` (None when nothing): a ``function_call_output``
    whose ``call_id`` no earlier ``function_call`` item has."""
    if isinstance(items, str):
        return None
    if not isinstance(items, list) or not items:
        return "Invalid 'input': expected a string or a non-empty array."
    calls: set[str] = set()
    for item in items:
        if not isinstance(item, dict):
            return "Invalid 'input': items must be objects."
        if item.get("type") == "function_call":
            calls.add(str(item.get("call_id")))
        elif item.get("type") == "function_call_output" and item.get("call_id") not in calls:
            return (
                f"No tool call found for function call output with call_id {item.get('call_id')}."
            )
    return None


def _items(rid: str, turn: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if turn.reasoning:
        text = "".join(turn.reasoning)
        items.append({"type": "reasoning", "id": f"rs_{rid}", "summary": [],
                      "content": [{"type": "reasoning_text", "text": text}]})  # fmt: skip
    if turn.content or not turn.calls:
        part = {"type": "output_text", "text": "".join(turn.content), "annotations": [],
                "logprobs": []}  # fmt: skip
        items.append({"type": "message", "id": f"msg_{rid}", "status": "completed",
                      "role": "assistant", "content": [part]})  # fmt: skip
    for n, call in enumerate(turn.calls):
        items.append({"type": "function_call", "id": f"fc_{rid}_{n}", "call_id": call["id"],
                      "name": call["function"]["name"],
                      "arguments": call["function"]["arguments"], "status": "completed"})  # fmt: skip
    return items


def response_object(
    rid: str, model: str, data: dict[str, Any], turn: Any, *, status: str | None = None
) -> dict[str, Any]:
    """The whole ``response``; ``status`` "in_progress" gives the stream's opening one."""
    cut = turn.finish_reason == "length"
    final = "incomplete" if cut else "completed"
    started = status == "in_progress"
    usage = {
        "input_tokens": turn.usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": turn.usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": len(turn.reasoning)},
        "total_tokens": turn.usage["total_tokens"],
    }
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status or final,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut and not started else None,
        "instructions": data.get("instructions"),
        "max_output_tokens": data.get("max_output_tokens"),
        "model": model,
        "output": [] if started else _items(rid, turn),
        "parallel_tool_calls": data.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": data.get("reasoning") or {"effort": None, "summary": None},
        "store": data.get("store", True),
        "temperature": data.get("temperature", 1.0),
        "text": data.get("text") or {"format": {"type": "text"}},
        "tool_choice": data.get("tool_choice", "auto"),
        "tools": data.get("tools") or [],
        "top_p": data.get("top_p", 1.0),
        "usage": None if started else usage,
        "metadata": data.get("metadata") or {},
    }


class _Events:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def add(self, kind: str, **fields: Any) -> None:
        payload = {"type": kind, "sequence_number": len(self.out), **fields}
        self.out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")


def response_events(
    rid: str, model: str, data: dict[str, Any], turn: Any, argument_piece: int
) -> list[bytes]:
    """The turn as the Responses event stream."""
    events = _Events()
    opening = response_object(rid, model, data, turn, status="in_progress")
    events.add("response.created", response=opening)
    events.add("response.in_progress", response=opening)
    final = response_object(rid, model, data, turn)
    for index, item in enumerate(final["output"]):
        _item_events(events, index, item, turn, max(1, argument_piece))
    events.add(f"response.{final['status']}", response=final)
    return events.out


def _item_events(events: _Events, index: int, item: dict[str, Any], turn: Any, size: int) -> None:
    at = {"output_index": index, "item_id": item["id"]}
    if item["type"] == "function_call":
        events.add("response.output_item.added", output_index=index,
                   item={**item, "arguments": "", "status": "in_progress"})  # fmt: skip
        text = item["arguments"]
        for start in range(0, len(text), size):
            events.add("response.function_call_arguments.delta", **at,
                       delta=text[start : start + size])  # fmt: skip
        events.add("response.function_call_arguments.done", **at, arguments=text)
    else:
        reasoning = item["type"] == "reasoning"
        pieces = turn.reasoning if reasoning else turn.content
        part_type, kind = (
            ("reasoning_text", "reasoning_text") if reasoning else ("output_text", "output_text")
        )
        empty = {**item, "content": []}
        if not reasoning:
            empty["status"] = "in_progress"
        events.add("response.output_item.added", output_index=index, item=empty)
        blank: dict[str, Any] = {"type": part_type, "text": ""}
        if not reasoning:
            blank |= {"annotations": [], "logprobs": []}
        events.add("response.content_part.added", **at, content_index=0, part=blank)
        for piece in pieces:
            events.add(f"response.{kind}.delta", **at, content_index=0, delta=piece)
        events.add(f"response.{kind}.done", **at, content_index=0, text="".join(pieces))
        events.add("response.content_part.done", **at, content_index=0, part=item["content"][0])
    events.add("response.output_item.done", output_index=index, item=item)
