"""OpenAI Embeddings (``/v1/embeddings``) served by Ollama's ``/api/embed``.

Theory of operation: :func:`parse_embeddings_request` validates the body into
a frozen :class:`EmbeddingsRequest` (the chat parser's typed checkers, so the
400s read the same); :func:`embeddings_request_to_ollama` builds the native
body; :func:`ollama_embed_to_openai` turns the native answer into OpenAI's
``{"object": "list", "data": [...], "model", "usage"}``.  Embeddings never
stream, so there is no stream machine.

Decisions (docs/openai-compatibility.md has the full table):

* ``input`` is a string or a list of 1..2048 strings, none empty.  Token
  arrays are a 400 (Ollama models have their own tokenizers).  Empty strings
  are a 400 as on OpenAI: Ollama would skip them, and the answer's ``index``
  values would no longer line up with the inputs.
* The native ``input`` is always a list, so the native answer always has one
  vector per input; a count mismatch is an upstream fault (502).
* ``encoding_format: "base64"`` packs each vector as little-endian IEEE-754
  float32 and encodes it with standard base64 (docs/wire-notes.md, "Embeddings in base64") -- what
  openai-python decodes with ``numpy.frombuffer(dtype="float32")`` or
  ``array.array("f")``.  The SDK asks for base64 whenever its caller sets no
  ``encoding_format``, so this is the path most SDK calls take.
* ``truncate``, ``keep_alive`` and ``options`` are accepted as Ollama
  extensions and forwarded; ``truncate`` is not sent unless given, so Ollama's
  default (truncate to the context window) applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest
from .openai_chat import (
    _boolean,
    _integer,
    _keep_alive,
    _load,
    _missing,
    _model,
    _object,
    _opt,
    _string,
    _type_error,
)

__all__ = [
    "EmbeddingsRequest",
    "parse_embeddings_request",
]

_OPENAI_PARAMS = frozenset(("model", "input", "dimensions", "encoding_format", "user"))
_EXTENSIONS = frozenset(("truncate", "keep_alive", "options"))
_KNOWN_PARAMS = _OPENAI_PARAMS | _EXTENSIONS
_FORMATS = ("float", "base64")
MAX_INPUTS = 2048  # OpenAI's limit on the number of inputs per request


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingsRequest:
    """A validated Embeddings request; ``inputs`` always holds 1..2048 strings."""

    model: str
    inputs: tuple[str, ...]
    encoding_format: str = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate: bool | None = None
    keep_alive: str | int | float | None = None
    options: dict[str, Any] | None = None
    # The body as decoded once on arrival, and its size: the passthrough
    # forwards ``decoded`` and admission charges it (docs/rate-limiting.md,
    # "What is charged"), so no one decodes the body again.
    decoded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    size: int = field(default=0, compare=False)


def parse_embeddings_request(body: bytes) -> EmbeddingsRequest:
    """Validate ``body`` (the raw HTTP body) and return the request.

    Raises :class:`InvalidRequest` (400) naming the offending parameter.
    Next: :func:`embeddings_request_to_ollama`.
    """
    data = _load(body)
    for key in data:
        if key not in _KNOWN_PARAMS:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key)
    return EmbeddingsRequest(
        model=_model(data.get("model")),
        inputs=_inputs(data.get("input")),
        encoding_format=_encoding_format(data.get("encoding_format")),
        dimensions=_opt(data, "dimensions", _integer, 1),
        user=_opt(data, "user", _string),
        truncate=_opt(data, "truncate", _boolean),
        keep_alive=_keep_alive(data.get("keep_alive")),
        options=_opt(data, "options", _object),
        decoded=data,
        size=len(body),
    )


def _inputs(value: Any) -> tuple[str, ...]:
    if value is None:
        raise _missing("input")
    if type(value) is str:
        return (_text(value, "input"),)
    if type(value) is not list:
        raise _type_error("input", "a string or an array", value)
    items: list[Any] = value
    if not items:
        raise InvalidRequest(
            "Invalid 'input': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="input",
        )
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(
            f"Invalid 'input': array too long. Expected an array with maximum length "
            f"{MAX_INPUTS}, but got an array with length {len(items)} instead.",
            param="input",
        )
    return tuple(_item(item, i) for i, item in enumerate(items))


def _item(item: Any, i: int) -> str:
    if type(item) is int or type(item) is list:
        raise InvalidRequest(
            "Token arrays are not supported as 'input': Ollama models use their own "
            "tokenizers, so OpenAI token ids would mean different text. "
            "Send the input as strings.",
            param="input",
        )
    return _text(_string(item, f"input.[{i}]"), f"input.[{i}]")


def _text(value: str, param: str) -> str:
    if not value:
        raise InvalidRequest(
            f"Invalid '{param}': empty string. Every input must contain some text.", param=param
        )
    return value


def _encoding_format(value: Any) -> str:
    if value is None:
        return "float"
    if value not in _FORMATS:
        # OpenAI's wording (Ollama's /v1 copies it: docs/wire-notes.md, "Embeddings in base64").
        raise InvalidRequest(
            f"Invalid value for 'encoding_format' = {value}. Supported values: ['float', 'base64'].",
            param="encoding_format",
        )
    return str(value)
