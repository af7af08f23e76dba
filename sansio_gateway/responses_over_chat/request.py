"""An OpenAI Responses request, said in the chat dialect.

Theory of operation: as for Anthropic (:mod:`sansio_gateway.anthropic_over_chat.request`),
:func:`responses_to_chat_body` writes a Chat Completions body -- what an
OpenAI-compatible backend is sent -- and :func:`responses_to_chat` parses it
into the ``ChatRequest`` the Ollama translator takes, so both backend kinds
see the request the chat surface would have built.

The mapping (docs/responses-compatibility.md, "Request fields"):

* ``instructions`` is a leading system message;
* message items are chat messages (``developer`` stays ``developer``,
  images stay ``image_url`` parts);
* consecutive ``function_call`` items join one assistant message's
  ``tool_calls`` (the preceding assistant message's, when there is one);
  ``function_call_output`` items are ``tool`` messages;
* echoed ``reasoning`` items become the next assistant message's
  ``reasoning_content``;
* ``max_output_tokens`` -> ``max_tokens``, ``reasoning.effort`` ->
  ``reasoning_effort``, ``text.format`` -> ``response_format``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..wire.openai_chat import ChatRequest, parse_chat_request
from ..wire.openai_responses import (
    FunctionCall,
    FunctionCallOutput,
    InputMessage,
    Reasoning,
    ResponsesRequest,
)

__all__ = ["chat_messages", "responses_to_chat", "responses_to_chat_body"]


def responses_to_chat(req: ResponsesRequest) -> ChatRequest:
    """The typed chat request the Ollama translator takes."""
    return parse_chat_request(orjson.dumps(responses_to_chat_body(req)))


def responses_to_chat_body(req: ResponsesRequest) -> dict[str, Any]:
    """The Chat Completions body for ``req`` (``model`` as the client named it)."""
    body: dict[str, Any] = {"model": req.model, "messages": chat_messages(req)}
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    optional = {
        "max_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "user": req.user,
        "reasoning_effort": req.reasoning_effort,
        "response_format": req.text_format,
        "tool_choice": req.tool_choice,
        "parallel_tool_calls": req.parallel_tool_calls,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if req.tools:
        body["tools"] = list(req.tools)
    return body


def chat_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.instructions:
        out.append({"role": "system", "content": req.instructions})
    reasoning: list[str] = []
    for item in req.items:
        if isinstance(item, Reasoning):
            reasoning.append(item.text)
            continue
        if isinstance(item, FunctionCallOutput):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
            continue
        if isinstance(item, FunctionCall):
            _add_call(out, item)
        else:
            out.append(_message(item))
        if out[-1]["role"] == "assistant" and reasoning:
            out[-1]["reasoning_content"] = "".join(reasoning)
            reasoning = []
    return out


def _message(item: InputMessage) -> dict[str, Any]:
    content = item.content if type(item.content) is str else list(item.content)
    return {"role": item.role, "content": content}


def _add_call(out: list[dict[str, Any]], item: FunctionCall) -> None:
    call = {"id": item.call_id, "type": "function",
            "function": {"name": item.name, "arguments": item.arguments}}  # fmt: skip
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})
