"""Strict parsing of an inbound Anthropic Messages request, and its errors.

Theory of operation: :func:`parse_messages_request` (``POST /v1/messages``)
and :func:`parse_count_tokens_request` (``POST /v1/messages/count_tokens``)
decode the body with orjson, refuse any key they do not know -- at the top
level and inside every block -- and return a frozen :class:`MessagesRequest`
whose blocks are typed values.  Every failure is an :class:`InvalidRequest`
whose message names the field the way Anthropic's API does
(``messages.0.content.1.source: ...``), rendered in Anthropic's envelope by
:func:`render_anthropic_error`.

What is accepted is what the gateway can carry to a chat backend
(docs/anthropic-compatibility.md, "Request fields"): text, base64 images,
``tool_use``/``tool_result``, thinking, custom tools.  URL and file image
sources, server tools (web search, code execution, computer use, ...), MCP
servers and containers are refused with a 400 that says so -- never dropped.
``cache_control`` is accepted on blocks and tools and has no effect: prompt
caching is a hint, and a local backend reuses its own KV cache anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import GatewayError, InvalidRequest

__all__ = [
    "ImageBlock",
    "Message",
    "MessagesRequest",
    "RedactedThinkingBlock",
    "TextBlock",
    "ThinkingBlock",
    "Tool",
    "ToolChoice",
    "ToolResultBlock",
    "ToolUseBlock",
    "anthropic_error_body",
    "anthropic_status_and_type",
    "count_tokens_request_from",
    "load_body",
    "messages_request_from",
    "parse_count_tokens_request",
    "parse_messages_request",
    "render_anthropic_error",
]

_MESSAGES_PARAMS = frozenset(
    (
        "model", "messages", "max_tokens", "system", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "metadata", "tools", "tool_choice", "thinking",
    )
)  # fmt: skip
_COUNT_PARAMS = frozenset(("model", "messages", "system", "tools", "tool_choice", "thinking"))
# Valid Anthropic parameters the gateway cannot honour: named, so the 400 says why.
_UNSUPPORTED_PARAMS = frozenset(
    ("container", "mcp_servers", "service_tier", "context_management", "output_format",
     "output_config", "inference_geo")
)  # fmt: skip
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_MAX_STOP = 4  # the chat dialect's cap, which every request is translated into
_MIN_THINKING_BUDGET = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class TextBlock:
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageBlock:
    media_type: str
    data: str  # base64


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolUseBlock:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResultBlock:
    tool_use_id: str
    text: str
    is_error: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ThinkingBlock:
    thinking: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RedactedThinkingBlock:
    """Reasoning Anthropic encrypted: an Anthropic backend reads it back, a
    chat backend cannot (the translation leaves it out)."""

    data: str


Block = (
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    role: str  # "user" or "assistant"
    content: tuple[Block, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tool:
    name: str
    description: str | None
    input_schema: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolChoice:
    type: str  # auto | any | tool | none
    name: str | None = None
    disable_parallel_tool_use: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesRequest:
    """A validated Messages (or count_tokens) request.

    ``thinking_budget`` is None when thinking was not mentioned, 0 when it
    was disabled, else ``budget_tokens``.  ``max_tokens`` is 0 only for
    count_tokens, which has none.  Next: translate with
    :func:`sansio_gateway.anthropic_over_chat.request.messages_to_chat`.
    """

    model: str
    messages: tuple[Message, ...]
    max_tokens: int = 0
    system: tuple[TextBlock, ...] = ()
    stop_sequences: tuple[str, ...] = ()
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    user_id: str | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    thinking_budget: int | None = None


# -- errors ---------------------------------------------------------------------------

# Anthropic's error types by the status we answer (the API reference's "Errors"
# page).  An overloaded backend is 529, which the SDK retries like a 503.
_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_status_and_type(err: GatewayError) -> tuple[int, str]:
    """The status and Anthropic error type for any gateway error.

    A 503 (an overloaded backend, an unavailable limit store) becomes
    Anthropic's 529 ``overloaded_error``; other 5xx keep their status as
    ``api_error``; other 4xx are ``invalid_request_error``."""
    status = 529 if err.status_code == 503 else err.status_code
    if status in _TYPES_BY_STATUS:
        return status, _TYPES_BY_STATUS[status]
    return status, ("api_error" if status >= 500 else "invalid_request_error")


def anthropic_error_body(err: GatewayError) -> dict[str, Any]:
    """The envelope, both as a response body and as a stream's ``error`` event."""
    _, type_ = anthropic_status_and_type(err)
    return {"type": "error", "error": {"type": type_, "message": err.message}}


