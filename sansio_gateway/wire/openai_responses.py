"""Strict parsing of an inbound OpenAI Responses request (``POST /v1/responses``).

Theory of operation: :func:`parse_responses_request` decodes the body,
refuses any top-level key it does not know, checks each parameter and
returns a frozen :class:`ResponsesRequest` whose ``items`` are the input
as typed values.  Failures are :class:`InvalidRequest` with OpenAI's wording
and ``param`` naming (``input[0].content[1].type``), rendered in OpenAI's
envelope like every other /v1 error.

The gateway is stateless (docs/responses-compatibility.md, "No conversation
state"): ``store: true``, ``previous_response_id``, ``conversation``,
``background`` and ``item_reference`` inputs all need the server to keep
responses, so each gets a 400 that says so.  Built-in tools (web search,
file search, computer use, code interpreter, ...) run on OpenAI's servers
and get a 400 too; only ``function`` tools are carried to the backend.
Unknown keys inside items are tolerated where clients echo whole output
items back (``id``, ``status``, ``annotations``), refused elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest
from .openai_chat import REASONING_EFFORTS, _load

__all__ = [
    "FunctionCall",
    "FunctionCallOutput",
    "InputMessage",
    "Reasoning",
    "ResponsesRequest",
    "load_body",
    "parse_responses_request",
    "responses_request_from",
]

# fmt: off
_PARAMS = frozenset((
    "model", "input", "instructions", "tools", "tool_choice", "max_output_tokens", "reasoning",
    "text", "stream", "stream_options", "temperature", "top_p", "user", "metadata", "store",
    "previous_response_id", "conversation", "background", "parallel_tool_calls", "include",
    "prompt_cache_key", "safety_identifier", "service_tier", "truncation", "max_tool_calls",
    "top_logprobs", "prompt",
))
# fmt: on
_STATELESS = (
    "this gateway keeps no conversation state: send the whole conversation in 'input' "
    "(with 'store' false or absent)"
)
_NOT_SUPPORTED = ("max_tool_calls", "top_logprobs", "prompt")
_INCLUDES = ("reasoning.encrypted_content",)
_ROLES = ("user", "assistant", "system", "developer")
_PART_TYPES = {
    "user": ("input_text", "input_image"),
    "system": ("input_text",),
    "developer": ("input_text",),
    "assistant": ("output_text", "refusal", "input_text"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class InputMessage:
    """``content`` is the text, or chat content parts when there are images."""

    role: str
    content: str | tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCall:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCallOutput:
    call_id: str
    output: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reasoning:
    """Reasoning the client echoes back (its plain-text content)."""

    text: str


Item = InputMessage | FunctionCall | FunctionCallOutput | Reasoning


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponsesRequest:
    """A validated Responses request.

    ``tools`` hold chat-dialect function tools; ``tool_choice`` is the chat
    dialect's spelling.  ``text_format`` is the chat ``response_format`` (None
    for plain text).  Next:
    :func:`sansio_gateway.responses_over_chat.request.responses_to_chat`."""

    model: str
    items: tuple[Item, ...]
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    text_format: dict[str, Any] | None = None


# -- typed helpers -------------------------------------------------------------------

_NAMES = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string",
          list: "an array", dict: "an object", type(None): "null"}  # fmt: skip


def _check(value: Any, param: str, kind: type) -> Any:
    if type(value) is not kind:
        got = _NAMES.get(type(value), "an unknown type")
        raise InvalidRequest(
            f"Invalid type for '{param}': expected {_NAMES[kind]}, but got {got} instead.",
            param=param,
        )
    return value


def _need(obj: dict[str, Any], at: str, key: str, kind: type) -> Any:
    if obj.get(key) is None:
        raise InvalidRequest(f"Missing required parameter: '{at}.{key}'.", param=f"{at}.{key}")
    return _check(obj[key], f"{at}.{key}", kind)


def _may(obj: dict[str, Any], at: str, key: str, kind: type) -> Any:
    value = obj.get(key)
    return None if value is None else _check(value, f"{at}.{key}" if at else key, kind)


def _one_of(value: Any, param: str, allowed: tuple[str, ...]) -> str:
    if _check(value, param, str) not in allowed:
        listed = ", ".join(f"'{a}'" for a in allowed)
        raise InvalidRequest(
            f"Invalid value: '{value}'. Supported values are: {listed}.", param=param
        )
    return str(value)


def _number(data: dict[str, Any], key: str, hi: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) is not int and type(value) is not float:
        raise InvalidRequest(f"Invalid type for '{key}': expected a decimal.", param=key)
    if not 0 <= value <= hi:
        raise InvalidRequest(
            f"Invalid '{key}': expected a value between 0 and {hi:g}, but got {value} instead.",
            param=key,
        )
    return float(value)


def _refuse(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' is not supported: {why}.", param=param)


# -- top level -----------------------------------------------------------------------


def parse_responses_request(body: bytes) -> ResponsesRequest:
    """Validate ``body``; raises :class:`InvalidRequest` naming the parameter."""
    return responses_request_from(load_body(body))


def load_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or the 400 for anything else."""
    return _load(body)


