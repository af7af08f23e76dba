"""Translate a validated :class:`ChatRequest` into a native Ollama ``/api/chat`` body.

Theory of operation: :func:`chat_request_to_ollama` first rejects what the
Ollama backend cannot honour (``n > 1``, ``logit_bias``, audio, web search,
remote image URLs, file parts), then builds the native body piece by piece:
messages, ``options``, ``format``, ``tools``, ``think``, ``logprobs``.  It
is a pure function of the request; everything it raises is an
:class:`InvalidRequest` (400) naming the OpenAI parameter at fault.

Where we deliberately differ from Ollama's own ``/v1`` layer (each point has
its section in docs/wire-notes.md):

* ``developer`` becomes ``system`` ("The developer role");
* ``max_completion_tokens`` is honoured ("Token caps") and absent sampling
  parameters stay absent, so Modelfile defaults apply ("Absent sampling parameters");
* ``tool_choice`` is enforced with constrained decoding ("tool_choice");
* tool schemas are passed through whole ("Tool schemas");
* array content becomes ONE native message, so a tool result or an assistant
  turn keeps its ``tool_call_id``/``tool_calls`` ("Messages and tool results");
* native ``options``, ``keep_alive`` and ``think`` reach the backend ("Native options over /v1");
* remote image URLs are a clear 400, never forwarded ("Images").
"""

from __future__ import annotations

import binascii
from typing import Any

import orjson

from ..errors import InvalidRequest
from ..wire.openai_chat import ChatRequest, ForcedTool

__all__ = ["chat_request_to_ollama"]

# reasoning_effort -> native think (docs/wire-notes.md, "Reasoning effort and think").
_EFFORT_TO_THINK: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
# Ollama's /v1 takes jpeg/jpg/png/webp data URLs only, case-sensitively
# (docs/wire-notes.md, "Images").  We also take gif and any MIME case: the native
# `images` field is just bytes, and decoding them is the backend's business.
_IMAGE_MIMES = frozenset(("image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"))
# Text parts of one message are joined with a newline so that "a" and "b"
# do not fuse into one word; a client wanting exact bytes sends one string.
_PART_SEPARATOR = "\n"
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def chat_request_to_ollama(
    req: ChatRequest, *, model: str, default_max_tokens: int | None = None
) -> dict[str, Any]:
    """Build the native ``/api/chat`` body for ``req``.

    ``model`` is the backend's model name (after alias resolution).
    ``default_max_tokens`` is written as ``options.num_predict`` when the
    client set no cap, so token estimates are real upper bounds.
    Raises :class:`InvalidRequest` for what Ollama cannot do.  When
    ``req.forced_tool`` is set, pass it to the response translator.
    """
    _reject_unsupported(req)
    body: dict[str, Any] = {
        "model": model,
        "messages": _messages(req.messages),
        # Always explicit: the native default is true, OpenAI's is false.
        "stream": req.stream,
    }
    options = _options(req, default_max_tokens)
    if options:
        body["options"] = options
    fmt = _format(req)
    if fmt is not None:
        body["format"] = fmt
    if req.tools:
        body["tools"] = [{"type": "function", "function": t["function"]} for t in req.tools]
    think = _think(req)
    if think is not None:
        body["think"] = think
    if req.logprobs:
        body["logprobs"] = True
        if req.top_logprobs is not None:
            body["top_logprobs"] = req.top_logprobs
    if req.keep_alive is not None:
        body["keep_alive"] = req.keep_alive
    return body


def _reject_unsupported(req: ChatRequest) -> None:
    if req.n > 1:
        raise InvalidRequest(
            f"n={req.n} is not supported: the Ollama backend returns exactly one choice "
            "per request. Send n=1 and repeat the request instead.",
            param="n",
        )
    if req.logit_bias:
        raise InvalidRequest(
            "logit_bias is not supported by the Ollama backend.", param="logit_bias"
        )
    if req.audio is not None or (req.modalities is not None and "audio" in req.modalities):
        param = "audio" if req.audio is not None else "modalities"
        raise InvalidRequest("Audio output is not supported by the Ollama backend.", param=param)
    if req.web_search_options is not None:
        raise InvalidRequest(
            "web_search_options is not supported by the Ollama backend.",
            param="web_search_options",
        )


