"""Translate validated native requests into OpenAI-compatible request bodies.

Theory of operation: the flows parse a native body with
:mod:`sansio_gateway.wire.ollama`, resolve the model, then call one
function here -- :func:`chat_to_openai`, :func:`generate_to_openai` or
:func:`embed_to_openai` -- which returns the path (relative to the backend's
base URL, which ends in ``/v1``) and the JSON body to send.  Each is a pure
function of the request, the backend's model name and an id prefix.

The design is the mapping of docs/wire-notes.md, "Serving Ollama clients from an OpenAI backend".
Decisions (see docs/ollama-compatibility.md for the full table):

* ``stream`` is always explicit, and a stream always asks for
  ``stream_options.include_usage`` so the native final line can carry
  ``prompt_eval_count``/``eval_count``;
* images (bare base64) become ``image_url`` data URLs; the MIME type is
  sniffed from the magic bytes (png, jpeg, webp, gif), since the native wire
  carries none; images are only allowed on user messages (OpenAI's rule);
* assistant tool-call arguments (objects) become JSON strings; a call without
  an id gets ``call_<prefix>_<k>`` (``k`` counts the calls in the history),
  and every ``role: "tool"`` result is paired with a call -- by
  ``tool_call_id``, else by ``tool_name``, else by order -- because OpenAI
  requires ``tool_call_id``;
* assistant ``thinking`` history is dropped unless a field name is given
  (DeepSeek rejects ``reasoning_content`` in input; most servers ignore it);
* options: ``num_predict`` > 0 -> ``max_tokens`` (-1, -2 and 0 mean "no cap"
  and are dropped); ``temperature``, ``top_p``, ``seed``, ``stop``,
  ``frequency_penalty``, ``presence_penalty`` map 1:1; ``top_k`` and
  ``min_p`` are sent as extra top-level keys (vLLM, llama.cpp and this
  gateway's ``/v1`` read them); every other option is dropped --
  ``repeat_penalty`` is never mapped onto ``frequency_penalty`` (neutral 1.0
  versus 0.0);
* ``format: "json"`` -> ``json_object``; a schema -> ``json_schema`` named
  ``"response"`` (OpenAI requires a name);
* ``think``: ``false`` -> ``reasoning_effort: "none"``; ``true`` -> nothing
  (the model's default effort); ``low``/``medium``/``high`` pass;
  ``max`` -> ``"high"``, OpenAI's highest documented tier.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import InvalidRequest
from ..wire.ollama import (
    NativeChatRequest,
    NativeEmbedRequest,
    NativeGenerateRequest,
    NativeGeneration,
    NativeMessage,
    NativeToolCall,
)

__all__ = [
    "SCHEMA_NAME",
    "chat_to_openai",
    "embed_to_openai",
    "generate_to_openai",
    "image_data_url",
    "sniff_image_mime",
]

SCHEMA_NAME = "response"
# Options mapped 1:1 onto OpenAI parameters of the same name.
_SAME_NAME_OPTIONS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
# Options without an OpenAI parameter that common servers accept as extra keys.
_EXTRA_OPTIONS = ("top_k", "min_p")
_THINK_TO_EFFORT: dict[bool | str, str | None] = {
    False: "none",
    True: None,
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "high",
}
# Magic bytes of the image formats vision backends take.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # "RIFF" <size:4> "WEBP"
)


# -- images ---------------------------------------------------------------------------------


def sniff_image_mime(image_b64: str) -> str:
    """The MIME type of a base64 image from its first bytes; ``image/jpeg``
    when unknown (the commonest camera format; the backend decides)."""
    head = _decode_head(image_b64)
    for magic, offset, mime in _MAGIC:
        riff = mime != "image/webp" or head[:4] == b"RIFF"
        if riff and head[offset : offset + len(magic)] == magic:
            return mime
    return "image/jpeg"


def _decode_head(image_b64: str) -> bytes:
    # 16 base64 characters are 12 bytes: enough for every magic above.
    try:
        return binascii.a2b_base64(image_b64[:16])
    except (binascii.Error, ValueError):
        return b""


def image_data_url(image_b64: str) -> str:
    return f"data:{sniff_image_mime(image_b64)};base64,{image_b64}"


def _user_content(text: str, images: tuple[str, ...]) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for image in images:
        parts.append({"type": "image_url", "image_url": {"url": image_data_url(image)}})
    return parts


# -- shared parameters ----------------------------------------------------------------------


def _sampling(options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    num_predict = options.get("num_predict")
    if num_predict is not None and num_predict > 0:
        out["max_tokens"] = num_predict  # -1 unbounded, -2 fill context: no cap
    for key in (*_SAME_NAME_OPTIONS, *_EXTRA_OPTIONS):
        if options.get(key) is not None:
            out[key] = options[key]
    if options.get("stop"):
        out["stop"] = list(options["stop"])
    return out


def _response_format(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if fmt is None:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": fmt}}


def _stream_fields(stream: bool) -> dict[str, Any]:
    if not stream:
        return {"stream": False}
    return {"stream": True, "stream_options": {"include_usage": True}}


def _chat_common(req: NativeGeneration) -> dict[str, Any]:
    body = {**_stream_fields(req.stream), **_sampling(req.options)}
    fmt = _response_format(req.format)
    if fmt is not None:
        body["response_format"] = fmt
    effort = None if req.think is None else _THINK_TO_EFFORT[req.think]
    if effort is not None:
        body["reasoning_effort"] = effort
    if req.logprobs:
        body["logprobs"] = True
        if req.top_logprobs is not None:
            body["top_logprobs"] = req.top_logprobs
    return body


# -- /api/chat ---------------------------------------------------------------------------------


def chat_to_openai(
    req: NativeChatRequest, *, model: str, id_prefix: str, thinking_field: str | None = None
) -> tuple[str, dict[str, Any]]:
    """``("/chat/completions", body)`` for a chat request (not a load).

    ``model`` is the backend's name; ``id_prefix`` (the request id) seeds
    the ids of tool calls that came without one.  ``thinking_field`` names
    the message field for assistant thinking history (None: dropped).
    Raises :class:`InvalidRequest` for what the backend cannot take.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": _Messages(id_prefix, thinking_field).translate(req.messages),
    }
    if req.tools:
        body["tools"] = list(req.tools)
    return "/chat/completions", {**body, **_chat_common(req)}


