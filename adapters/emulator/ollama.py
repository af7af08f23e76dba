"""An emulated Ollama server over real HTTP: for trying the gateway without a model, and for tests.

Theory of operation
-------------------
The emulator speaks Ollama's native API (``docs/api.md``; and docs/wire-notes.md)
from one anyio code base, with h11 doing the HTTP/1.1 framing. Each connection runs a loop:
read one request (h11 undoes Content-Length and chunked bodies), turn it into a ``_Plan``
(status, headers and every body part, rendered up front by a synchronous handler), then write
the plan. A streamed plan goes out as one HTTP chunk and one write per NDJSON line, as Ollama
flushes after each token, with the scripted delays between them (``anyio.sleep`` in the
connection's own task, so a pause holds up no other connection). While a delayed plan is being
written a watcher task reads the socket, so a client hang-up is seen at once
(``disconnects``): the gateway's cancellation tests wait on it.

Each model answers from a ``ScriptedReply`` that tests swap between requests. ``fast`` mode
(benchmarks) caches plans by request bytes; ``coalesce`` also sends an undelayed stream's
lines as one HTTP chunk in one write, a framing Ollama never uses but that costs the
emulator least. ``fail_rate`` makes that fraction of generation requests fail as a
real server does (see ``OllamaEmulator``), drawn from a ``random.Random(seed)``.

Run it with ``sansio-gateway emulate`` (adapters/emulator/command.py),
``run_ollama_emulator()`` (a background thread with its own event loop) or
``serve_ollama_emulator()`` (inside the caller's event loop).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import functools
import hashlib
import itertools
import math
import random
import re
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import h11
import orjson
from anyio.from_thread import start_blocking_portal

__all__ = [
    "OLLAMA_VERSION",
    "EmulatorModel",
    "Failure",
    "OllamaEmulator",
    "RecordedRequest",
    "ScriptedReply",
    "default_models",
    "embedding_for",
    "model_key",
    "run_ollama_emulator",
    "serve_ollama_emulator",
    "token_chunks",
]

OLLAMA_VERSION = "0.13.0"
_READ_SIZE = 65_536
_MAX_BODY = 32 * 1024 * 1024  # every buffer has a limit; real chat bodies with images fit
_CACHE_LIMIT = 4096
_JSON_TYPE = b"application/json; charset=utf-8"  # what gin's c.JSON sends
_NDJSON_TYPE = b"application/x-ndjson"
_TEXT_TYPE = b"text/plain; charset=utf-8"
# Word-ish pieces that keep their whitespace, so the pieces join back to the exact text.
_WORDISH = re.compile(r"\s*\S+|\s+")
_FILLER = ("Sure", "here", "is", "a", "streamed", "answer", "from", "the", "emulated", "model")


# --------------------------------------------------------------------------- public data


@dataclass(slots=True)
class ScriptedReply:
    """What one model answers. Swap it between requests with ``OllamaEmulator.set_reply``.

    ``chunks`` / ``thinking_chunks`` win over ``content`` / ``thinking`` when given. Thinking is
    only emitted for models with the ``thinking`` capability (by default, unless ``think:false``).
    ``options.num_predict`` caps the generated pieces, thinking first as a real model spends its
    budget, then ends with ``done_reason:"length"`` and no tool calls. ``eval_count=None``
    reports the pieces sent (thinking + content), as Ollama counts every generated token.
    ``error_after_chunks`` / ``die_after_chunks`` count the stream's lines before the ``done``
    trailer (thinking, content, then the one tool-call line). Without a stream they give a 500
    error body / a connection closed before any response.
    """

    content: str = "Hello! How can I help you today?"
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_ids: bool = True
    done_reason: str = "stop"
    prompt_eval_count: int = 26
    eval_count: int | None = None
    chunks: list[str] | None = None
    thinking_chunks: list[str] | None = None
    error_status: int | None = None
    error_message: str = "something went wrong"
    error_times: int | None = None  # answer error_status this many times, then succeed
    errors_sent: int = 0  # how many error answers this reply has given
    error_after_chunks: int | None = None
    die_after_chunks: int | None = None
    delay_first_byte: float = 0.0
    delay_between_chunks: float = 0.0
    embedding_dim: int = 8
    capabilities: list[str] = field(default_factory=lambda: ["completion"])


@dataclass(slots=True)
class EmulatorModel:
    """One installed model, as ``/api/tags``, ``/api/show`` and ``/api/ps`` describe it."""

    name: str
    reply: ScriptedReply = field(default_factory=ScriptedReply)
    family: str = "llama"
    parameter_size: str = "1.2B"
    quantization_level: str = "Q8_0"
    size: int = 1_321_098_329
    digest: str = ""  # "" -> a stable sha256 derived from the name
    modified_at: str = "2025-11-20T10:04:05.123456789+01:00"  # Go prints local time + offset
    context_length: int = 131_072
    template: str = "{{ .Prompt }}"
    parameters: str = ""

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def full_name(self) -> str:
        """The name as ``/api/tags`` lists it: Ollama adds ``:latest`` when there is no tag."""
        return _with_tag(self.name)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the emulator received it (body already de-chunked)."""

    method: str
    path: str  # the request target, query string included
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    connection: int  # 1-based number of the TCP connection that carried it

    @property
    def json(self) -> Any:
        """The body decoded as JSON, or None when it is empty or not JSON."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None


def model_key(name: str) -> str:
    """Ollama's name matching: case-insensitive, default tag ``latest``, namespace ``library``."""
    key = name.strip().lower().removeprefix("registry.ollama.ai/").removeprefix("library/")
    return _with_tag(key)


