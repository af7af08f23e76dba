"""Strict parsing of an inbound OpenAI Chat Completions request.

Theory of operation: :func:`parse_chat_request` decodes the body with orjson,
rejects any top-level key it does not know, then checks each parameter with
small typed helpers.  Every failure is an :class:`InvalidRequest` whose
message follows OpenAI's wording and whose ``param`` names the field the way
OpenAI does (``messages.[0].role``, ``response_format.json_schema``).  The
result is a frozen :class:`ChatRequest`; it runs once per request and costs
tens of microseconds (a hand-written validator: plain dict lookups, no
model-building).

Division of labour: this module accepts exactly the OpenAI language plus the
documented Ollama extensions (``options``, ``keep_alive``, ``think`` and the
``top_k``/``min_p``/``num_ctx``/``repeat_penalty`` shorthands that the SDK
sends through ``extra_body``).  Features that are valid OpenAI but that the
*backend* cannot honour (``n > 1``, ``logit_bias``, audio, remote image URLs,
file parts, ``web_search_options``) pass here and are rejected by the backend
translator (:mod:`sansio_gateway.openai_over_ollama.chat_request`), so a backend that can
honour them needs no parser change.  Deprecated ``functions``/``function_call``
and ``role: "function"`` are rejected here: a gateway that answered them with
``tool_calls`` would break the very clients that send them.

Unknown keys *inside* messages are ignored (clients echo whole response
messages back, with ``refusal``/``annotations``/``audio`` keys); unknown
top-level keys are a 400, as on OpenAI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from ..errors import InvalidRequest

__all__ = ["ChatRequest", "ForcedTool", "parse_chat_request", "remote_image_url_param"]

# Every Chat Completions parameter (openapi CreateChatCompletionRequest).
# fmt: off
_OPENAI_PARAMS = frozenset((
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop",
    "store", "stream", "stream_options", "temperature", "tool_choice", "tools", "top_logprobs",
    "top_p", "user", "verbosity", "web_search_options",
))
# fmt: on
# Ollama extensions (docs/wire-notes.md, "Native options over /v1": Ollama's own /v1 drops
# them, which is exactly why clients cannot set num_ctx there).  `reasoning`
# is the object form of reasoning_effort that Ollama and OpenRouter accept.
_EXTENSIONS = frozenset(
    ("options", "keep_alive", "think", "reasoning", "top_k", "min_p", "num_ctx", "repeat_penalty")
)
_KNOWN_PARAMS = _OPENAI_PARAMS | _EXTENSIONS

# reasoning_effort values accepted (docs/wire-notes.md, "Reasoning effort and think"; "" means
# absent).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "ultra", "max")
_THINK_LEVELS = ("low", "medium", "high", "max")
_ROLES = ("system", "user", "assistant", "tool", "developer")
# Content-part types OpenAI allows per role (openapi ChatCompletionRequest*Message).
_PART_TYPES: dict[str, tuple[str, ...]] = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
}
_PART_PAYLOAD = {"text": "text", "refusal": "refusal", "input_audio": "input_audio", "file": "file"}
_MAX_STOP = 4
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class ForcedTool:
    """``tool_choice`` demands a tool call (Ollama has none: docs/wire-notes.md, "tool_choice").

    The translator enforces it with constrained decoding and the response
    translators turn the JSON output back into a tool call:

    * ``name`` set -- the whole output is the arguments object of that function
      (a named ``tool_choice``, or ``"required"`` with a single tool);
    * ``name`` None -- the output is ``{"name": <one of names>, "arguments": {...}}``.
    """

    name: str | None
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """A validated Chat Completions request.

    ``messages`` and ``tools`` hold the client's dicts, already checked for
    shape.  ``tools`` are the tools to *offer*: empty for ``tool_choice:
    "none"``, the allowed subset for ``allowed_tools``.  ``max_output_tokens``
    is ``max_completion_tokens``, else ``max_tokens``, else the extension's
    ``options.num_predict``.  ``native_options`` holds the ``options``
    extension merged with the shorthands (a shorthand wins over the same key
    in ``options``).  Pass ``forced_tool`` to the response translators.
    """

    model: str
    messages: tuple[dict[str, Any], ...]
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    max_output_tokens: int | None = None
    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    response_format: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] = ()
    forced_tool: ForcedTool | None = None
    reasoning_effort: str | None = None
    think: bool | str | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: tuple[str, ...] | None = None
    web_search_options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None
    native_options: dict[str, Any] = field(default_factory=dict)
    # The body as decoded once on arrival, and its size: the passthrough
    # forwards ``decoded`` and admission charges it (docs/rate-limiting.md,
    # "What is charged"), so no one decodes the body again.
    decoded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    size: int = field(default=0, compare=False)


# -- typed helpers: each returns the checked value or raises ------------------

_TYPE_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a decimal",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _type_error(param: str, expected: str, value: Any) -> InvalidRequest:
    got = _TYPE_NAMES.get(type(value), "an unknown type")
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.", param=param
    )


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)


def _bad_value(param: str, value: Any, allowed: tuple[str, ...]) -> InvalidRequest:
    quoted = [f"'{a}'" for a in allowed]
    listed = ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 1 else quoted[0]
    return InvalidRequest(f"Invalid value: '{value}'. Supported values are: {listed}.", param=param)


def _in_range(value: float, param: str, kind: str, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        side, bound = "below minimum", f">= {lo:g}"
    elif hi is not None and value > hi:
        side, bound = "above maximum", f"<= {hi:g}"
    else:
        return
    raise InvalidRequest(
        f"Invalid '{param}': {kind} {side} value. "
        f"Expected a value {bound}, but got {value} instead.",
        param=param,
    )


def _number(value: Any, param: str, lo: float | None = None, hi: float | None = None) -> float:
    # bool is an int subclass in Python but not a number in JSON.
    if type(value) is not float and type(value) is not int:
        raise _type_error(param, "a decimal", value)
    _in_range(value, param, "decimal", lo, hi)
    return value


def _integer(value: Any, param: str, lo: int | None = None, hi: int | None = None) -> int:
    if type(value) is not int:
        raise _type_error(param, "an integer", value)
    _in_range(value, param, "integer", lo, hi)
    return value


def _exactly(kind: type[_T], expected: str) -> Callable[[Any, str], _T]:
    """A checker for one JSON type (``type() is``, so a bool is not an integer)."""

    def check(value: Any, param: str) -> _T:
        if type(value) is not kind:
            raise _type_error(param, expected, value)
        return value  # type was just checked

    return check


_boolean = _exactly(bool, "a boolean")
_string = _exactly(str, "a string")
_object = _exactly(dict, "an object")
_array = _exactly(list, "an array")


def _need(obj: dict[str, Any], at: str, key: str, check: Any, *bounds: Any) -> Any:
    """The required field ``key`` of ``obj`` (found at path ``at``), checked."""
    value = obj.get(key)
    if value is None:
        raise _missing(f"{at}.{key}")
    return check(value, f"{at}.{key}", *bounds)


def _choice(value: Any, param: str, allowed: tuple[str, ...]) -> str:
    if _string(value, param) not in allowed:
        raise _bad_value(param, value, allowed)
    return str(value)


# -- top level -------------------------------------------------------------------


def parse_chat_request(body: bytes) -> ChatRequest:
    """Validate ``body`` (the raw HTTP body) and return the request.

    Raises :class:`InvalidRequest` (400) naming the offending parameter.
    Next: hand the result to a backend translator such as
    :func:`sansio_gateway.openai_over_ollama.chat_request.chat_request_to_ollama`.
    """
    data = _load(body)
    for key in data:
        if key not in _KNOWN_PARAMS:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key)
    _reject_deprecated(data)
    _check_ignored(data)
    tools, forced = _tools_and_choice(data.get("tools"), data.get("tool_choice"))
    stream = _opt_bool(data, "stream")
    return ChatRequest(
        model=_model(data.get("model")),
        messages=_messages(data.get("messages")),
        stream=stream,
        include_usage=_include_usage(data.get("stream_options")),
        user=_opt(data, "user", _string),
        max_output_tokens=_max_output_tokens(data),
        n=_opt(data, "n", _integer, 1, 128) or 1,
        temperature=_opt(data, "temperature", _number, 0, 2),
        top_p=_opt(data, "top_p", _number, 0, 1),
        frequency_penalty=_opt(data, "frequency_penalty", _number, -2, 2),
        presence_penalty=_opt(data, "presence_penalty", _number, -2, 2),
        seed=_opt(data, "seed", _integer),
        stop=_stop(data.get("stop")),
        response_format=_response_format(data.get("response_format")),
        tools=tools,
        forced_tool=forced,
        reasoning_effort=_reasoning_effort(data),
        think=_think(data.get("think")),
        logprobs=_opt_bool(data, "logprobs"),
        top_logprobs=_top_logprobs(data),
        logit_bias=_opt(data, "logit_bias", _object),
        audio=_opt(data, "audio", _object),
        modalities=_modalities(data.get("modalities")),
        web_search_options=_opt(data, "web_search_options", _object),
        keep_alive=_keep_alive(data.get("keep_alive")),
        native_options=_native_options(data),
        decoded=data,
        size=len(body),
    )


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc}). "
            "The API expects a JSON object."
        ) from None
    if type(data) is not dict:
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def _opt(data: dict[str, Any], key: str, check: Any, *bounds: Any) -> Any:
    """``check(value, key, *bounds)`` unless the key is absent or null
    (OpenAI treats an explicit null like an omitted optional parameter)."""
    value = data.get(key)
    return None if value is None else check(value, key, *bounds)


def _may(obj: dict[str, Any], at: str, key: str, check: Any, *bounds: Any) -> Any:
    """The optional field ``key`` of ``obj`` (found at path ``at``), checked."""
    value = obj.get(key)
    return None if value is None else check(value, f"{at}.{key}", *bounds)


def _opt_bool(data: dict[str, Any], key: str) -> bool:
    value = data.get(key)
    return False if value is None else _boolean(value, key)


def _check_ignored(data: dict[str, Any]) -> None:
    """Type-check parameters that are accepted but have no effect on an
    Ollama backend (docs/openai-compatibility.md says why for each)."""
    for key in ("metadata", "prediction"):
        _opt(data, key, _object)
    for key in ("prompt_cache_key", "safety_identifier", "service_tier"):
        _opt(data, key, _string)
    for key in ("store", "parallel_tool_calls"):
        _opt(data, key, _boolean)
    _opt(data, "verbosity", _choice, ("low", "medium", "high"))


def _reject_deprecated(data: dict[str, Any]) -> None:
    for key in ("functions", "function_call"):
        if data.get(key) is not None:
            raise InvalidRequest(
                f"'{key}' is deprecated and not supported by this gateway; "
                "use 'tools' and 'tool_choice' instead.",
                param=key,
            )


def _model(value: Any) -> str:
    if value is None or value == "":
        raise InvalidRequest("you must provide a model parameter", param="model")
    return _string(value, "model")


def _include_usage(value: Any) -> bool:
    # Accepted (and ignored) even without stream:true: OpenAI rejects that
    # combination, but several Ollama-targeting clients send it anyway.
    if value is None:
        return False
    options = _object(value, "stream_options")
    return _may(options, "stream_options", "include_usage", _boolean) is True


def _max_output_tokens(data: dict[str, Any]) -> int | None:
    """``max_completion_tokens``, else ``max_tokens``, else ``options.num_predict``.

    The native spelling must be a real cap too (>= 1): the gateway's token
    accounting needs an upper bound, so Ollama's "unbounded" -1/-2 is refused."""
    options = data.get("options")
    native = None
    if type(options) is dict:
        native = _may(options, "options", "num_predict", _integer, 1)
    for value in (
        _opt(data, "max_completion_tokens", _integer, 1),
        _opt(data, "max_tokens", _integer, 1),
        native,
    ):
        if value is not None:
            return int(value)
    return None


