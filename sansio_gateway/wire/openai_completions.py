"""OpenAI legacy Completions (``/v1/completions``) served by Ollama's ``/api/generate``.

Theory of operation: three pure steps, in the order a request meets them.

1. :func:`parse_completion_request` validates the client's body into a frozen
   :class:`CompletionRequest` (unknown top-level keys are a 400, as on
   OpenAI).  The typed checkers are the chat parser's
   (:mod:`sansio_gateway.wire.openai_chat`), so both endpoints word their
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
from typing import Any

from ..errors import InvalidRequest
from .openai_chat import (
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

__all__ = [
    "CompletionRequest",
    "parse_completion_request",
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
    # The body as decoded once on arrival, and its size: the passthrough
    # forwards ``decoded`` and admission charges it (docs/rate-limiting.md,
    # "What is charged"), so no one decodes the body again.
    decoded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    size: int = field(default=0, compare=False)


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
        decoded=data,
        size=len(body),
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