def _with_tag(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def token_chunks(count: int) -> list[str]:
    """``count`` word pieces (a leading space after the first), e.g. a 20-token answer."""
    return [(" " if i else "") + _FILLER[i % len(_FILLER)] for i in range(count)]


def embedding_for(text: str, dim: int = 8, dimensions: int = 0) -> list[float]:
    """The emulator's vector for ``text``: stable and L2-normalised, like native embeddings.

    ``dimensions`` truncates then re-normalises, as ``/api/embed`` does.
    """
    raw = hashlib.shake_256(text.encode()).digest(4 * dim)
    vector = [value / 2_147_483_648.0 - 1.0 for value in struct.unpack(f"<{dim}I", raw)]
    if 0 < dimensions < dim:
        vector = vector[:dimensions]
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def default_models(tokens: int | None = None, token_delay: float = 0.0) -> list[EmulatorModel]:
    """A realistic set of models; ``tokens`` makes every chat model answer that many pieces,
    ``token_delay`` (seconds) paces every stream's lines."""
    thinking = "The user says hello. I should greet them back and offer help."
    models = [
        EmulatorModel("llama3.2:1b", ScriptedReply(capabilities=["completion", "tools"])),
        EmulatorModel(
            "qwen3:0.6b",
            ScriptedReply(thinking=thinking, capabilities=["completion", "tools", "thinking"]),
            family="qwen3",
            parameter_size="751.63M",
            quantization_level="Q4_K_M",
            size=522_653_767,
            context_length=40_960,
        ),
        EmulatorModel(
            "qwen2.5-coder:0.5b",
            ScriptedReply(content="return a + b", capabilities=["completion", "tools", "insert"]),
            family="qwen2",
            parameter_size="494.03M",
            quantization_level="Q4_K_M",
            size=397_821_319,
            context_length=32_768,
        ),
        EmulatorModel(
            "nomic-embed-text",
            ScriptedReply(embedding_dim=768, capabilities=["embedding"]),
            family="nomic-bert",
            parameter_size="137M",
            quantization_level="F16",
            size=274_302_450,
            context_length=2048,
        ),
        EmulatorModel(
            "hf.co/someuser/some-model:Q4_K_M",
            parameter_size="3.2B",
            quantization_level="Q4_K_M",
            size=2_019_393_189,
        ),
    ]
    for model in models:
        if tokens is not None and "completion" in model.reply.capabilities:
            model.reply = replace(model.reply, chunks=token_chunks(tokens))
        model.reply.delay_between_chunks = token_delay
    return models


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True, slots=True)
class _Plan:
    """A fully rendered response; the connection loop only has to write it."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    parts: tuple[bytes, ...] = ()
    streamed: bool = False  # chunked transfer encoding, one chunk per part
    close_after: bool = False  # end by closing the TCP connection instead of the message
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0


def _whole_plan(status: int, content_type: bytes, body: bytes, delay: float = 0.0) -> _Plan:
    headers = ((b"content-type", content_type), (b"content-length", b"%d" % len(body)))
    return _Plan(status, headers, (body,), first_byte_delay=delay)


def _json_plan(payload: Any, status: int = 200, delay: float = 0.0) -> _Plan:
    return _whole_plan(status, _JSON_TYPE, orjson.dumps(payload), delay)


def _error_plan(status: int, message: str, delay: float = 0.0) -> _Plan:
    return _json_plan({"error": message}, status, delay)


_ROOT = _whole_plan(200, _TEXT_TYPE, b"Ollama is running")
_VERSION = _json_plan({"version": OLLAMA_VERSION})
# gin's default 404 (also for a known path with another method: HandleMethodNotAllowed is off).
_NOT_FOUND = _whole_plan(404, b"text/plain", b"404 page not found")


def _rfc3339_nano(ns: int) -> str:
    """UTC time as Go's time.RFC3339Nano prints it: the fraction loses its trailing zeros."""
    second, nanos = divmod(ns, 1_000_000_000)
    prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{prefix}.{fraction}Z" if fraction else f"{prefix}Z"


def _now() -> str:
    return _rfc3339_nano(time.time_ns())


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> bytes:
    return formatdate(second, usegmt=True).encode()


def _line(payload: Mapping[str, Any]) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_APPEND_NEWLINE)


def _pieces(text: str, explicit: list[str] | None) -> list[str]:
    return list(explicit) if explicit is not None else _WORDISH.findall(text)


def _token_ids(text: str) -> list[int]:
    # Stand-in token ids: stable per piece, inside a llama-3-sized vocabulary.
    return [zlib.crc32(piece.encode()) % 128_256 for piece in _WORDISH.findall(text)]


def _metrics(prompt_tokens: int, eval_tokens: int) -> dict[str, int]:
    """Deterministic durations (ns); Go's ``omitempty`` drops the zero ones."""
    load, prompt_ns, eval_ns = 1_250_000, prompt_tokens * 250_000, eval_tokens * 6_000_000
    metrics = {
        "total_duration": load + prompt_ns + eval_ns + 400_000,
        "load_duration": load,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": eval_tokens,
        "eval_duration": eval_ns,
    }
    return {key: value for key, value in metrics.items() if value}


def _native_tool_calls(reply: ScriptedReply, new_id: Callable[[], str]) -> list[dict[str, Any]]:
    """Complete calls as Ollama sends them: ``function.index`` is the position, ids optional."""
    calls = []
    for index, call in enumerate(reply.tool_calls):
        function = call.get("function", {})
        native: dict[str, Any] = {}
        if reply.tool_call_ids:  # native ids since 0.12.10: docs/wire-notes.md, "Tool-call ids"
            native["id"] = call.get("id") or new_id()
        native["function"] = {
            "index": index,
            "name": function.get("name", ""),
            "arguments": function.get("arguments", {}),
        }
        calls.append(native)
    return calls