# -- options, format, think ------------------------------------------------------


def _options(req: ChatRequest, default_max_tokens: int | None) -> dict[str, Any]:
    """Native options: the extension's ``options`` and shorthands first, then
    the explicitly mapped OpenAI parameters, which win for the same key (a
    top-level ``temperature`` is the documented spelling; ``options`` is the
    escape hatch).  Only parameters the client sent are written: absent ones
    keep the Modelfile defaults (docs/wire-notes.md, "Absent sampling parameters")."""
    options = dict(req.native_options)
    num_predict = req.max_output_tokens if req.max_output_tokens is not None else default_max_tokens
    if num_predict is not None:
        options["num_predict"] = num_predict  # both max_* fields land here ("Token caps")
    for key in ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
        value = getattr(req, key)
        if value is not None:
            options[key] = value
    if req.stop is not None:
        options["stop"] = list(req.stop)
    return options


def _format(req: ChatRequest) -> str | dict[str, Any] | None:
    fmt = req.response_format
    kind = None if fmt is None else fmt["type"]
    if req.forced_tool is not None:
        if kind in ("json_object", "json_schema"):
            # Both would need the one `format` slot of constrained decoding.
            raise InvalidRequest(
                "A tool_choice that forces a tool call cannot be combined with a JSON "
                "response_format on the Ollama backend.",
                param="tool_choice",
            )
        return forced_tool_schema(req.tools, req.forced_tool)
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return "json"
    schema = fmt["json_schema"].get("schema")
    # OpenAI makes `schema` optional; without one it is plain JSON mode.
    return "json" if schema is None else schema


def forced_tool_schema(tools: tuple[dict[str, Any], ...], forced: ForcedTool) -> dict[str, Any]:
    """The JSON schema that makes the model's whole output a tool call
    (Ollama has no tool_choice: docs/wire-notes.md, "tool_choice"; ``format`` drives constrained
    decoding).  Named: the output is that function's arguments object.
    Otherwise: ``{"name": ..., "arguments": ...}`` with each name paired with
    its own parameter schema via ``anyOf``."""
    params = {t["function"]["name"]: t["function"].get("parameters") for t in tools}
    if forced.name is not None:
        return params[forced.name] or _NO_PARAMETERS
    defs: dict[str, Any] = {}
    variants = [_variant(name, params[name] or _NO_PARAMETERS, defs) for name in forced.names]
    schema: dict[str, Any] = {"anyOf": variants}
    if defs:
        schema["$defs"] = defs
    return schema