def render_anthropic_error(err: GatewayError) -> bytes:
    return orjson.dumps(anthropic_error_body(err))


# -- typed helpers -------------------------------------------------------------------


def _invalid(at: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{at}: {message}" if at else message, param=at or None)


def _kind(value: Any, at: str, kind: type, name: str) -> Any:
    # ``type() is``: a JSON boolean is not an integer.
    if type(value) is not kind:
        raise _invalid(at, f"Input should be a valid {name}")
    return value


def _string(value: Any, at: str) -> str:
    return str(_kind(value, at, str, "string"))


def _object(value: Any, at: str) -> dict[str, Any]:
    out: dict[str, Any] = _kind(value, at, dict, "dictionary")
    return out


def _array(value: Any, at: str) -> list[Any]:
    out: list[Any] = _kind(value, at, list, "list")
    return out


def _integer(value: Any, at: str, lo: int) -> int:
    number = int(_kind(value, at, int, "integer"))
    if number < lo:
        raise _invalid(at, f"Input should be greater than or equal to {lo}")
    return number


def _number(value: Any, at: str, hi: float) -> float:
    if type(value) is not int and type(value) is not float:
        raise _invalid(at, "Input should be a valid number")
    if not 0 <= value <= hi:
        raise _invalid(at, f"Input should be between 0 and {hi:g}")
    return float(value)


def _need(obj: dict[str, Any], at: str, key: str) -> Any:
    if obj.get(key) is None:
        raise _invalid(f"{at}.{key}" if at else key, "Field required")
    return obj[key]


def _only(obj: dict[str, Any], at: str, allowed: frozenset[str]) -> None:
    for key in obj:
        if key not in allowed:
            where = f"{at}.{key}" if at else key
            if not at and key in _UNSUPPORTED_PARAMS:
                raise _invalid(where, "this parameter is not supported by this gateway")
            raise _invalid(where, "Extra inputs are not permitted")


def _one_of(value: Any, at: str, allowed: tuple[str, ...]) -> str:
    if _string(value, at) not in allowed:
        listed = ", ".join(f"'{a}'" for a in allowed)
        raise _invalid(at, f"Input should be {listed}")
    return str(value)


# -- top level -----------------------------------------------------------------------


def parse_messages_request(body: bytes) -> MessagesRequest:
    """Validate a ``POST /v1/messages`` body; raises :class:`InvalidRequest`."""
    return messages_request_from(load_body(body))


def messages_request_from(data: dict[str, Any]) -> MessagesRequest:
    """:func:`parse_messages_request` of a body already decoded (by
    :func:`load_body`); ``data`` is read, never changed."""
    _only(data, "", _MESSAGES_PARAMS)
    max_tokens = _integer(_need(data, "", "max_tokens"), "max_tokens", 1)
    thinking = _thinking(data.get("thinking"))
    if thinking and thinking >= max_tokens:
        raise _invalid("max_tokens", "`max_tokens` must be greater than `thinking.budget_tokens`")
    return MessagesRequest(
        **_common(data),
        max_tokens=max_tokens,
        thinking_budget=thinking,
        stop_sequences=_stop_sequences(data.get("stop_sequences")),
        stream=_opt(data, "stream", lambda v, at: _kind(v, at, bool, "boolean")) or False,
        temperature=_opt(data, "temperature", lambda v, at: _number(v, at, 1)),
        top_p=_opt(data, "top_p", lambda v, at: _number(v, at, 1)),
        top_k=_opt(data, "top_k", lambda v, at: _integer(v, at, 1)),
        user_id=_user_id(data.get("metadata")),
    )


def parse_count_tokens_request(body: bytes) -> MessagesRequest:
    """Validate a ``POST /v1/messages/count_tokens`` body (no ``max_tokens``)."""
    return count_tokens_request_from(load_body(body))


def count_tokens_request_from(data: dict[str, Any]) -> MessagesRequest:
    """:func:`parse_count_tokens_request` of a body already decoded."""
    _only(data, "", _COUNT_PARAMS)
    return MessagesRequest(**_common(data), thinking_budget=_thinking(data.get("thinking")))


def _common(data: dict[str, Any]) -> dict[str, Any]:
    model = _string(_need(data, "", "model"), "model")
    if not model:
        raise _invalid("model", "String should have at least 1 character")
    tools = _tools(data.get("tools"))
    return {
        "model": model,
        "messages": _messages(_need(data, "", "messages")),
        "system": _system(data.get("system")),
        "tools": tools,
        "tool_choice": _tool_choice(data.get("tool_choice"), tools),
    }


def load_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or the 400 for anything else."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if type(data) is not dict:
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def _opt(data: dict[str, Any], key: str, check: Any) -> Any:
    value = data.get(key)
    return None if value is None else check(value, key)


def _thinking(value: Any) -> int | None:
    if value is None:
        return None
    spec = _object(value, "thinking")
    kind = _one_of(_need(spec, "thinking", "type"), "thinking.type", ("enabled", "disabled"))
    if kind == "disabled":
        _only(spec, "thinking", frozenset(("type",)))
        return 0
    _only(spec, "thinking", frozenset(("type", "budget_tokens")))
    budget = _need(spec, "thinking", "budget_tokens")
    return _integer(budget, "thinking.budget_tokens", _MIN_THINKING_BUDGET)


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _array(value, "stop_sequences")
    if len(items) > _MAX_STOP:
        raise _invalid("stop_sequences", f"this gateway accepts at most {_MAX_STOP} sequences")
    return tuple(_string(s, f"stop_sequences.{i}") for i, s in enumerate(items))


def _user_id(value: Any) -> str | None:
    if value is None:
        return None
    metadata = _object(value, "metadata")
    _only(metadata, "metadata", frozenset(("user_id",)))
    user = metadata.get("user_id")
    return None if user is None else _string(user, "metadata.user_id")


def _system(value: Any) -> tuple[TextBlock, ...]:
    if value is None:
        return ()
    if type(value) is str:
        return (TextBlock(text=value),) if value else ()
    blocks = _array(value, "system")
    out = []
    for i, item in enumerate(blocks):
        block = _object(item, f"system.{i}")
        _one_of(_need(block, f"system.{i}", "type"), f"system.{i}.type", ("text",))
        out.append(_text(block, f"system.{i}"))
    return tuple(out)


# -- messages and blocks -------------------------------------------------------------

_BLOCKS_BY_ROLE = {
    "user": ("text", "image", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
}


def _messages(value: Any) -> tuple[Message, ...]:
    items = _array(value, "messages")
    if not items:
        raise _invalid("messages", "List should have at least 1 item after validation")
    out = []
    for i, item in enumerate(items):
        at = f"messages.{i}"
        msg = _object(item, at)
        _only(msg, at, frozenset(("role", "content")))
        role = _one_of(_need(msg, at, "role"), f"{at}.role", ("user", "assistant"))
        out.append(Message(role=role, content=_content(_need(msg, at, "content"), role, at)))
    return tuple(out)


def _content(value: Any, role: str, at: str) -> tuple[Block, ...]:
    if type(value) is str:
        return (TextBlock(text=value),)
    out = []
    for j, item in enumerate(_array(value, f"{at}.content")):
        where = f"{at}.content.{j}"
        block = _object(item, where)
        kind = _one_of(_need(block, where, "type"), f"{where}.type", _all_block_types())
        if kind not in _BLOCKS_BY_ROLE[role]:
            raise _invalid(f"{where}.type", f"'{kind}' blocks are not allowed in {role} messages")
        out.append(_block(kind, block, where))
    return tuple(out)


def _all_block_types() -> tuple[str, ...]:
    return ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking")


def _block(kind: str, block: dict[str, Any], at: str) -> Block:
    if kind == "text":
        return _text(block, at)
    if kind == "image":
        return _image(block, at)
    if kind == "tool_use":
        return _tool_use(block, at)
    if kind == "tool_result":
        return _tool_result(block, at)
    if kind == "thinking":
        _only(block, at, frozenset(("type", "thinking", "signature", "cache_control")))
        return ThinkingBlock(thinking=_string(_need(block, at, "thinking"), f"{at}.thinking"))
    # redacted_thinking: an Anthropic backend issues it and must get it back
    # (passthrough/anthropic.py); opaque to every other backend.
    _only(block, at, frozenset(("type", "data", "cache_control")))
    return RedactedThinkingBlock(data=_string(_need(block, at, "data"), f"{at}.data"))


def _text(block: dict[str, Any], at: str) -> TextBlock:
    _only(block, at, frozenset(("type", "text", "cache_control", "citations")))
    if block.get("citations") is not None:
        raise _invalid(f"{at}.citations", "citations are not supported by this gateway")
    return TextBlock(text=_string(_need(block, at, "text"), f"{at}.text"))


def _image(block: dict[str, Any], at: str) -> ImageBlock:
    _only(block, at, frozenset(("type", "source", "cache_control")))
    source = _object(_need(block, at, "source"), f"{at}.source")
    kind = _string(_need(source, f"{at}.source", "type"), f"{at}.source.type")
    if kind != "base64":
        # A URL would be fetched from inside the operator's network, and the
        # local backends take image bytes only.
        raise _invalid(
            f"{at}.source.type",
            f"image source '{kind}' is not supported by this gateway; send the image "
            "as base64 (source.type 'base64')",
        )
    _only(source, f"{at}.source", frozenset(("type", "media_type", "data")))
    media = _one_of(_need(source, f"{at}.source", "media_type"), f"{at}.source.media_type",
                    _IMAGE_TYPES)  # fmt: skip
    return ImageBlock(media_type=media, data=_string(_need(source, f"{at}.source", "data"),
                                                     f"{at}.source.data"))  # fmt: skip


def _tool_use(block: dict[str, Any], at: str) -> ToolUseBlock:
    _only(block, at, frozenset(("type", "id", "name", "input", "cache_control")))
    return ToolUseBlock(
        id=_string(_need(block, at, "id"), f"{at}.id"),
        name=_string(_need(block, at, "name"), f"{at}.name"),
        input=_object(_need(block, at, "input"), f"{at}.input"),
    )


def _tool_result(block: dict[str, Any], at: str) -> ToolResultBlock:
    _only(block, at, frozenset(("type", "tool_use_id", "content", "is_error", "cache_control")))
    error = block.get("is_error")
    return ToolResultBlock(
        tool_use_id=_string(_need(block, at, "tool_use_id"), f"{at}.tool_use_id"),
        text=_tool_result_text(block.get("content"), f"{at}.content"),
        is_error=False if error is None else bool(_kind(error, f"{at}.is_error", bool, "boolean")),
    )


def _tool_result_text(value: Any, at: str) -> str:
    # A chat backend's tool message holds text only, so image results are refused.
    if value is None or type(value) is str:
        return value or ""
    texts = []
    for k, item in enumerate(_array(value, at)):
        block = _object(item, f"{at}.{k}")
        kind = _string(_need(block, f"{at}.{k}", "type"), f"{at}.{k}.type")
        if kind != "text":
            raise _invalid(f"{at}.{k}.type", "tool results may hold text blocks only here")
        texts.append(_text(block, f"{at}.{k}").text)
    return "\n".join(texts)


# -- tools ---------------------------------------------------------------------------


def _tools(value: Any) -> tuple[Tool, ...]:
    if value is None:
        return ()
    out = []
    for i, item in enumerate(_array(value, "tools")):
        at = f"tools.{i}"
        tool = _object(item, at)
        kind = tool.get("type")
        if kind is not None and kind != "custom":
            raise _invalid(
                f"{at}.type",
                f"server tool '{kind}' is not supported by this gateway; only custom tools "
                "(name, description, input_schema) are",
            )
        _only(tool, at, frozenset(("type", "name", "description", "input_schema",
                                   "cache_control")))  # fmt: skip
        name = _string(_need(tool, at, "name"), f"{at}.name")
        if not name:
            raise _invalid(f"{at}.name", "String should have at least 1 character")
        description = tool.get("description")
        schema = _object(_need(tool, at, "input_schema"), f"{at}.input_schema")
        out.append(Tool(
            name=name,
            description=None if description is None else _string(description,
                                                                  f"{at}.description"),
            input_schema=schema,
        ))  # fmt: skip
    return tuple(out)


def _tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice | None:
    if value is None:
        return None
    spec = _object(value, "tool_choice")
    kinds = ("auto", "any", "tool", "none")
    kind = _one_of(_need(spec, "tool_choice", "type"), "tool_choice.type", kinds)
    keys = {"type", "disable_parallel_tool_use"} | ({"name"} if kind == "tool" else set())
    _only(spec, "tool_choice", frozenset(keys))
    name = None
    if kind == "tool":
        name = _string(_need(spec, "tool_choice", "name"), "tool_choice.name")
        if name not in {t.name for t in tools}:
            raise _invalid("tool_choice.name", f"Tool '{name}' not found in tools")
    elif kind == "any" and not tools:
        raise _invalid("tool_choice", "tool_choice 'any' requires tools")
    flag = spec.get("disable_parallel_tool_use")
    if flag is not None:
        _kind(flag, "tool_choice.disable_parallel_tool_use", bool, "boolean")
    return ToolChoice(type=kind, name=name, disable_parallel_tool_use=flag is True)