@dataclass(frozen=True, slots=True)
class _Turn:
    """What the scripted model generates for one request, after think and num_predict."""

    thinking: list[str]
    content: list[str]
    tool_calls: list[dict[str, Any]]
    done_reason: str
    metrics: dict[str, int]


def _take_turn(
    reply: ScriptedReply, *, think: bool, num_predict: int | None, new_id: Callable[[], str]
) -> _Turn:
    thinking = _pieces(reply.thinking, reply.thinking_chunks) if think else []
    content = _pieces(reply.content, reply.chunks)
    calls = _native_tool_calls(reply, new_id)
    done_reason = reply.done_reason
    if num_predict is not None and len(thinking) + len(content) > num_predict:
        # A real model spends its budget on reasoning first; a cut-off model calls no tools.
        thinking = thinking[:num_predict]
        content = content[: num_predict - len(thinking)]
        calls, done_reason = [], "length"
    generated = len(thinking) + len(content)
    eval_count = generated if reply.eval_count is None else reply.eval_count
    return _Turn(
        thinking, content, calls, done_reason, _metrics(reply.prompt_eval_count, eval_count)
    )


@dataclass(frozen=True, slots=True)
class _Shape:
    """Where /api/chat and /api/generate put the same facts (Go struct field order kept)."""

    body: Callable[[str, str, list[dict[str, Any]]], dict[str, Any]]
    final: Callable[[str, dict[str, int], list[int] | None], dict[str, Any]]


