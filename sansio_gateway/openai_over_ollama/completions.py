"""``POST /v1/completions`` served from an Ollama backend (``/api/generate``).

Built like :class:`~sansio_gateway.openai_over_ollama.chat.OpenAIChatFlow`: the
request arrives validated (routes.py), the native body is built for each
attempt, and the answer is translated whole (one native JSON object -> one
``text_completion``) or as a stream (``framing.NDJSONDecoder`` ->
``OllamaCompletionStream`` -> ``encode_sse_json``).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

import orjson

from ..accounting.usage import TokenUsage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, UpstreamError, openai_error_body
from ..flows.base import Plan, UpstreamCall, upstream_object
from ..flows.context import FlowContext
from ..wire.openai_completions import CompletionRequest
from .chat_response import SYSTEM_FINGERPRINT, finish_reason, usage_from_ollama
from .sse_stream import ndjson_to_sse

__all__ = [
    "NativeGenerate",
    "OllamaCompletionStream",
    "OpenAICompletionsFlow",
    "completion_request_to_ollama",
    "legacy_logprobs",
    "ollama_generate_to_completion",
    "read_generate_line",
]


def completion_request_to_ollama(
    req: CompletionRequest, *, model: str, default_max_tokens: int | None = None
) -> dict[str, Any]:
    """Build the native ``/api/generate`` body for ``req``.

    ``model`` is the backend's name for the model; ``default_max_tokens`` is
    written as ``options.num_predict`` when the client set no cap, as for chat.
    """
    body: dict[str, Any] = {
        "model": model,
        "prompt": req.prompt,
        # Always explicit: the native default is true, OpenAI's is false.
        "stream": req.stream,
        "raw": req.raw,
        "think": False,
    }
    if req.suffix is not None:
        body["suffix"] = req.suffix
    options = _options(req, default_max_tokens)
    if options:
        body["options"] = options
    if req.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = req.logprobs
    if req.keep_alive is not None:
        body["keep_alive"] = req.keep_alive
    return body


def _options(req: CompletionRequest, default_max_tokens: int | None) -> dict[str, Any]:
    """Extension options first, then the mapped parameters, which win.  Only
    what the client sent is written (Ollama's /v1 injects temperature and
    top_p 1.0 and penalties 0.0, overriding the Modelfile: docs/wire-notes.md, "Absent sampling
    parameters")."""
    options = dict(req.native_options)
    num_predict = req.max_tokens if req.max_tokens is not None else default_max_tokens
    if num_predict is not None:
        options["num_predict"] = num_predict
    for key in ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
        value = getattr(req, key)
        if value is not None:
            options[key] = value
    if req.stop is not None:
        options["stop"] = list(req.stop)
    return options


# -- native answers ------------------------------------------------------------------


class NativeGenerate(NamedTuple):
    """One native generate value, checked.  ``logprobs`` are native entries
    whose ``token``/``logprob`` (and alternatives') types were checked."""

    text: str
    logprobs: list[dict[str, Any]]
    done: bool
    done_reason: str


def _malformed(what: str) -> UpstreamError:
    return UpstreamError(f"upstream sent a malformed generate response ({what})")


def read_generate_line(value: Any) -> NativeGenerate:
    """Check one native value -- a whole body or one NDJSON line, same shape
    (docs/wire-notes.md, "Native endpoints clients call") -- and raise
    :class:`UpstreamError` for an in-band
    ``{"error": ...}`` or anything malformed.  Native ``thinking`` is dropped:
    a completion has no field for it (and ``think: false`` was asked for)."""
    if type(value) is not dict:
        raise _malformed("not a JSON object")
    if "error" in value:
        raise UpstreamError(_error_message(value["error"]))
    text = value.get("response")
    text = "" if text is None else text
    done = value.get("done", False)
    done_reason = value.get("done_reason") or ""
    if type(text) is not str or type(done) is not bool or type(done_reason) is not str:
        raise _malformed("bad response, done or done_reason")
    return NativeGenerate(text, _checked_logprobs(value.get("logprobs")), done, done_reason)


def _error_message(error: Any) -> str:
    if type(error) is str and error:
        return error
    if type(error) is dict and type(error.get("message")) is str:
        return str(error["message"])
    return "upstream error"


def _checked_logprobs(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if type(value) is not list:
        raise _malformed("logprobs is not an array")
    for entry in value:
        _token(entry)
        for alternative in _alternatives(entry):
            _token(alternative)
    return value


def _alternatives(entry: dict[str, Any]) -> list[Any]:
    top = entry.get("top_logprobs")
    if top is None:
        return []
    if type(top) is not list:
        raise _malformed("top_logprobs is not an array")
    return top


def _token(entry: Any) -> tuple[str, float]:
    if type(entry) is not dict:
        raise _malformed("logprob entry is not an object")
    token, logprob = entry.get("token", ""), entry.get("logprob", 0.0)
    if type(token) is not str or type(logprob) not in (int, float):
        raise _malformed("bad logprob entry")
    return token, logprob


def legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> tuple[dict[str, Any], int]:
    """Checked native entries -> the legacy logprobs object, and the offset
    after the last token.  Each ``top_logprobs`` dict also holds the sampled
    token ("up to logprobs+1 elements", OpenAI's Completions reference)."""
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top: list[dict[str, float]] = []
    offsets: list[int] = []
    for entry in entries:
        token, logprob = _token(entry)
        alternatives = dict(_token(alt) for alt in _alternatives(entry))
        alternatives[token] = logprob
        tokens.append(token)
        token_logprobs.append(logprob)
        top.append(alternatives)
        offsets.append(offset)
        offset += len(token)
    legacy = {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }
    return legacy, offset


def _envelope(
    completion_id: str, created: int, model: str, choices: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
    }


def _choice(text: str, logprobs: dict[str, Any] | None, reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": reason}


def ollama_generate_to_completion(
    resp: Any, *, completion_id: str, created: int, model: str
) -> dict[str, Any]:
    """Build the ``text_completion`` for a native non-stream body.

    ``model`` is the name the client sent.  Raises :class:`UpstreamError`
    when the body is an error or malformed.
    """
    line = read_generate_line(resp)
    logprobs = legacy_logprobs(line.logprobs, 0)[0] if line.logprobs else None
    choice = _choice(line.text, logprobs, finish_reason(line.done_reason, False))
    completion = _envelope(completion_id, created, model, [choice])
    completion["usage"] = usage_from_ollama(resp).as_openai()
    return completion


# -- the stream ----------------------------------------------------------------------


class _State(Enum):
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"


class OllamaCompletionStream:
    """Translate one native generate stream into ``text_completion`` chunks.

    Feed each parsed NDJSON value to :meth:`feed`; call :meth:`finish` at
    upstream EOF and :meth:`fail` on a transport failure.  When :attr:`done`
    is set and :attr:`failed` is not, the caller writes ``data: [DONE]``.

    STREAMING -> DONE on the native ``done`` line; STREAMING -> FAILED on an
    in-band error, garbage, EOF before ``done`` or a transport failure.  Both
    are final: later calls return ``[]``.  Every chunk shares one ``id`` and
    ``created``; a line with text (or logprobs) is one chunk with
    ``finish_reason: null``; the ``done`` line is the last choice chunk, with
    its text (usually ``""``) and the finish reason; then, with
    ``include_usage``, the usage chunk with ``choices: []`` (every other chunk
    then has ``"usage": null``, as OpenAI's do).
    """

    def __init__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self._id = completion_id
        self._created = created
        self._model = model
        self._include_usage = include_usage
        self._state = _State.STREAMING
        self._offset = 0  # text_offset of the next token
        self.usage: TokenUsage | None = None

    @property
    def done(self) -> bool:
        """The done line was seen and the finish chunk emitted."""
        return self._state is _State.DONE

    @property
    def failed(self) -> bool:
        """An error payload was emitted; the stream is over."""
        return self._state is _State.FAILED

    def feed(self, line: Any) -> list[dict[str, Any]]:
        """One parsed NDJSON value -> the payloads to send, in order."""
        if self._state is not _State.STREAMING:
            return []
        try:
            native = read_generate_line(line)
        except UpstreamError as err:
            return self.fail(err)
        if native.done:
            return self._finish(native, line)
        if not native.text and not native.logprobs:
            return []  # nothing to say (Ollama sends no such lines, but be quiet)
        return [self._chunk(native, None)]

    def finish(self) -> list[dict[str, Any]]:
        """The upstream ended: an error payload unless the done line was seen."""
        return self.fail(UpstreamError("upstream closed the stream before it finished"))

    def fail(self, err: GatewayError) -> list[dict[str, Any]]:
        """The transport failed: the error payload, once, unless already over."""
        if self._state is not _State.STREAMING:
            return []
        self._state = _State.FAILED
        return [openai_error_body(err)]

    def _chunk(self, native: NativeGenerate, reason: str | None) -> dict[str, Any]:
        logprobs = None
        if native.logprobs:
            logprobs, self._offset = legacy_logprobs(native.logprobs, self._offset)
        chunk = _envelope(
            self._id, self._created, self._model, [_choice(native.text, logprobs, reason)]
        )
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def _finish(self, native: NativeGenerate, line: dict[str, Any]) -> list[dict[str, Any]]:
        out = [self._chunk(native, finish_reason(native.done_reason, False))]
        self.usage = usage_from_ollama(line)
        if self._include_usage:
            chunk = _envelope(self._id, self._created, self._model, [])
            chunk["usage"] = self.usage.as_openai()
            out.append(chunk)
        self._state = _State.DONE
        return out


class OpenAICompletionsFlow:
    """One attempt; the flow itself translates a whole answer."""

    def __init__(self, context: FlowContext, request: CompletionRequest, model: str) -> None:
        self.context = context
        self.request = request
        # Unique per request (Ollama's are cmpl-<0..998>: docs/wire-notes.md, "Response ids").
        self.completion_id = f"cmpl-{context.request_id}"
        self.created = int(context.now)
        self._usage: TokenUsage | None = None

    # ---- planning ---------------------------------------------------------

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert route is not None and backend is not None
        native = completion_request_to_ollama(
            self.request,
            model=route.target,
            default_max_tokens=self.context.default_max_tokens,
        )
        body = orjson.dumps(native)
        if not self.request.stream:
            return UpstreamCall(method="POST", path="/api/generate", body=body, whole=self)
        lines = OllamaCompletionStream(
            completion_id=self.completion_id,
            created=self.created,
            model=self.request.model,
            include_usage=self.request.include_usage,
        )
        stream = ndjson_to_sse(lines, prompt_bytes=self.request.size)
        return UpstreamCall(method="POST", path="/api/generate", body=body, stream=stream)

    # ---- whole answers ---------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        native = upstream_object(body)
        self._usage = usage_from_ollama(native)
        completion = ollama_generate_to_completion(
            native, completion_id=self.completion_id, created=self.created, model=self.request.model
        )
        return orjson.dumps(completion)

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        # A token is rarely shorter than 4 bytes of JSON.
        return TokenUsage(prompt_tokens=self.request.size // 4 + 1)
