"""OpenAI legacy Completions (``/v1/completions``) served by Ollama's ``/api/generate``.

Theory of operation: three pure steps, in the order a request meets them.

1. :func:`parse_completion_request` validates the client's body into a frozen
   :class:`CompletionRequest` (unknown top-level keys are a 400, as on
   OpenAI).  The typed checkers are the chat parser's
   (:mod:`sansio_gateway.openai_chat_request`), so both endpoints word their
   400s identically.
2. :func:`completion_request_to_ollama` builds the native body.
3. The answer comes back whole -- :func:`ollama_generate_to_completion` -- or
   as NDJSON lines fed one by one to :class:`OllamaCompletionStream`, which
   has the same API shape as ``OllamaChatStream``: ``feed(line) -> list``,
   ``finish()``, ``fail(err)``, ``done``, ``failed``, ``usage``.  Both build on
   :func:`read_generate_line`, so a streamed and a whole answer to the same
   backend output agree on text, logprobs, finish reason and usage.

Decisions (docs/openai-compatibility.md has the full table):

* **raw** -- Ollama's own ``/v1/completions`` runs the prompt through the
  model's chat template (docs/wire-notes.md, "Completions and the chat
  template"), so a client asking for a completion of
  ``"def fib("`` gets a chat answer.  A Completions client wants the model to
  continue *its* text, so native ``raw: true`` is the default.  Exception:
  with a ``suffix`` the template is needed (fill-in-the-middle templates
  place prompt and suffix around the model's FIM tokens; in raw mode Ollama
  silently drops the suffix), so ``raw`` defaults to false there.  The
  extension ``raw: false`` opts back into the template; ``raw: true`` with a
  ``suffix`` is a 400 rather than a silently ignored suffix.
* **think** -- native ``think: false`` is always sent: a completion has no
  field for reasoning, so thinking would spend ``max_tokens`` on text the
  client never sees (docs/wire-notes.md, "Reasoning effort and think"), and
  in raw mode Ollama would cut ``<think>`` spans out of the continuation.
* **prompt** -- a string, or a list holding exactly one string.  Several
  prompts would need n-way fan-out (one native request per prompt); that is
  a 400 instead.  Token arrays are a 400: Ollama models have their own
  tokenizers, so OpenAI token ids would mean other text.
* **logprobs** (0..5) -> native ``logprobs: true, top_logprobs: N``, mapped
  back to the legacy ``{tokens, token_logprobs, top_logprobs, text_offset}``;
  ``text_offset`` counts characters of the returned text, as in vLLM.
* ``echo``, ``best_of > 1``, ``n > 1`` and a non-empty ``logit_bias`` are
  400s that say why: Ollama returns one completion and no prompt logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from .errors import GatewayError, InvalidRequest, UpstreamError, openai_error_body
from .ollama_chat_response import SYSTEM_FINGERPRINT, finish_reason, usage_from_ollama
from .openai_chat_request import (
    _boolean,
    _include_usage,
    _integer,
    _keep_alive,
    _load,
    _max_output_tokens,
    _missing,
    _model,
    _native_options,
    _number,
    _object,
    _opt,
    _opt_bool,
    _stop,
    _string,
    _type_error,
)
from .usage import TokenUsage

__all__ = [
    "CompletionRequest",
    "NativeGenerate",
    "OllamaCompletionStream",
    "completion_request_to_ollama",
    "legacy_logprobs",
    "ollama_generate_to_completion",
    "parse_completion_request",
    "read_generate_line",
]

# Every Completions parameter (openapi CreateCompletionRequest).
# fmt: off
_OPENAI_PARAMS = frozenset((
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
    "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix",
    "temperature", "top_p", "user",
))
# fmt: on
# Ollama extensions, as on the chat route (the SDK sends them via extra_body).
_EXTENSIONS = frozenset(
    ("options", "keep_alive", "raw", "top_k", "min_p", "num_ctx", "repeat_penalty")
)
_KNOWN_PARAMS = _OPENAI_PARAMS | _EXTENSIONS
_MAX_LOGPROBS = 5  # OpenAI's limit for the legacy endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionRequest:
    """A validated Completions request.

    ``prompt`` is the one prompt (a one-element list is unwrapped);
    ``suffix`` is None when absent or empty; ``raw`` is the decided native
    flag (see the module docstring); ``native_options`` is the ``options``
    extension merged with the shorthands, as for chat.
    """

    model: str
    prompt: str
    suffix: str | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    logprobs: int | None = None
    raw: bool = True
    keep_alive: str | int | float | None = None
    native_options: dict[str, Any] = field(default_factory=dict)


# -- parsing -------------------------------------------------------------------------


def parse_completion_request(body: bytes) -> CompletionRequest:
    """Validate ``body`` (the raw HTTP body) and return the request.

    Raises :class:`InvalidRequest` (400) naming the offending parameter.
    Next: :func:`completion_request_to_ollama`.
    """
    data = _load(body)
    for key in data:
        if key not in _KNOWN_PARAMS:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key)
    _reject_unsupported(data)
    suffix = _opt(data, "suffix", _string) or None
    return CompletionRequest(
        model=_model(data.get("model")),
        prompt=_prompt(data.get("prompt")),
        suffix=suffix,
        stream=_opt_bool(data, "stream"),
        include_usage=_include_usage(data.get("stream_options")),
        user=_opt(data, "user", _string),
        max_tokens=_max_output_tokens(data),
        temperature=_opt(data, "temperature", _number, 0, 2),
        top_p=_opt(data, "top_p", _number, 0, 1),
        frequency_penalty=_opt(data, "frequency_penalty", _number, -2, 2),
        presence_penalty=_opt(data, "presence_penalty", _number, -2, 2),
        seed=_opt(data, "seed", _integer),
        stop=_stop(data.get("stop")),
        logprobs=_opt(data, "logprobs", _integer, 0, _MAX_LOGPROBS),
        raw=_raw(data.get("raw"), suffix),
        keep_alive=_keep_alive(data.get("keep_alive")),
        native_options=_native_options(data),
    )


def _reject_unsupported(data: dict[str, Any]) -> None:
    """Valid OpenAI that one native /api/generate call cannot honour."""
    if _opt(data, "echo", _boolean):
        raise InvalidRequest(
            "echo=true is not supported: the Ollama backend returns neither the prompt's "
            "tokens nor their logprobs, so the prompt cannot be echoed as OpenAI does. "
            "Prepend the prompt to the returned text yourself.",
            param="echo",
        )
    best_of = _opt(data, "best_of", _integer, 0, 20)
    if best_of is not None and best_of > 1:
        raise InvalidRequest(
            f"best_of={best_of} is not supported: the Ollama backend generates exactly one "
            "completion per request and cannot rank candidates by log probability. "
            "Omit best_of or send 1.",
            param="best_of",
        )
    n = _opt(data, "n", _integer, 1, 128)
    if n is not None and n > 1:
        raise InvalidRequest(
            f"n={n} is not supported: the Ollama backend generates exactly one completion "
            "per request. Send n=1 and repeat the request instead.",
            param="n",
        )
    if _opt(data, "logit_bias", _object):
        raise InvalidRequest(
            "logit_bias is not supported by the Ollama backend.", param="logit_bias"
        )


def _prompt(value: Any) -> str:
    if value is None:
        raise _missing("prompt")
    if type(value) is list:
        value = _one_prompt(value)
    elif type(value) is not str:
        raise _type_error("prompt", "a string or an array", value)
    if not value:
        # Ollama answers an empty prompt by loading the model (done_reason
        # "load") without generating anything (docs/wire-notes.md, "Native endpoints clients call").
        raise InvalidRequest(
            "Invalid 'prompt': empty string. The Ollama backend generates nothing for an "
            "empty prompt; send some text.",
            param="prompt",
        )
    return str(value)


def _one_prompt(items: list[Any]) -> str:
    if not items:
        raise InvalidRequest(
            "Invalid 'prompt': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="prompt",
        )
    for i, item in enumerate(items):
        if type(item) is int or type(item) is list:
            raise InvalidRequest(
                "Token arrays are not supported as 'prompt': Ollama models use their own "
                "tokenizers, so OpenAI token ids would mean different text. "
                "Send the prompt as a string.",
                param="prompt",
            )
        _string(item, f"prompt.[{i}]")
    if len(items) > 1:
        raise InvalidRequest(
            f"A 'prompt' array of {len(items)} prompts is not supported: the Ollama backend "
            "completes one prompt per request. Send one request per prompt.",
            param="prompt",
        )
    return str(items[0])


def _raw(value: Any, suffix: str | None) -> bool:
    raw = None if value is None else _boolean(value, "raw")
    if suffix is None:
        return True if raw is None else raw
    if raw:
        raise InvalidRequest(
            "'suffix' cannot be combined with 'raw': true. Fill-in-the-middle needs the "
            "model's template to place the prompt and the suffix, and Ollama ignores the "
            "suffix in raw mode.",
            param="suffix",
        )
    return False


# -- the native request --------------------------------------------------------------


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