@dataclass(slots=True)
class _Call:
    id: str
    name: str
    answered: bool = False


class _Messages:
    """Translate the history, minting ids and pairing tool results."""

    def __init__(self, id_prefix: str, thinking_field: str | None) -> None:
        self._prefix = id_prefix
        self._thinking_field = thinking_field
        self._minted = 0
        self._calls: list[_Call] = []  # every call of the history, in order

    def translate(self, messages: tuple[NativeMessage, ...]) -> list[dict[str, Any]]:
        return [self._message(i, m) for i, m in enumerate(messages)]

    def _message(self, i: int, msg: NativeMessage) -> dict[str, Any]:
        if msg.images and msg.role != "user":
            raise InvalidRequest(
                f"messages[{i}]: images are only supported on user messages by an "
                "OpenAI-compatible backend"
            )
        if msg.role == "assistant":
            return self._assistant(msg)
        if msg.role == "tool":
            return {"role": "tool", "content": msg.content, "tool_call_id": self._pair(msg)}
        return {"role": msg.role, "content": _user_content(msg.content, msg.images)}

    def _assistant(self, msg: NativeMessage) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant"}
        # OpenAI's own form for a turn that is only tool calls is content null.
        out["content"] = msg.content if msg.content or not msg.tool_calls else None
        if msg.thinking and self._thinking_field:
            out[self._thinking_field] = msg.thinking
        if msg.tool_calls:
            out["tool_calls"] = [self._call(call) for call in msg.tool_calls]
        return out

    def _mint(self) -> str:
        self._minted += 1
        return f"call_{self._prefix}_{self._minted - 1}"

    def _call(self, call: NativeToolCall) -> dict[str, Any]:
        call_id = call.id or self._mint()
        self._calls.append(_Call(id=call_id, name=call.name))
        arguments = orjson.dumps(call.arguments).decode()
        function = {"name": call.name, "arguments": arguments}
        return {"id": call_id, "type": "function", "function": function}

    def _pair(self, msg: NativeMessage) -> str:
        """The id of the call this result answers (docs/wire-notes.md, "Tool-call ids": by id, then
        by name, then by order).  Unpaired: the client's id, or a fresh one,
        and the backend decides."""
        match = self._find(lambda c: c.id == msg.tool_call_id)
        if match is None and msg.tool_name:
            match = self._find(lambda c: c.name == msg.tool_name and not c.answered)
        if match is None:
            match = self._find(lambda c: not c.answered)
        if match is not None:
            match.answered = True
            return match.id
        return msg.tool_call_id or self._mint()

    def _find(self, wanted: Callable[[_Call], bool]) -> _Call | None:
        return next((call for call in self._calls if wanted(call)), None)


# -- /api/generate -------------------------------------------------------------------------------


def generate_to_openai(req: NativeGenerateRequest, *, model: str) -> tuple[str, dict[str, Any]]:
    """``(path, body)`` for a generate request (not a load).

    Native ``/api/generate`` applies the chat template, so it becomes a chat
    completion of ``[system?, user(prompt + images)]``.  ``raw`` (no template)
    or a ``suffix`` (fill-in-the-middle) become a legacy ``/completions``
    call with ``prompt``/``suffix``, which has no images.
    """
    if req.raw or req.suffix:
        return "/completions", _completion(req, model)
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    messages.append({"role": "user", "content": _user_content(req.prompt, req.images)})
    return "/chat/completions", {"model": model, "messages": messages, **_chat_common(req)}


def _completion(req: NativeGenerateRequest, model: str) -> dict[str, Any]:
    if req.images:
        raise InvalidRequest(
            "images cannot be combined with raw or suffix on an OpenAI-compatible backend "
            "(/v1/completions takes text only)"
        )
    body: dict[str, Any] = {"model": model, "prompt": req.prompt}
    if req.suffix:
        body["suffix"] = req.suffix
    # format, think and logprobs have no /v1/completions equivalent we can read back.
    return {**body, **_stream_fields(req.stream), **_sampling(req.options)}


# -- /api/embed and /api/embeddings ----------------------------------------------------------------


def embed_to_openai(req: NativeEmbedRequest, *, model: str) -> tuple[str, dict[str, Any]]:
    """``("/embeddings", body)``; floats are asked for explicitly (the
    openai SDKs default to base64, and some servers follow suit)."""
    body: dict[str, Any] = {
        "model": model,
        "input": req.inputs[0] if req.legacy else list(req.inputs),
        "encoding_format": "float",
    }
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    return "/embeddings", body
