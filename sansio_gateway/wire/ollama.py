"""Validation of native Ollama API requests: ``/api/chat``, ``/api/generate``,
``/api/embed``, ``/api/embeddings`` and the model-addressed endpoints.

Theory of operation: each ``parse_*`` function decodes the body with orjson,
checks the fields the gateway reads, and returns a frozen request value; the
translators in :mod:`sansio_gateway.ollama_over_openai.requests` take it from there.
Nothing here knows about backends.

The rules copy Ollama's own binding (docs/wire-notes.md, "How Ollama binds a
request"; "Native endpoints clients call" for the fields of each endpoint):

* unknown fields are ignored, an explicit ``null`` is the same as absent;
* a field of the wrong JSON type is a 400 phrased as Go's decoder phrases it
  (``json: cannot unmarshal string into Go struct field ChatRequest.stream of
  type bool``), because clients written against Ollama match on it;
* an empty or missing model is a 400 ``model is required``;
* ``stream`` absent means **true** (the native default, the opposite of OpenAI);
* images are standard padded base64 (Go ``[]byte``); anything else is Ollama's
  400 ``illegal base64 data at input byte N``.

Where the gateway is stricter than Ollama it is because an OpenAI-compatible
backend would fail later and less clearly: an unknown message role (Ollama's
template would drop the message silently) and a ``think`` level outside
``low``/``medium``/``high``/``max`` are 400s here.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import InvalidRequest

__all__ = [
    "NativeBody",
    "NativeChatRequest",
    "NativeEmbedRequest",
    "NativeGenerateRequest",
    "NativeGeneration",
    "NativeMessage",
    "NativeToolCall",
    "chat_request_from",
    "embed_request_from",
    "embeddings_request_from",
    "generate_request_from",
    "is_zero_keep_alive",
    "load_object",
    "native_body_parser",
    "parse_chat_request",
    "parse_embed_request",
    "parse_embeddings_request",
    "parse_generate_request",
    "parse_model_request",
    "requested_model",
]

_ROLES = ("system", "user", "assistant", "tool", "developer")
_THINK_LEVELS = ("low", "medium", "high", "max")
_DURATION_UNITS = ("ns", "us", "µs", "ms", "s", "m", "h")
_MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class NativeToolCall:
    """An assistant tool call from the history; ``id`` is None when the
    client sent none (ollama-python drops ids: docs/wire-notes.md, "Tool-call ids")."""

    id: str | None
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class NativeMessage:
    role: str
    content: str = ""
    thinking: str = ""
    images: tuple[str, ...] = ()
    tool_calls: tuple[NativeToolCall, ...] = ()
    tool_name: str | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NativeGeneration:
    """What ``/api/chat`` and ``/api/generate`` share."""

    model: str
    stream: bool = True
    format: str | dict[str, Any] | None = None  # "json", a schema, or None
    options: dict[str, Any] = field(default_factory=dict)
    think: bool | str | None = None
    keep_alive: str | int | float | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NativeChatRequest(NativeGeneration):
    messages: tuple[NativeMessage, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()

    @property
    def is_load(self) -> bool:
        """No messages: Ollama only loads (or unloads) the model."""
        return not self.messages


@dataclass(frozen=True, slots=True, kw_only=True)
class NativeGenerateRequest(NativeGeneration):
    prompt: str = ""
    suffix: str = ""
    system: str = ""
    raw: bool = False
    images: tuple[str, ...] = ()

    @property
    def is_load(self) -> bool:
        """No prompt and no images: load (or unload) only (docs/wire-notes.md, "Native endpoints
        clients call")."""
        return not self.prompt and not self.images


@dataclass(frozen=True, slots=True, kw_only=True)
class NativeEmbedRequest:
    """``/api/embed`` (``legacy`` False) or ``/api/embeddings`` (True)."""

    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None
    legacy: bool = False


# -- Go-flavoured type checks -------------------------------------------------------


def _kind(value: Any) -> str:
    """The JSON kind, named as Go's decoder names it in its errors."""
    if type(value) is bool:
        return "bool"
    if type(value) in (int, float):
        return "number"
    if type(value) is str:
        return "string"
    return "array" if type(value) is list else "object"


def _unmarshal(value: Any, where: str, go_type: str) -> InvalidRequest:
    return InvalidRequest(
        f"json: cannot unmarshal {_kind(value)} into Go struct field {where} of type {go_type}"
    )


def _str(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise _unmarshal(value, f"{where}.{key}", "string")
    return value


def _bool(data: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if type(value) is not bool:
        raise _unmarshal(value, f"{where}.{key}", "bool")
    return value


def _int(data: dict[str, Any], key: str, where: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if type(value) is float and value.is_integer():
        return int(value)
    if type(value) is not int:
        raise _unmarshal(value, f"{where}.{key}", "int")
    return value


def _list(data: dict[str, Any], key: str, where: str, go_type: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise _unmarshal(value, f"{where}.{key}", go_type)
    return value


def _object(value: Any, where: str, go_type: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise _unmarshal(value, where, go_type)
    return value


# -- bodies and models ------------------------------------------------------------------


def load_object(body: bytes, struct: str) -> dict[str, Any]:
    """The body as a JSON object; ``null`` is an empty request, as in Go."""
    if not body.strip():
        raise InvalidRequest("missing request body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON in request body: {exc}") from None
    if data is None:
        return {}
    if type(data) is not dict:
        raise InvalidRequest(f"json: cannot unmarshal {_kind(data)} into Go value of type {struct}")
    return data


def requested_model(data: dict[str, Any], where: str) -> str:
    """``model`` (or the legacy ``name``), required."""
    model = _str(data, "model", where) or _str(data, "name", where)
    if not model:
        raise InvalidRequest("model is required")
    return model


def parse_model_request(body: bytes, struct: str) -> tuple[dict[str, Any], str]:
    """The body and its model, for endpoints that only need the model
    (``/api/show``, ``/api/pull``, and every passthrough)."""
    data = load_object(body, f"api.{struct}")
    return data, requested_model(data, struct)


@dataclass(frozen=True, slots=True, kw_only=True)
class NativeBody:
    """An ``/api/*`` body as decoded once on arrival: the JSON object, the
    model it names (``model``, or the legacy ``name``), and its size.

    Only that much is checked on arrival, so the same-format passthrough is
    exactly as strict as Ollama (it judges the rest); a translating flow
    validates the whole request from ``data`` (:func:`chat_request_from`,
    ...), without decoding the body again.
    """

    struct: str  # the Go struct its errors name: "ChatRequest", ...
    path: str  # the endpoint, the same on an Ollama backend
    streams: bool  # the endpoint streams unless ``stream`` is false
    data: dict[str, Any]
    model: str
    size: int

    @property
    def decoded(self) -> dict[str, Any]:
        return self.data


def native_body_parser(
    struct: str, *, path: str, streams: bool = False
) -> Callable[[bytes], NativeBody]:
    """The arrival parser of the model-addressed ``/api/*`` route at ``path``."""

    def parse(body: bytes) -> NativeBody:
        data, model = parse_model_request(body, struct)
        return NativeBody(
            struct=struct, path=path, streams=streams, data=data, model=model, size=len(body)
        )

    return parse


# -- fields shared by chat and generate --------------------------------------------------


def _format(value: Any) -> str | dict[str, Any] | None:
    # Ollama: `format` is "json" or a JSON schema object (docs/api.md).
    if value is None or value == "":
        return None
    if value == "json" or type(value) is dict:
        return value  # type: ignore[no-any-return]  # checked just above
    raise InvalidRequest('invalid format: expected "json" or a valid JSON schema')


def _think(value: Any, where: str) -> bool | str | None:
    if value is None or type(value) is bool:
        return value
    if type(value) is not str:
        raise _unmarshal(value, f"{where}.think", "api.ThinkValue")
    if value not in _THINK_LEVELS:
        raise InvalidRequest(
            f'invalid think value: "{value}" (must be "low", "medium", "high", "max", true or false)'
        )
    return value


def _keep_alive(value: Any, where: str) -> str | int | float | None:
    if value is None or type(value) in (str, int, float):
        return value  # type: ignore[no-any-return]  # checked just above
    raise _unmarshal(value, f"{where}.keep_alive", "api.Duration")


def is_zero_keep_alive(value: str | int | float | None) -> bool:
    """``keep_alive: 0`` (or ``"0"``, ``"0s"``, ``"0m"``...): unload the model."""
    if type(value) in (int, float):
        return value == 0
    if type(value) is not str:
        return False
    text = value.strip()
    for unit in _DURATION_UNITS:
        if text.endswith(unit):
            text = text[: -len(unit)]
            break
    try:
        return float(text) == 0
    except ValueError:
        return False


def _options(value: Any, where: str) -> dict[str, Any]:
    options = dict(_object(value, f"{where}.options", "map[string]interface {}"))
    for key in ("num_predict", "seed", "top_k"):
        if options.get(key) is not None:
            options[key] = _option_int(options[key], key)
    for key in ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty"):
        if options.get(key) is not None and (type(options[key]) not in (int, float)):
            raise InvalidRequest(f"invalid float value [{options[key]}] for option {key!r}")
    stop = options.get("stop")
    if type(stop) is str:
        options["stop"] = [stop]  # lenient: one stop sequence
    elif stop is not None and (type(stop) is not list or any(type(s) is not str for s in stop)):
        raise InvalidRequest("invalid option 'stop': expected an array of strings")
    return options


def _option_int(value: Any, key: str) -> int:
    # Options are map[string]interface{}: JSON numbers arrive as float64 and
    # Ollama truncates them to int (api/types.go FromMap).
    if type(value) in (int, float):
        return int(value)
    raise InvalidRequest(f"invalid int value [{value}] for option {key!r}")


def _generation(data: dict[str, Any], where: str) -> dict[str, Any]:
    top_logprobs = _int(data, "top_logprobs", where)
    if top_logprobs is not None and not 0 <= top_logprobs <= _MAX_TOP_LOGPROBS:
        raise InvalidRequest("top_logprobs must be between 0 and 20")
    return {
        "model": requested_model(data, where),
        "stream": _bool(data, "stream", where, True),
        "format": _format(data.get("format")),
        "options": _options(data.get("options"), where),
        "think": _think(data.get("think"), where),
        "keep_alive": _keep_alive(data.get("keep_alive"), where),
        "logprobs": _bool(data, "logprobs", where, False),
        "top_logprobs": top_logprobs,
    }


def _images(data: dict[str, Any], where: str) -> tuple[str, ...]:
    images = _list(data, "images", where, "[]api.ImageData")
    for image in images:
        if type(image) is not str:
            raise _unmarshal(image, f"{where}.images", "api.ImageData")
        _check_base64(image)
    return tuple(images)


def _check_base64(image: str) -> None:
    try:
        binascii.a2b_base64(image, strict_mode=True)
    except (binascii.Error, ValueError):
        bad = next((i for i, c in enumerate(image) if not (c.isalnum() or c in "+/=")), None)
        position = len(image) if bad is None else bad
        raise InvalidRequest(f"illegal base64 data at input byte {position}") from None


# -- /api/chat ---------------------------------------------------------------------------


def parse_chat_request(body: bytes) -> NativeChatRequest:
    """Validate an ``/api/chat`` body.  Raises :class:`InvalidRequest` (400).

    Next: :func:`sansio_gateway.ollama_over_openai.requests.chat_to_openai`, unless
    ``is_load`` (answer locally).
    """
    return chat_request_from(load_object(body, "api.ChatRequest"))


def chat_request_from(data: dict[str, Any]) -> NativeChatRequest:
    """:func:`parse_chat_request` of an already decoded body."""
    where = "ChatRequest"
    messages = _list(data, "messages", where, "[]api.Message")
    tools = _list(data, "tools", where, "api.Tools")
    return NativeChatRequest(
        **_generation(data, where),
        messages=tuple(_message(m) for m in messages),
        tools=tuple(_tool(t) for t in tools),
    )


def _message(value: Any) -> NativeMessage:
    where = "ChatRequest.messages"
    msg = _object(value, where, "api.Message")
    role = _str(msg, "role", where).lower()
    if role not in _ROLES:
        raise InvalidRequest(
            f'invalid message role "{role}": expected "system", "user", "assistant" or "tool"'
        )
    calls = _list(msg, "tool_calls", where, "[]api.ToolCall")
    return NativeMessage(
        role=role,
        content=_str(msg, "content", where),
        thinking=_str(msg, "thinking", where),
        images=_images(msg, where),
        tool_calls=tuple(_tool_call(c) for c in calls),
        tool_name=_str(msg, "tool_name", where) or None,
        tool_call_id=_str(msg, "tool_call_id", where) or None,
    )


def _tool_call(value: Any) -> NativeToolCall:
    where = "ChatRequest.messages.tool_calls"
    call = _object(value, where, "api.ToolCall")
    function = _object(call.get("function"), f"{where}.function", "api.ToolCallFunction")
    arguments = _object(
        function.get("arguments"), f"{where}.function.arguments", "api.ToolCallFunctionArguments"
    )
    name = _str(function, "name", f"{where}.function")
    if not name:
        raise InvalidRequest("invalid tool call: function name is required")
    return NativeToolCall(id=_str(call, "id", where) or None, name=name, arguments=arguments)


def _tool(value: Any) -> dict[str, Any]:
    tool = _object(value, "ChatRequest.tools", "api.Tool")
    function = tool.get("function")
    if type(function) is not dict or type(function.get("name")) is not str:
        raise InvalidRequest("invalid tool: function name is required")
    # Passed on whole: every JSON-Schema keyword reaches the backend
    # (Ollama's own struct drops many: docs/wire-notes.md, "Tool schemas").
    return {"type": "function", "function": function}


# -- /api/generate -------------------------------------------------------------------------


def parse_generate_request(body: bytes) -> NativeGenerateRequest:
    """Validate an ``/api/generate`` body.  ``template`` and ``context`` are
    type-checked and ignored (an OpenAI backend applies its own template and
    has no context tokens).  Next: ``generate_to_openai`` unless ``is_load``."""
    return generate_request_from(load_object(body, "api.GenerateRequest"))


def generate_request_from(data: dict[str, Any]) -> NativeGenerateRequest:
    """:func:`parse_generate_request` of an already decoded body."""
    where = "GenerateRequest"
    _str(data, "template", where)
    for token in _list(data, "context", where, "[]int"):
        if type(token) is not int:
            raise _unmarshal(token, f"{where}.context", "int")
    return NativeGenerateRequest(
        **_generation(data, where),
        prompt=_str(data, "prompt", where),
        suffix=_str(data, "suffix", where),
        system=_str(data, "system", where),
        raw=_bool(data, "raw", where, False),
        images=_images(data, where),
    )


# -- /api/embed and /api/embeddings ----------------------------------------------------------


def parse_embed_request(body: bytes) -> NativeEmbedRequest:
    """Validate an ``/api/embed`` body: ``input`` is a string or a list of
    strings; ``""`` or absent embeds nothing (Ollama answers ``[]``)."""
    return embed_request_from(load_object(body, "api.EmbedRequest"))


def embed_request_from(data: dict[str, Any]) -> NativeEmbedRequest:
    """:func:`parse_embed_request` of an already decoded body."""
    where = "EmbedRequest"
    model = requested_model(data, where)
    dimensions = _int(data, "dimensions", where)
    _bool(data, "truncate", where, True)
    _keep_alive(data.get("keep_alive"), where)
    return NativeEmbedRequest(
        model=model, inputs=_inputs(data.get("input")), dimensions=dimensions or None
    )


def _inputs(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if type(value) is str:
        return (value,)
    if type(value) is list and all(type(item) is str for item in value):
        return tuple(value)
    raise InvalidRequest("invalid input type")


def parse_embeddings_request(body: bytes) -> NativeEmbedRequest:
    """Validate a legacy ``/api/embeddings`` body (``prompt``, one vector)."""
    return embeddings_request_from(load_object(body, "api.EmbeddingRequest"))


def embeddings_request_from(data: dict[str, Any]) -> NativeEmbedRequest:
    """:func:`parse_embeddings_request` of an already decoded body."""
    where = "EmbeddingRequest"
    model = requested_model(data, where)
    prompt = _str(data, "prompt", where)
    _keep_alive(data.get("keep_alive"), where)
    return NativeEmbedRequest(model=model, inputs=(prompt,) if prompt else (), legacy=True)