def _variant(name: str, parameters: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    # "#/$defs/X" references resolve against the document root, which is now
    # our wrapper: hoist each tool's $defs there (a clash would change meaning).
    local = parameters.get("$defs")
    if isinstance(local, dict):
        for key, value in local.items():
            if defs.setdefault(key, value) != value:
                raise InvalidRequest(
                    f"Cannot force a call among tools whose parameter schemas define "
                    f"different '$defs/{key}'; name one function in tool_choice.",
                    param="tool_choice",
                )
        parameters = {k: v for k, v in parameters.items() if k != "$defs"}
    return {
        "type": "object",
        "properties": {"name": {"enum": [name]}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _think(req: ChatRequest) -> bool | str | None:
    # The explicit native extension wins over the OpenAI spelling.
    if req.think is not None:
        return req.think
    if req.reasoning_effort is None:
        return None
    return _EFFORT_TO_THINK[req.reasoning_effort]


# -- messages ------------------------------------------------------------------------


def _messages(messages: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "assistant":
            out.append(_assistant(msg, i))
        elif role == "tool":
            out.append(_tool_result(msg, i, messages))
        elif role == "user":
            text, images = _content(msg.get("content"), i)
            native: dict[str, Any] = {"role": "user", "content": text}
            if images:
                native["images"] = images
            out.append(native)
        else:  # system and developer (few templates know "developer")
            out.append({"role": "system", "content": _content(msg["content"], i)[0]})
    return out


def _content(content: Any, i: int) -> tuple[str, list[str]]:
    """(text, base64 images) of a message's content, parts kept in order."""
    if content is None:
        return "", []
    if type(content) is str:
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part["type"]
        if kind == "text":
            texts.append(part["text"])
        elif kind == "refusal":
            texts.append(part["refusal"])
        elif kind == "image_url":
            images.append(_image(part["image_url"], f"messages.[{i}].content.[{j}].image_url"))
        else:
            raise InvalidRequest(
                f"Content parts of type '{kind}' are not supported by the Ollama backend.",
                param=f"messages.[{i}].content.[{j}].type",
            )
    return _PART_SEPARATOR.join(texts), images


def _image(image_url: Any, param: str) -> str:
    """The bare base64 payload of a ``data:`` image URL (docs/wire-notes.md, "Images")."""
    url: str = image_url if type(image_url) is str else image_url["url"]
    if url[:8].lower().startswith(("http://", "https://")):
        raise InvalidRequest(
            "Image URLs are not supported by the Ollama backend; send the image inline "
            "as a base64 data URL (data:image/png;base64,...).",
            param=param,
        )
    head, sep, payload = url.partition(",")
    mime = head[5:-7].lower() if head[:5].lower() == "data:" else ""
    if not sep or not head.lower().endswith(";base64") or mime not in _IMAGE_MIMES:
        raise InvalidRequest(
            "Invalid image: expected a base64 data URL of a png, jpeg, webp or gif image "
            "(data:image/png;base64,...).",
            param=param,
        )
    try:
        decoded = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if not decoded:
        raise InvalidRequest("Invalid image: the data URL is not valid base64.", param=param)
    return payload


def _assistant(msg: dict[str, Any], i: int) -> dict[str, Any]:
    native: dict[str, Any] = {"role": "assistant", "content": _content(msg.get("content"), i)[0]}
    # Ollama names history reasoning `thinking`; clients send either spelling.
    thinking = msg.get("reasoning_content") or msg.get("reasoning")
    if thinking:
        native["thinking"] = thinking
    calls = msg.get("tool_calls")
    if calls:
        native["tool_calls"] = [_tool_call(call, i, k) for k, call in enumerate(calls)]
    return native


def _tool_call(call: dict[str, Any], i: int, k: int) -> dict[str, Any]:
    function = call["function"]
    raw = function["arguments"]
    try:
        # An empty string means "no arguments" (some clients echo "" for
        # parameterless functions); Ollama itself would 400 on it.
        arguments = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        arguments = None
    if type(arguments) is not dict:
        raise InvalidRequest(
            "Invalid tool call arguments: expected a JSON object encoded as a string.",
            param=f"messages.[{i}].tool_calls.[{k}].function.arguments",
        )
    return {"id": call["id"], "function": {"name": function["name"], "arguments": arguments}}


def _tool_result(
    msg: dict[str, Any], i: int, messages: tuple[dict[str, Any], ...]
) -> dict[str, Any]:
    call_id = msg["tool_call_id"]
    native = {"role": "tool", "content": _content(msg["content"], i)[0], "tool_call_id": call_id}
    name = msg.get("name") or _tool_name(call_id, messages, i)
    if name:
        native["tool_name"] = name
    return native


def _tool_name(call_id: str, messages: tuple[dict[str, Any], ...], before: int) -> str | None:
    """The function name of the nearest earlier assistant call with this id."""
    for j in range(before - 1, -1, -1):
        msg = messages[j]
        if msg["role"] != "assistant":
            continue
        for call in msg.get("tool_calls") or ():
            if call["id"] == call_id:
                return str(call["function"]["name"])
    return None