def responses_request_from(data: dict[str, Any]) -> ResponsesRequest:
    """:func:`parse_responses_request` of a body already decoded (by
    :func:`load_body`); ``data`` is read, never changed."""
    for key in data:
        if key not in _PARAMS:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key)
    _refuse_stateful(data)
    _check_accepted(data)
    model = _may(data, "", "model", str)
    if not model:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    tools = _tools(data.get("tools"))
    return ResponsesRequest(
        model=model,
        items=_input(data.get("input")),
        instructions=_may(data, "", "instructions", str),
        stream=_may(data, "", "stream", bool) or False,
        max_output_tokens=_max_output_tokens(data.get("max_output_tokens")),
        temperature=_number(data, "temperature", 2),
        top_p=_number(data, "top_p", 1),
        user=_may(data, "", "user", str) or _may(data, "", "safety_identifier", str),
        metadata=_metadata(data.get("metadata")),
        tools=tools,
        tool_choice=_tool_choice(data.get("tool_choice"), tools),
        parallel_tool_calls=_may(data, "", "parallel_tool_calls", bool),
        reasoning_effort=_reasoning(data.get("reasoning")),
        text_format=_text(data.get("text")),
    )


def _refuse_stateful(data: dict[str, Any]) -> None:
    if _may(data, "", "store", bool):
        raise _refuse("store", _STATELESS)
    if _may(data, "", "background", bool):
        raise _refuse("background", _STATELESS)
    for key in ("previous_response_id", "conversation"):
        if data.get(key) is not None:
            raise _refuse(key, _STATELESS)
    for key in _NOT_SUPPORTED:
        if data.get(key) is not None:
            raise _refuse(key, "this gateway cannot honour it")


def _check_accepted(data: dict[str, Any]) -> None:
    """Type-check parameters that are accepted but change nothing here
    (docs/responses-compatibility.md, "Request fields" says why for each)."""
    for key in ("prompt_cache_key", "service_tier"):
        _may(data, "", key, str)
    if data.get("truncation") is not None:
        _one_of(data["truncation"], "truncation", ("disabled",))
    options = _may(data, "", "stream_options", dict)
    if options is not None:
        _may(options, "stream_options", "include_obfuscation", bool)
    for i, value in enumerate(_may(data, "", "include", list) or ()):
        if _check(value, f"include[{i}]", str) not in _INCLUDES:
            raise _refuse(f"include[{i}]", f"'{value}' cannot be produced by this gateway")


def _max_output_tokens(value: Any) -> int | None:
    if value is None:
        return None
    tokens = int(_check(value, "max_output_tokens", int))
    if tokens < 1:
        raise InvalidRequest(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 1, "
            f"but got {tokens} instead.",
            param="max_output_tokens",
        )
    return tokens


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    metadata = _check(value, "metadata", dict)
    for key, item in metadata.items():
        _check(item, f"metadata.{key}", str)
    return dict(metadata)


def _reasoning(value: Any) -> str | None:
    if value is None:
        return None
    spec = _check(value, "reasoning", dict)
    for key in spec:
        if key not in ("effort", "summary", "generate_summary"):
            raise InvalidRequest(f"Unknown parameter: 'reasoning.{key}'.", param=f"reasoning.{key}")
    for key in ("summary", "generate_summary"):
        if spec.get(key) is not None:
            _one_of(spec[key], f"reasoning.{key}", ("auto", "concise", "detailed"))
    effort = spec.get("effort")
    return None if effort is None else _one_of(effort, "reasoning.effort", REASONING_EFFORTS)