def _stop(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if type(value) is str:
        return (value,)
    if type(value) is not list:
        raise _type_error("stop", "a string or an array", value)
    items: list[Any] = value
    if len(items) > _MAX_STOP:
        raise InvalidRequest(
            "Invalid 'stop': array too long. Expected an array with maximum length "
            f"{_MAX_STOP}, but got an array with length {len(items)} instead.",
            param="stop",
        )
    return tuple(_string(s, f"stop.[{i}]") for i, s in enumerate(items))


def _response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    fmt = _object(value, "response_format")
    kinds = ("text", "json_object", "json_schema")
    if _need(fmt, "response_format", "type", _choice, kinds) == "json_schema":
        spec = _need(fmt, "response_format", "json_schema", _object)
        _need(spec, "response_format.json_schema", "name", _string)
        _may(spec, "response_format.json_schema", "schema", _object)
    return fmt


def _reasoning_effort(data: dict[str, Any]) -> str | None:
    effort = _opt(data, "reasoning_effort", _choice, ("", *REASONING_EFFORTS))
    reasoning = _opt(data, "reasoning", _object)
    if reasoning is not None and reasoning.get("effort") is not None:
        nested = _choice(reasoning["effort"], "reasoning.effort", ("", *REASONING_EFFORTS))
        if effort and nested and nested != effort:
            raise InvalidRequest(
                f"'reasoning.effort' ({nested!r}) conflicts with 'reasoning_effort' ({effort!r}).",
                param="reasoning.effort",
            )
        effort = effort or nested
    return effort or None


def _think(value: Any) -> bool | str | None:
    if value is None or type(value) is bool:
        return value
    if type(value) is not str:
        raise _type_error("think", "a boolean or a string", value)
    return _choice(value, "think", _THINK_LEVELS)


def _top_logprobs(data: dict[str, Any]) -> int | None:
    top = _opt(data, "top_logprobs", _integer, 0, 20)
    if top is not None and data.get("logprobs") is not True:
        raise InvalidRequest(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true "
            "if 'top_logprobs' is used.",
            param="top_logprobs",
        )
    return None if top is None else int(top)


def _modalities(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = _array(value, "modalities")
    return tuple(_choice(m, f"modalities.[{i}]", ("text", "audio")) for i, m in enumerate(items))


def _keep_alive(value: Any) -> str | int | float | None:
    if value is None or type(value) in (str, int, float):
        return value  # type: ignore[no-any-return]  # checked just above
    raise _type_error("keep_alive", "a string or a number", value)


# The shorthands go into native options; a shorthand wins over the same key
# inside the `options` object because it is the more specific spelling.
_SHORTHANDS: dict[str, tuple[Any, float | None, float | None]] = {
    "top_k": (_integer, 0, None),
    "min_p": (_number, 0, 1),
    "num_ctx": (_integer, 1, None),
    "repeat_penalty": (_number, 0, None),
}


def _native_options(data: dict[str, Any]) -> dict[str, Any]:
    options = dict(_opt(data, "options", _object) or {})
    options.pop("num_predict", None)  # folded into max_output_tokens
    for key, (check, lo, hi) in _SHORTHANDS.items():
        value = data.get(key)
        if value is not None:
            options[key] = check(value, key, lo, hi)
    return options


# -- messages ---------------------------------------------------------------------


def _messages(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        raise _missing("messages")
    items = _array(value, "messages")
    if not items:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
        )
    for i, message in enumerate(items):
        _message(message, f"messages.[{i}]")
    return tuple(items)


def _message(value: Any, at: str) -> None:
    msg = _object(value, at)
    if msg.get("role") == "function":
        raise InvalidRequest(
            "Messages with role 'function' are deprecated and not supported; "
            "use role 'tool' with 'tool_call_id'.",
            param=f"{at}.role",
        )
    role = _need(msg, at, "role", _choice, _ROLES)
    _may(msg, at, "name", _string)
    has_calls = role == "assistant" and _assistant_extras(msg, at)
    content = msg.get("content")
    if content is None and not has_calls:
        raise _missing(f"{at}.content")
    if content is not None and type(content) is not str:
        if type(content) is not list:
            raise _type_error(f"{at}.content", "a string or an array", content)
        _parts(content, role, f"{at}.content")
    if role == "tool":
        _need(msg, at, "tool_call_id", _string)


def _parts(parts: list[Any], role: str, at: str) -> None:
    for j, value in enumerate(parts):
        where = f"{at}.[{j}]"
        part = _object(value, where)
        kind = _need(part, where, "type", _choice, _PART_TYPES[role])
        if kind == "image_url":
            _need(part, where, "image_url", _image_url)
        else:
            check = _string if kind in ("text", "refusal") else _object
            _need(part, where, _PART_PAYLOAD[kind], check)


def _image_url(value: Any, at: str) -> None:
    # Both {"url": ...} and the bare-string form Ollama's own docs use
    # (docs/wire-notes.md, "Images") are accepted.
    if type(value) is not str:
        _need(_object(value, at), at, "url", _string)


def _assistant_extras(msg: dict[str, Any], at: str) -> bool:
    """Check an assistant message's tool calls and reasoning; True when it has calls."""
    for key in ("reasoning_content", "reasoning"):
        _may(msg, at, key, _string)
    calls = _may(msg, at, "tool_calls", _array)
    for k, value in enumerate(calls or ()):
        where = f"{at}.tool_calls.[{k}]"
        call = _object(value, where)
        _need(call, where, "id", _string)
        function = _need(call, where, "function", _object)
        _need(function, f"{where}.function", "name", _string)
        _need(function, f"{where}.function", "arguments", _string)
    return bool(calls)


# -- tools and tool_choice ----------------------------------------------------------

_Tools = tuple[dict[str, Any], ...]


def _tools(value: Any) -> _Tools:
    if value is None:
        return ()
    items = _array(value, "tools")
    for i, item in enumerate(items):
        where = f"tools.[{i}]"
        tool = _object(item, where)
        _need(tool, where, "type", _choice, ("function",))
        function = _need(tool, where, "function", _object)
        if not _need(function, f"{where}.function", "name", _string):
            raise InvalidRequest(
                f"Invalid '{where}.function.name': empty string.", param=f"{where}.function.name"
            )
        _may(function, f"{where}.function", "description", _string)
        _may(function, f"{where}.function", "parameters", _object)
    return tuple(items)


def _tools_and_choice(tools_value: Any, choice: Any) -> tuple[_Tools, ForcedTool | None]:
    """Return (tools to offer, forced tool) from ``tools`` and ``tool_choice``."""
    tools = _tools(tools_value)
    if choice is None or choice == "auto":
        return tools, None
    if choice == "none":
        return (), None
    if type(choice) is str:
        _choice(choice, "tool_choice", ("none", "auto", "required"))
        return tools, _forced(tools, None)
    spec = _object(choice, "tool_choice")
    kind = _need(spec, "tool_choice", "type", _choice, ("function", "allowed_tools"))
    if kind == "function":
        function = _need(spec, "tool_choice", "function", _object)
        name = _need(function, "tool_choice.function", "name", _string)
        return tools, _forced(tools, name)
    return _allowed_tools(tools, _need(spec, "tool_choice", "allowed_tools", _object))


def _allowed_tools(tools: _Tools, spec: dict[str, Any]) -> tuple[_Tools, ForcedTool | None]:
    """``{"mode": "auto"|"required", "tools": [{"type": "function", "function": {"name"}}]}``:
    offer only the listed tools, and with ``required`` force one of them."""
    at = "tool_choice.allowed_tools"
    mode = _need(spec, at, "mode", _choice, ("auto", "required"))
    wanted: set[str] = set()
    for k, ref in enumerate(_need(spec, at, "tools", _array)):
        where = f"{at}.tools.[{k}]"
        function = _need(_object(ref, where), where, "function", _object)
        wanted.add(_need(function, f"{where}.function", "name", _string))
    _check_known(tools, wanted)
    subset = tuple(t for t in tools if t["function"]["name"] in wanted)
    return subset, (_forced(subset, None) if mode == "required" else None)


def _forced(tools: _Tools, name: str | None) -> ForcedTool:
    if not tools:
        raise InvalidRequest(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
            "are specified.",
            param="tool_choice",
        )
    names = tuple(dict.fromkeys(t["function"]["name"] for t in tools))
    if name is not None:
        _check_known(tools, {name})
    elif len(names) == 1:
        # "required" with one tool is the named case: asking the model for the
        # bare arguments object is shorter and easier than the wrapper.
        name = names[0]
    return ForcedTool(name=name, names=names)


def _check_known(tools: _Tools, wanted: set[str]) -> None:
    unknown = sorted(wanted - {t["function"]["name"] for t in tools})
    if unknown:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': no function named '{unknown[0]}' was "
            "specified in the 'tools' parameter.",
            param="tool_choice",
        )


def remote_image_url_param(messages: Any) -> str | None:
    """The ``param`` of the first image part whose URL is not a ``data:``
    URL, or None.  Backends that fetch image URLs (vLLM, llama.cpp server)
    would fetch them from inside the operator's network, so the passthrough
    refuses them unless the backend's ``allow_image_urls`` is set."""
    for i, msg in enumerate(messages if type(messages) is list else ()):
        content = msg.get("content") if type(msg) is dict else None
        for j, part in enumerate(content if type(content) is list else ()):
            if type(part) is not dict or part.get("type") != "image_url":
                continue
            image = part.get("image_url")
            url = image.get("url") if type(image) is dict else image
            if type(url) is str and url.lstrip()[:5].lower() != "data:":
                return f"messages.[{i}].content.[{j}].image_url"
    return None