def _chat_body(content: str, thinking: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return {"message": message}


def _chat_final(reason: str, metrics: dict[str, int], _context: list[int] | None) -> dict[str, Any]:
    return {"done_reason": reason, "done": True, **metrics}


def _generate_body(content: str, thinking: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"response": content}
    if thinking:
        body["thinking"] = thinking
    if calls:
        body["tool_calls"] = calls
    return body


def _generate_final(
    reason: str, metrics: dict[str, int], context: list[int] | None
) -> dict[str, Any]:
    final: dict[str, Any] = {"done": True, "done_reason": reason}
    if context is not None:
        final["context"] = context
    return {**final, **metrics}


_CHAT = _Shape(_chat_body, _chat_final)
_GENERATE = _Shape(_generate_body, _generate_final)


def _stream_lines(model: str, shape: _Shape, turn: _Turn) -> list[bytes]:
    """Every line before the ``done`` trailer; all tool calls share one line, after the text."""
    bodies = [shape.body("", piece, []) for piece in turn.thinking]
    bodies += [shape.body(piece, "", []) for piece in turn.content]
    if turn.tool_calls:
        bodies.append(shape.body("", "", turn.tool_calls))
    return [_line({"model": model, "created_at": _now(), **body, "done": False}) for body in bodies]


def _final_payload(
    model: str, shape: _Shape, turn: _Turn, context: list[int] | None, *, whole: bool
) -> dict[str, Any]:
    """The ``done:true`` object: the whole answer, or an empty message (the metrics trailer)."""
    if whole:
        body = shape.body("".join(turn.content), "".join(turn.thinking), turn.tool_calls)
    else:
        body = shape.body("", "", [])
    tail = shape.final(turn.done_reason, turn.metrics, context)
    return {"model": model, "created_at": _now(), **body, **tail}


def _generation_plan(
    model: str,
    shape: _Shape,
    turn: _Turn,
    reply: ScriptedReply,
    *,
    stream: bool,
    context: list[int] | None,
) -> _Plan:
    delay = reply.delay_first_byte
    if not stream:
        if reply.error_after_chunks is not None:  # a failure before the answer: plain error
            return _error_plan(500, reply.error_message, delay)
        if reply.die_after_chunks is not None:
            return _Plan(200, (), close_after=True, first_byte_delay=delay)
        return _json_plan(_final_payload(model, shape, turn, context, whole=True), delay=delay)
    lines = _stream_lines(model, shape, turn)
    close_after = False
    if reply.error_after_chunks is not None:
        # Once bytes are out, Ollama reports errors as one more line; the status stays 200.
        lines = [*lines[: reply.error_after_chunks], _line({"error": reply.error_message})]
    elif reply.die_after_chunks is not None:
        lines, close_after = lines[: reply.die_after_chunks], True
    else:
        lines.append(_line(_final_payload(model, shape, turn, context, whole=False)))
    headers = ((b"content-type", _NDJSON_TYPE),)
    return _Plan(200, headers, tuple(lines), True, close_after, delay, reply.delay_between_chunks)


# --------------------------------------------------------------------------- request checks


@dataclass(frozen=True, slots=True)
class _GoType:
    """A Go type as encoding/json sees it: the JSON kinds it takes, and what is inside."""

    name: str
    kinds: frozenset[str]
    item: _GoType | None = None
    fields: Mapping[str, _GoType] | None = None


def _go(
    name: str, *kinds: str, item: _GoType | None = None, fields: Mapping[str, _GoType] | None = None
) -> _GoType:
    return _GoType(name, frozenset(kinds), item, fields)


_STR, _BOOL, _INT = _go("string", "string"), _go("bool", "bool"), _go("int", "number")
_OPTIONS = _go("map[string]interface {}", "object")
_RAW = _go("json.RawMessage", "null", "bool", "number", "string", "array", "object")
_DURATION, _THINK = _go("api.Duration", "number", "string"), _go("api.ThinkValue", "bool", "string")
_IMAGES = _go("[]api.ImageData", "array", item=_go("api.ImageData", "string"))
_FUNCTION = {
    "index": _INT,
    "name": _STR,
    "arguments": _go("api.ToolCallFunctionArguments", "object"),
}
_TOOL_CALL = _go(
    "api.ToolCall",
    "object",
    fields={"id": _STR, "function": _go("api.ToolCallFunction", "object", fields=_FUNCTION)},
)
_MESSAGE = {
    **{"role": _STR, "content": _STR, "thinking": _STR, "images": _IMAGES},
    **{
        "tool_calls": _go("[]api.ToolCall", "array", item=_TOOL_CALL),
        "tool_name": _STR,
        "tool_call_id": _STR,
    },
}
_COMMON = {"model": _STR, "options": _OPTIONS, "keep_alive": _DURATION}
_GENERATION = {
    **_COMMON,
    **{"stream": _BOOL, "format": _RAW, "think": _THINK, "truncate": _BOOL, "shift": _BOOL},
    **{"logprobs": _BOOL, "top_logprobs": _INT},
}
_CHAT_REQUEST = _go(
    "ChatRequest",
    "object",
    fields={
        **_GENERATION,
        "messages": _go(
            "[]api.Message", "array", item=_go("api.Message", "object", fields=_MESSAGE)
        ),
        "tools": _go("api.Tools", "array", item=_go("api.Tool", "object")),
    },
)
_GENERATE_REQUEST = _go(
    "GenerateRequest",
    "object",
    fields={
        **_GENERATION,
        **{"prompt": _STR, "suffix": _STR, "system": _STR, "template": _STR, "raw": _BOOL},
        **{"context": _go("[]int", "array", item=_INT), "images": _IMAGES},
    },
)
_EMBED_REQUEST = _go(
    "EmbedRequest",
    "object",
    fields={**_COMMON, "input": _RAW, "truncate": _BOOL, "dimensions": _INT},
)
_EMBEDDINGS_REQUEST = _go("EmbeddingRequest", "object", fields={**_COMMON, "prompt": _STR})
_SHOW_REQUEST = _go(
    "ShowRequest", "object", fields={**_COMMON, "name": _STR, "system": _STR, "verbose": _BOOL}
)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_error(value: Any, go: _GoType, where: str) -> str | None:
    """The first error Go's decoder would report for ``value``, or None (null is always fine)."""
    kind = _json_kind(value)
    if kind == "null":
        return None
    if kind not in go.kinds:
        return f"json: cannot unmarshal {kind} into Go struct field {where} of type {go.name}"
    if go is _INT and not isinstance(value, int):
        return f"json: cannot unmarshal number {value} into Go struct field {where} of type int"
    if go.item is not None and isinstance(value, list):
        return next((e for v in value if (e := _type_error(v, go.item, where))), None)
    if go.fields is not None and isinstance(value, dict):
        for key, sub in go.fields.items():
            if key in value and (error := _type_error(value[key], sub, f"{where}.{key}")):
                return error
    return None


_GO_CONTEXTS = (
    ("expected a string key", "looking for beginning of object key string"),
    ("expected ':'", "after object key"),
    ("expected ',' or '}'", "after object key:value pair"),
    ("expected ',' or ']'", "after array element"),
    ("after document", "after top-level value"),
)


def _go_quote(char: str) -> str:
    if char in "'\"":  # Go's quoteChar special-cases both quotes
        return "'\\''" if char == "'" else "'\"'"
    return "'" + orjson.dumps(char).decode()[1:-1] + "'"


def _go_syntax_error(body: bytes, exc: orjson.JSONDecodeError) -> str:
    """orjson's complaint phrased as Go's encoding/json's: clients and tests match on it."""
    text, pos = body.decode("utf-8", "replace"), exc.pos
    if "trailing comma" in exc.msg:  # Go objects to what follows the comma
        pos = next((i for i in range(pos + 1, len(text)) if not text[i].isspace()), len(text))
    if pos >= len(text) or "end of data" in exc.msg:
        return "unexpected EOF"
    context = next(
        (go for hint, go in _GO_CONTEXTS if hint in exc.msg), "looking for beginning of value"
    )
    if "trailing comma" in exc.msg and text[pos] == "}":
        context = "looking for beginning of object key string"
    return f"invalid character {_go_quote(text[pos])} {context}"


def _decode(body: bytes, struct_type: _GoType) -> dict[str, Any] | _Plan:
    """Bind a body like gin's ShouldBindJSON; a failure is the 400 Ollama would send."""
    if not body.strip():
        return _error_plan(400, "missing request body")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _error_plan(400, _go_syntax_error(body, exc))
    if value is None:
        value = {}
    if not isinstance(value, dict):
        kind = _json_kind(value)
        return _error_plan(
            400, f"json: cannot unmarshal {kind} into Go value of type api.{struct_type.name}"
        )
    error = _type_error(value, struct_type, struct_type.name)
    return value if error is None else _error_plan(400, error)


def _image_error(images: Any) -> str | None:
    """Images are Go []byte, so each must be standard padded base64."""
    for image in images or ():
        try:
            base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            bad = next(
                (i for i, c in enumerate(image) if not (c.isalnum() or c in "+/=")), len(image)
            )
            return f"illegal base64 data at input byte {bad}"
    return None


def _thinking(request: dict[str, Any], name: str, capabilities: list[str]) -> bool | _Plan:
    """Whether the model thinks. Thinking models do unless told not to (docs/wire-notes.md,
    "Reasoning effort and think")."""
    think = request.get("think")
    if think is None:
        return "thinking" in capabilities
    if not think:
        return False
    if "thinking" not in capabilities:
        return _error_plan(400, f'"{name}" does not support thinking')
    return True


def _num_predict(request: dict[str, Any]) -> int | None:
    options = request.get("options")
    value = options.get("num_predict") if isinstance(options, dict) else None
    # -1 (unbounded), -2 (fill the context) and 0 impose no cap.
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return None


def _is_zero_keep_alive(value: Any) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    return (
        isinstance(value, str)
        and re.fullmatch(r"0+(\.0*)?(ns|us|µs|ms|s|m|h)?", value.strip()) is not None
    )


def _embed_inputs(value: Any) -> list[str] | None:
    """Ollama embeds a string or a list of strings; "" and a missing input embed nothing."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _templated(request: dict[str, Any]) -> str:
    """Roughly what a template makes of system/prompt/suffix; it only feeds ``context``."""
    parts = (request.get("system"), request.get("prompt"), request.get("suffix"))
    return "\n".join(part for part in parts if part)


def _details(model: EmulatorModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def _listing(model: EmulatorModel) -> dict[str, Any]:
    name = model.full_name
    return {
        "name": name,
        "model": name,
        "modified_at": model.modified_at,
        "size": model.size,
        "digest": model.digest,
        "details": _details(model),
    }


def _parameter_count(size: str) -> int:
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}.get(size[-1:].upper(), 1)
    try:
        return int(float(size.rstrip("KMBTkmbt")) * scale)
    except ValueError:
        return 0


def _show_body(model: EmulatorModel) -> dict[str, Any]:
    family, name = model.family, model.full_name
    body: dict[str, Any] = {
        "modelfile": f'# Modelfile generated by "ollama show"\nFROM {name}\nTEMPLATE """{model.template}"""\n',
        "template": model.template,
        "details": _details(model),
        "model_info": {
            "general.architecture": family,
            "general.parameter_count": _parameter_count(model.parameter_size),
            f"{family}.context_length": model.context_length,
            f"{family}.embedding_length": model.reply.embedding_dim,
        },
        "capabilities": list(model.reply.capabilities),
        "modified_at": model.modified_at,
    }
    if model.parameters:
        body = {"parameters": model.parameters, **body}
    return body


# --------------------------------------------------------------------------- the server


class Failure(enum.Enum):
    """How a failure injected by ``fail_rate`` shows on the wire: what a real Ollama does."""

    BUSY = "busy"  # the scheduler's queue is full (OLLAMA_MAX_QUEUE): 503
    CRASHED = "crashed"  # the runner process died before the first token: 500
    CUT = "cut"  # the server went away mid-stream: no done line, no chunked terminator


# Ollama's own texts (server/sched.go ErrMaxQueue; the runner's exit error), so clients and
# the gateway meet the bodies they will meet in production.
_BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
_CRASHED_MESSAGE = "llama runner process has terminated: exit status 2"


class _Outcome(enum.Enum):
    COMPLETE = enum.auto()
    SERVER_CLOSED = enum.auto()  # the script asked to drop the connection
    CLIENT_GONE = enum.auto()


_Handler = Callable[[bytes], _Plan]
_Found = tuple[dict[str, Any], str, EmulatorModel]


class OllamaEmulator:
    """The emulated server. Serve it with ``serve()``, or use the ``run_*`` helpers below.

    Counters (``active_connections``, ``total_connections``, ``active_requests``,
    ``active_streams``, ``disconnects``) change only on the server's loop; ``wait_for`` blocks
    until a predicate over them holds, without sleeping. ``disconnected`` is set at the first
    client hang-up during a response (clear it to reuse it).

    ``fail_rate`` (0 to 1) makes that fraction of chat and generate requests fail, each drawing
    a ``Failure`` from a ``random.Random(seed)``: a streamed request may be BUSY, CRASHED or
    CUT after half its lines, a whole one BUSY or CRASHED. The same seed and the same order of
    requests give the same failures; ``failures`` counts them by kind.
    """

    def __init__(
        self,
        models: Sequence[EmulatorModel] | None = None,
        *,
        fast: bool = False,
        coalesce: bool = False,
        record_requests: bool = True,
        fail_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, not {fail_rate}")
        self._cache: dict[tuple[bytes, bytes, bytes], _Plan] = {}
        self.models: dict[str, EmulatorModel] = {}
        for model in default_models() if models is None else models:
            self.add_model(model)
        self.fast = fast
        self.coalesce = coalesce
        self.record_requests = record_requests
        self.fail_rate = fail_rate
        self._faults = random.Random(seed)
        self.failures: dict[Failure, int] = dict.fromkeys(Failure, 0)
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []  # emulator bugs; tests can assert it stays empty
        self.url, self.port = "", 0
        self.active_connections = self.total_connections = 0
        self.active_requests = self.active_streams = self.disconnects = 0
        self.disconnected = threading.Event()
        self._changed = threading.Condition()
        self._loaded: dict[str, EmulatorModel] = {}
        self._call_ids = itertools.count(1)
        self._routes: dict[tuple[bytes, bytes], _Handler] = {
            **{(method, b"/"): lambda _: _ROOT for method in (b"GET", b"HEAD")},
            **{(method, b"/api/version"): lambda _: _VERSION for method in (b"GET", b"HEAD")},
            **{(method, b"/api/tags"): self._tags for method in (b"GET", b"HEAD")},
            (b"GET", b"/api/ps"): self._ps,
            (b"POST", b"/api/show"): self._show,
            (b"POST", b"/api/chat"): self._chat,
            (b"POST", b"/api/generate"): self._generate,
            (b"POST", b"/api/embed"): self._embed,
            (b"POST", b"/api/embeddings"): self._embeddings,
        }

    # ----------------------------------------------------------------- test controls

    def add_model(self, model: EmulatorModel) -> None:
        self.models[model_key(model.name)] = model
        self._cache.clear()

    def model(self, name: str) -> EmulatorModel:
        """The model Ollama would resolve ``name`` to; KeyError when there is none."""
        return self.models[model_key(name)]

    def set_reply(self, name: str, reply: ScriptedReply) -> None:
        """Replace a model's script (capabilities included) for the next requests."""
        self.model(name).reply = reply
        self._cache.clear()

    def update_reply(self, name: str, **changes: Any) -> ScriptedReply:
        """Change some fields of a model's script, keeping the rest (e.g. its capabilities)."""
        reply = replace(self.model(name).reply, **changes)
        self.set_reply(name, reply)
        return reply

    def clear_requests(self) -> None:
        self.requests.clear()

    def last_request(self, path: str | None = None) -> RecordedRequest:
        """The newest recorded request, optionally for one path; IndexError when none."""
        return [r for r in self.requests if path is None or r.path == path][-1]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` holds (re-checked at each change); False on timeout."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    async def wait_for_async(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - the wait runs in a thread, out of a cancel scope's reach
    ) -> bool:
        """``wait_for`` from async code on any loop: it waits in a worker thread."""
        return await anyio.to_thread.run_sync(self.wait_for, predicate, timeout)

    def _count(self, **deltas: int) -> None:
        with self._changed:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)
            self._changed.notify_all()

    def _new_call_id(self) -> str:
        return f"call_{next(self._call_ids):08d}"

    def _draw_failure(self, stream: bool) -> Failure | None:
        if self.fail_rate <= 0.0 or self._faults.random() >= self.fail_rate:
            return None
        kinds = list(Failure) if stream else [Failure.BUSY, Failure.CRASHED]
        failure = self._faults.choice(kinds)
        with self._changed:
            self.failures[failure] += 1
            self._changed.notify_all()
        return failure

    # ----------------------------------------------------------------- serving

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen (port 0 picks a free one), report the URL through ``task_status``, serve forever."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}"
            task_status.started(self.url)
            await listener.serve(self._serve_connection)

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        self._count(active_connections=1, total_connections=1)
        number = self.total_connections
        conn = h11.Connection(h11.SERVER)
        try:
            await self._converse(conn, stream, number)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client broke the connection: nobody left to answer
        except h11.RemoteProtocolError as exc:
            await _refuse(conn, stream, exc.error_status_hint)
        except Exception as exc:  # an emulator bug must not take the listener down
            self.errors.append(exc)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            self._count(active_connections=-1)

    async def _converse(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, number: int
    ) -> None:
        """Answer requests on one connection until either side ends keep-alive."""
        while (received := await _read_request(conn, stream)) is not None:
            request, body = received
            self._record(request, body, number)
            if not await self._answer(conn, stream, request, body):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    def _record(self, request: h11.Request, body: bytes, number: int) -> None:
        if not self.record_requests:
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers
        }
        entry = RecordedRequest(
            request.method.decode(), request.target.decode("latin-1"), headers, body, number
        )
        with self._changed:
            self.requests.append(entry)
            self._changed.notify_all()

    async def _answer(
        self,
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        request: h11.Request,
        body: bytes,
    ) -> bool:
        """Write the response; True when the connection may carry another request."""
        plan = self._plan_for(request.method, request.target, body)
        watch = plan.first_byte_delay > 0 or (plan.streamed and plan.chunk_delay > 0)
        send = self._send_watched if watch else self._send_guarded
        self._count(active_requests=1)
        try:
            outcome = await send(conn, stream, plan, request.method == b"HEAD")
        finally:
            self._count(active_requests=-1)
        if outcome is _Outcome.CLIENT_GONE:
            self._count(disconnects=1)
            self.disconnected.set()
        return outcome is _Outcome.COMPLETE

    def _plan_for(self, method: bytes, target: bytes, body: bytes) -> _Plan:
        path = target.partition(b"?")[0]
        key = (method, path, body)
        # Injected failures are drawn per request, so their plans are never cached.
        cache = self.fast and self.fail_rate <= 0.0
        if cache and (cached := self._cache.get(key)) is not None:
            return cached
        handler = self._routes.get((method, path))
        plan = _NOT_FOUND if handler is None else handler(body)
        if cache:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = plan
        return plan

    async def _send_watched(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, plan: _Plan, head_only: bool
    ) -> _Outcome:
        """Send a slow response while reading the socket, so a hang-up cancels it at once."""
        outcome = _Outcome.CLIENT_GONE
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await _wait_for_hangup(conn, stream)
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            outcome = await self._send_guarded(conn, stream, plan, head_only)
            tg.cancel_scope.cancel()
        return outcome

    async def _send_guarded(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, plan: _Plan, head_only: bool
    ) -> _Outcome:
        try:
            return await self._send_plan(conn, stream, plan, head_only)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return _Outcome.CLIENT_GONE

    async def _send_plan(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, plan: _Plan, head_only: bool
    ) -> _Outcome:
        if plan.first_byte_delay > 0:
            await anyio.sleep(plan.first_byte_delay)
        if plan.close_after and not plan.streamed:
            return _Outcome.SERVER_CLOSED
        headers = [*plan.headers, (b"date", _http_date(int(time.time())))]
        head = _wire(conn, h11.Response(status_code=plan.status, headers=headers))
        if head_only or not plan.streamed:
            body = b"" if head_only else b"".join(_wire(conn, h11.Data(data=p)) for p in plan.parts)
            await stream.send(head + body + _wire(conn, h11.EndOfMessage()))
            return _Outcome.COMPLETE
        self._count(active_streams=1)
        try:
            await self._send_frames(conn, stream, plan, head)
        finally:
            self._count(active_streams=-1)
        return _Outcome.SERVER_CLOSED if plan.close_after else _Outcome.COMPLETE

    async def _send_frames(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, plan: _Plan, head: bytes
    ) -> None:
        """One HTTP chunk and one write per NDJSON line, as Ollama flushes per token.

        ``coalesce`` sends an undelayed stream's lines as one chunk in one write: NDJSON
        readers split on newlines, not on chunks, and h11 costs about 10 us per chunk.
        """
        parts = plan.parts
        if self.coalesce and plan.chunk_delay <= 0 and parts:
            parts = (b"".join(parts),)
        frames = [_wire(conn, h11.Data(data=part)) for part in parts] or [b""]
        frames[0] = head + frames[0]
        if not plan.close_after:
            frames[-1] += _wire(conn, h11.EndOfMessage())
        for index, frame in enumerate(frames):
            if index and plan.chunk_delay > 0:
                await anyio.sleep(plan.chunk_delay)
            await stream.send(frame)

    # ----------------------------------------------------------------- handlers

    def _tags(self, _body: bytes) -> _Plan:
        return _json_plan({"models": [_listing(model) for model in self.models.values()]})

    def _ps(self, _body: bytes) -> _Plan:
        expires_at = _rfc3339_nano(time.time_ns() + 300 * 10**9)  # Ollama's default keep_alive
        running = [
            {
                **_listing(m),
                "expires_at": expires_at,
                "size_vram": m.size,
                "context_length": m.context_length,
            }
            for m in self._loaded.values()
        ]
        for entry in running:
            del entry["modified_at"]
        return _json_plan({"models": running})

    def _show(self, body: bytes) -> _Plan:
        request = _decode(body, _SHOW_REQUEST)
        if isinstance(request, _Plan):
            return request
        name = request.get("model") or request.get("name") or ""
        if not name:
            return _error_plan(400, "model is required")
        model = self.models.get(model_key(name))
        if model is None:
            return _error_plan(404, f"model '{name}' not found")
        return _json_plan(_show_body(model))

    def _find(self, body: bytes, struct_type: _GoType) -> _Found | _Plan:
        """Decode the request and resolve its model, or return the error Ollama would send."""
        request = _decode(body, struct_type)
        if isinstance(request, _Plan):
            return request
        name = request.get("model") or ""
        if not name:
            return _error_plan(400, "model is required")
        model = self.models.get(model_key(name))
        if model is None:
            return _error_plan(404, f'model "{name}" not found, try pulling it first')
        return request, name, model

    def _prologue(
        self, body: bytes, struct_type: _GoType, verb: str
    ) -> tuple[_Found, bool] | _Plan:
        """Checks shared by chat and generate; on success also says whether the model thinks."""
        found = self._find(body, struct_type)
        if isinstance(found, _Plan):
            return found
        request, name, model = found
        capabilities = model.reply.capabilities
        if "completion" not in capabilities:
            return _error_plan(400, f'"{name}" does not support {verb}')
        if request.get("tools") and "tools" not in capabilities:
            return _error_plan(400, f'"{name}" does not support tools')
        fmt = request.get("format")
        if not (fmt in (None, "", "json") or isinstance(fmt, dict)):
            return _error_plan(400, 'invalid format: expected "json" or a valid JSON schema')
        think = _thinking(request, name, capabilities)
        return think if isinstance(think, _Plan) else (found, think)

    def _chat(self, body: bytes) -> _Plan:
        ready = self._prologue(body, _CHAT_REQUEST, "chat")
        if isinstance(ready, _Plan):
            return ready
        (request, name, model), think = ready
        messages = [m for m in request.get("messages") or () if isinstance(m, dict)]
        if error := next((e for m in messages if (e := _image_error(m.get("images")))), None):
            return _error_plan(400, error)
        if not messages:
            return self._load(request, name, model, _CHAT)
        return self._generation(request, name, model, _CHAT, think, None)

    def _generate(self, body: bytes) -> _Plan:
        ready = self._prologue(body, _GENERATE_REQUEST, "generate")
        if isinstance(ready, _Plan):
            return ready
        (request, name, model), think = ready
        if request.get("suffix") and "insert" not in model.reply.capabilities:
            return _error_plan(400, f'"{name}" does not support insert')
        if error := _image_error(request.get("images")):
            return _error_plan(400, error)
        if not request.get("prompt") and not request.get("images"):
            return self._load(request, name, model, _GENERATE)
        # raw skips the template, and Ollama then returns no context.
        prompt = None if request.get("raw") else _templated(request)
        return self._generation(request, name, model, _GENERATE, think, prompt)

    def _load(
        self, request: dict[str, Any], name: str, model: EmulatorModel, shape: _Shape
    ) -> _Plan:
        """Nothing to generate: Ollama only loads the model, or unloads it with keep_alive 0."""
        key = model_key(model.name)
        if _is_zero_keep_alive(request.get("keep_alive")):
            self._loaded.pop(key, None)
            reason = "unload"
        else:
            self._loaded[key] = model
            reason = "load"
        return _json_plan(
            {
                "model": name,
                "created_at": _now(),
                **shape.body("", "", []),
                **shape.final(reason, {}, None),
            }
        )

    def _generation(
        self,
        request: dict[str, Any],
        name: str,
        model: EmulatorModel,
        shape: _Shape,
        think: bool,
        prompt: str | None,
    ) -> _Plan:
        reply = model.reply
        self._loaded[model_key(model.name)] = model
        if reply.error_status is not None and (
            reply.error_times is None or reply.errors_sent < reply.error_times
        ):
            reply.errors_sent += 1
            return _error_plan(reply.error_status, reply.error_message, reply.delay_first_byte)
        stream = request.get("stream") is not False
        failure = self._draw_failure(stream)
        if failure is Failure.BUSY:
            return _error_plan(503, _BUSY_MESSAGE)
        if failure is Failure.CRASHED:
            return _error_plan(500, _CRASHED_MESSAGE, reply.delay_first_byte)
        turn = _take_turn(
            reply, think=think, num_predict=_num_predict(request), new_id=self._new_call_id
        )
        if failure is Failure.CUT:
            generated = len(turn.thinking) + len(turn.content) + bool(turn.tool_calls)
            reply = replace(reply, error_after_chunks=None, die_after_chunks=generated // 2)
        context = None
        if prompt is not None:
            context = [
                *(request.get("context") or ()),
                *_token_ids(prompt),
                *_token_ids("".join(turn.content)),
            ]
        return _generation_plan(name, shape, turn, reply, stream=stream, context=context)

    def _embed(self, body: bytes) -> _Plan:
        found = self._find(body, _EMBED_REQUEST)
        if isinstance(found, _Plan):
            return found
        request, name, model = found
        reply = model.reply
        inputs = _embed_inputs(request.get("input"))
        if inputs is None:
            return _error_plan(400, "invalid input type")
        self._loaded[model_key(model.name)] = model
        if reply.error_status is not None:
            return _error_plan(reply.error_status, reply.error_message, reply.delay_first_byte)
        dimensions = request.get("dimensions") or 0
        vectors = [embedding_for(text, reply.embedding_dim, dimensions) for text in inputs]
        metrics = _metrics(sum(len(_WORDISH.findall(text)) for text in inputs), 0)
        keep = ("total_duration", "load_duration", "prompt_eval_count")
        payload = {
            "model": name,
            "embeddings": vectors,
            **{k: v for k, v in metrics.items() if k in keep},
        }
        return _json_plan(payload, delay=reply.delay_first_byte)

    def _embeddings(self, body: bytes) -> _Plan:
        found = self._find(body, _EMBEDDINGS_REQUEST)
        if isinstance(found, _Plan):
            return found
        request, _name, model = found
        reply = model.reply
        self._loaded[model_key(model.name)] = model
        if reply.error_status is not None:
            return _error_plan(reply.error_status, reply.error_message, reply.delay_first_byte)
        prompt = request.get("prompt") or ""
        vector = embedding_for(prompt, reply.embedding_dim) if prompt else []
        return _json_plan({"embedding": vector}, delay=reply.delay_first_byte)


def _wire(conn: h11.Connection, event: h11.Event) -> bytes:
    return conn.send(event) or b""


async def _next_event(conn: h11.Connection, stream: anyio.abc.ByteReceiveStream) -> object:
    while (event := conn.next_event()) is h11.NEED_DATA:
        try:
            data = await stream.receive(_READ_SIZE)
        except anyio.EndOfStream:
            data = b""
        conn.receive_data(data)
    return event


async def _read_request(
    conn: h11.Connection, stream: anyio.abc.ByteStream
) -> tuple[h11.Request, bytes] | None:
    """The next request and its whole body; None when the client closed the connection."""
    request = await _next_event(conn, stream)
    if not isinstance(request, h11.Request):
        return None
    if conn.they_are_waiting_for_100_continue:  # curl asks before sending bodies over 1 KiB
        await stream.send(_wire(conn, h11.InformationalResponse(status_code=100, headers=[])))
    body = bytearray()
    while isinstance(event := await _next_event(conn, stream), h11.Data):
        body += event.data
        if len(body) > _MAX_BODY:
            raise h11.RemoteProtocolError("request body too large", 413)
    return (request, bytes(body)) if isinstance(event, h11.EndOfMessage) else None


async def _refuse(conn: h11.Connection, stream: anyio.abc.ByteSendStream, status: int) -> None:
    """Answer broken HTTP the way Go's net/http does (plain text, then close), if still possible."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{status} {HTTPStatus(status).phrase}".encode()
    headers = [(b"content-type", _TEXT_TYPE), (b"connection", b"close")]
    headers.append((b"content-length", b"%d" % len(body)))
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        head = _wire(conn, h11.Response(status_code=status, headers=headers))
        await stream.send(head + _wire(conn, h11.Data(data=body)) + _wire(conn, h11.EndOfMessage()))


async def _wait_for_hangup(conn: h11.Connection, stream: anyio.abc.ByteReceiveStream) -> None:
    """Return once the peer closes; bytes meanwhile (a pipelined request) are kept for h11."""
    while True:
        try:
            data = await stream.receive(_READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        conn.receive_data(data)


# --------------------------------------------------------------------------- runners


@contextlib.contextmanager
def run_ollama_emulator(
    models: Sequence[EmulatorModel] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    fast: bool = False,
    coalesce: bool = False,
    record_requests: bool = True,
) -> Iterator[OllamaEmulator]:
    """Serve an emulator from a background thread with its own event loop.

    Returns once it listens (``emu.url``); on exit every connection and stream is cancelled and
    the thread is joined.
    """
    emulator = OllamaEmulator(models, fast=fast, coalesce=coalesce, record_requests=record_requests)
    with start_blocking_portal(name="ollama-emulator") as portal:
        portal.start_task(emulator.serve, host, port)
        try:
            yield emulator
        finally:
            portal.call(portal.stop, True)


@contextlib.asynccontextmanager
async def serve_ollama_emulator(
    models: Sequence[EmulatorModel] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    fast: bool = False,
    record_requests: bool = True,
) -> AsyncIterator[OllamaEmulator]:
    """Serve an emulator inside the caller's event loop (asyncio or trio) until the block ends."""
    emulator = OllamaEmulator(models, fast=fast, record_requests=record_requests)
    async with anyio.create_task_group() as tg:
        await tg.start(emulator.serve, host, port)
        try:
            yield emulator
        finally:
            tg.cancel_scope.cancel()
