"""An Anthropic Messages request, said in the chat dialect.

Theory of operation: :func:`messages_to_chat_body` writes the request as an
OpenAI Chat Completions body (a dict), and :func:`messages_to_chat` runs that
body through :func:`~sansio_gateway.wire.openai_chat.parse_chat_request`.
Going through the body rather than building a ``ChatRequest`` by hand is
deliberate: the body is exactly what an OpenAI-compatible backend is sent
(after the route rewrites ``model``), the ``ChatRequest`` is exactly what the
Ollama translator takes, and both are derived the way the chat surface
derives them (``tool_choice`` subsets, forced tools), so neither can drift.
The extra encode and parse costs a few microseconds per request.

The mapping (docs/anthropic-compatibility.md, "Request fields"):

* ``system`` blocks become one leading system message, joined by newlines;
* a user turn's ``tool_result`` blocks become ``tool`` messages, in order,
  ahead of the turn's remaining text and images (Anthropic puts results
  first, and the chat dialect needs them right after the assistant's calls);
* an assistant turn's ``thinking`` becomes ``reasoning_content``, its text
  ``content`` and its ``tool_use`` blocks ``tool_calls``;
* ``thinking.budget_tokens`` becomes ``reasoning_effort`` by size, and
  disabled thinking ``"none"``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.tokens import estimate_messages
from ..wire.anthropic import (
    ImageBlock,
    Message,
    MessagesRequest,
    TextBlock,
    ThinkingBlock,
    ToolChoice,
    ToolResultBlock,
    ToolUseBlock,
)
from ..wire.openai_chat import ChatRequest, parse_chat_request

__all__ = [
    "count_tokens_estimate",
    "effort_for_budget",
    "messages_to_chat",
    "messages_to_chat_body",
]

# budget_tokens -> reasoning_effort: the thresholds split Anthropic's usual
# budgets (1,024 minimum; 4k-16k typical; 32k+ for deep work) into thirds.
_EFFORT_STEPS = ((4096, "low"), (16384, "medium"))
_TOOL_ERROR_PREFIX = "Error: "


def effort_for_budget(budget: int) -> str:
    """``reasoning_effort`` for a ``thinking`` budget (0 means disabled)."""
    if budget == 0:
        return "none"
    for limit, effort in _EFFORT_STEPS:
        if budget < limit:
            return effort
    return "high"


def messages_to_chat(req: MessagesRequest) -> ChatRequest:
    """The typed chat request the Ollama translator takes."""
    return parse_chat_request(orjson.dumps(messages_to_chat_body(req)))


def messages_to_chat_body(req: MessagesRequest) -> dict[str, Any]:
    """The Chat Completions body for ``req`` (``model`` as the client named it)."""
    body: dict[str, Any] = {"model": req.model, "messages": chat_messages(req)}
    if req.max_tokens:
        body["max_tokens"] = req.max_tokens
    if req.stream:
        # The gateway needs the real counts; the stream translator reads them.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    optional = {
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "user": req.user_id,
        "stop": list(req.stop_sequences) or None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if req.thinking_budget is not None:
        body["reasoning_effort"] = effort_for_budget(req.thinking_budget)
    body.update(_tools(req))
    return body


def chat_messages(req: MessagesRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": "\n".join(b.text for b in req.system)})
    for msg in req.messages:
        out += _assistant(msg) if msg.role == "assistant" else _user(msg)
    return out


def _user(msg: Message) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in msg.content:
        if isinstance(block, ToolResultBlock):
            text = _TOOL_ERROR_PREFIX + block.text if block.is_error else block.text
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": text})
        elif isinstance(block, ImageBlock):
            url = f"data:{block.media_type};base64,{block.data}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts or not out:
        out.append({"role": "user", "content": parts or ""})
    return out


def _assistant(msg: Message) -> list[dict[str, Any]]:
    # A redacted_thinking block is Anthropic's encrypted reasoning: no chat
    # backend can read it, so it is left out, as an echoed Responses
    # reasoning item's encrypted_content is (docs/anthropic-compatibility.md).
    texts = [b.text for b in msg.content if isinstance(b, TextBlock)]
    thinking = [b.thinking for b in msg.content if isinstance(b, ThinkingBlock)]
    calls = [_call(b) for b in msg.content if isinstance(b, ToolUseBlock)]
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if thinking:
        out["reasoning_content"] = "".join(thinking)
    if calls:
        out["tool_calls"] = calls
    elif out["content"] is None:
        out["content"] = ""
    return [out]


def _call(block: ToolUseBlock) -> dict[str, Any]:
    arguments = orjson.dumps(block.input).decode()
    return {"id": block.id, "type": "function", "function": {"name": block.name,
                                                             "arguments": arguments}}  # fmt: skip


def _tools(req: MessagesRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if req.tools:
        out["tools"] = [_tool(t.name, t.description, t.input_schema) for t in req.tools]
    choice = req.tool_choice
    if choice is not None:
        out["tool_choice"] = _choice(choice)
        if choice.disable_parallel_tool_use:
            out["parallel_tool_calls"] = False
    return out


def _tool(name: str, description: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if description is not None:
        function["description"] = description
    return {"type": "function", "function": function}


def _choice(choice: ToolChoice) -> Any:
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    # "any" is OpenAI's "required"; without tools the chat dialect refuses
    # any tool_choice, and Anthropic's "auto"/"none" then mean nothing.
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def count_tokens_estimate(req: MessagesRequest) -> dict[str, int]:
    """``count_tokens``'s answer: the gateway's admission estimate of the
    prompt, an upper bound rather than the model's tokenizer count
    (docs/anthropic-compatibility.md, "count_tokens")."""
    body = messages_to_chat_body(req)
    return {"input_tokens": estimate_messages(body["messages"], tools=body.get("tools", ()))}