def _text(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    spec = _check(value, "text", dict)
    if spec.get("verbosity") is not None:
        _one_of(spec["verbosity"], "text.verbosity", ("low", "medium", "high"))
    fmt = _may(spec, "text", "format", dict)
    if fmt is None:
        return None
    kind = _one_of(_need(fmt, "text.format", "type", str), "text.format.type",
                   ("text", "json_object", "json_schema"))  # fmt: skip
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    schema = {
        "name": _need(fmt, "text.format", "name", str),
        "schema": _need(fmt, "text.format", "schema", dict),
    }
    if _may(fmt, "text.format", "strict", bool) is not None:
        schema["strict"] = fmt["strict"]
    if _may(fmt, "text.format", "description", str) is not None:
        schema["description"] = fmt["description"]
    return {"type": "json_schema", "json_schema": schema}


# -- input items ---------------------------------------------------------------------


def _input(value: Any) -> tuple[Item, ...]:
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    if type(value) is str:
        return (InputMessage(role="user", content=value),)
    items = _check(value, "input", list)
    return tuple(_item(item, f"input[{i}]") for i, item in enumerate(items))


def _item(value: Any, at: str) -> Item:
    item = _check(value, at, dict)
    kind = item.get("type", "message")
    if kind == "message":
        return _message(item, at)
    if kind == "function_call":
        return FunctionCall(
            call_id=_need(item, at, "call_id", str),
            name=_need(item, at, "name", str),
            arguments=_need(item, at, "arguments", str),
        )
    if kind == "function_call_output":
        return FunctionCallOutput(call_id=_need(item, at, "call_id", str),
                                  output=_output(item.get("output"), f"{at}.output"))  # fmt: skip
    if kind == "reasoning":
        return _reasoning_item(item, at)
    if kind == "item_reference":
        raise _refuse(f"{at}.type", _STATELESS)
    raise _refuse(f"{at}.type", f"input items of type '{kind}' are not supported by this gateway")


def _message(item: dict[str, Any], at: str) -> InputMessage:
    role = _one_of(_need(item, at, "role", str), f"{at}.role", _ROLES)
    content = item.get("content")
    if type(content) is str:
        return InputMessage(role=role, content=content)
    parts = _check(content, f"{at}.content", list) if content is not None else None
    if parts is None:
        raise InvalidRequest(f"Missing required parameter: '{at}.content'.", param=f"{at}.content")
    out = tuple(_part(p, role, f"{at}.content[{j}]") for j, p in enumerate(parts))
    if all(p["type"] == "text" for p in out):
        return InputMessage(role=role, content="".join(p["text"] for p in out))
    return InputMessage(role=role, content=out)


def _part(value: Any, role: str, at: str) -> dict[str, Any]:
    part = _check(value, at, dict)
    kind = _need(part, at, "type", str)
    if kind not in _PART_TYPES[role]:
        why = "file inputs cannot be forwarded" if kind == "input_file" else "not allowed here"
        raise _refuse(f"{at}.type", f"'{kind}' in a {role} message: {why}")
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise _refuse(f"{at}.file_id", "this gateway has no file storage; send image_url")
        url = _need(part, at, "image_url", str)
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = _one_of(part["detail"], f"{at}.detail", ("low", "high", "auto"))
        return {"type": "image_url", "image_url": image}
    key = "refusal" if kind == "refusal" else "text"
    return {"type": "text", "text": _need(part, at, key, str)}


def _output(value: Any, at: str) -> str:
    if type(value) is str:
        return value
    parts = _check(value, at, list) if value is not None else []
    texts = []
    for j, item in enumerate(parts):
        part = _check(item, f"{at}[{j}]", dict)
        if part.get("type") != "input_text":
            raise _refuse(f"{at}[{j}].type", "tool outputs may hold input_text parts only here")
        texts.append(_need(part, f"{at}[{j}]", "text", str))
    return "".join(texts)


def _reasoning_item(item: dict[str, Any], at: str) -> Reasoning:
    # Only the plain-text content travels; encrypted_content is ignored, as the
    # gateway never issues it (clients that ask for it send it back).
    texts = []
    for j, value in enumerate(_may(item, at, "content", list) or ()):
        part = _check(value, f"{at}.content[{j}]", dict)
        texts.append(_need(part, f"{at}.content[{j}]", "text", str))
    return Reasoning(text="".join(texts))


# -- tools ---------------------------------------------------------------------------


def _tools(value: Any) -> tuple[dict[str, Any], ...]:
    out = []
    for i, item in enumerate(_may({"tools": value}, "", "tools", list) or ()):
        at = f"tools[{i}]"
        tool = _check(item, at, dict)
        kind = _need(tool, at, "type", str)
        if kind != "function":
            raise _refuse(
                f"{at}.type",
                f"built-in tool '{kind}' runs on OpenAI's servers; only 'function' tools "
                "are supported by this gateway",
            )
        function: dict[str, Any] = {"name": _need(tool, at, "name", str)}
        for key, kind_ in (("description", str), ("parameters", dict), ("strict", bool)):
            if _may(tool, at, key, kind_) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return tuple(out)


def _tool_choice(value: Any, tools: tuple[dict[str, Any], ...]) -> Any:
    if value is None or type(value) is str:
        return None if value is None else _one_of(value, "tool_choice", ("auto", "none",
                                                                          "required"))  # fmt: skip
    spec = _check(value, "tool_choice", dict)
    kind = _need(spec, "tool_choice", "type", str)
    known = {t["function"]["name"] for t in tools}
    if kind == "function":
        name = _need(spec, "tool_choice", "name", str)
        _known(name, known)
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        refs = _need(spec, "tool_choice", "tools", list)
        names = []
        for k, ref in enumerate(refs):
            names.append(_need(_check(ref, f"tool_choice.tools[{k}]", dict),
                               f"tool_choice.tools[{k}]", "name", str))  # fmt: skip
            _known(names[-1], known)
        mode = _one_of(_need(spec, "tool_choice", "mode", str), "tool_choice.mode",
                       ("auto", "required"))  # fmt: skip
        allowed = [{"type": "function", "function": {"name": n}} for n in names]
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}
    raise _refuse("tool_choice.type", f"built-in tool '{kind}' is not supported by this gateway")


def _known(name: str, known: set[str]) -> None:
    if name not in known:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': no function named '{name}' was specified in "
            "the 'tools' parameter.",
            param="tool_choice",
        )
