"""What a request costs at admission, before any backend has counted it.

Theory of operation: the Exchange charges rate limits before the request is
sent (docs/rate-limiting.md, "Committing: estimates reconciled" and
"What is charged").  The charge is an upper bound of what the backend can be made to do:

* **prompt** -- every field of the body that is forwarded is counted
  (:mod:`sansio_gateway.accounting.tokens`): the known prompt fields by their text,
  images at a flat rate, ``context`` token ids one each, and any other
  field (``template``, ``format``, ``response_format``, tools, ...) by its
  text, so a prompt-bearing field cannot ride along uncounted.  Only
  ``model`` (routing) and Ollama's runner ``options`` (numbers and stop
  strings that never reach the prompt) are left out.
* **output** -- the cap *the backend will read*.  The OpenAI surface reads
  ``max_completion_tokens``, else ``max_tokens``, else the extension's
  ``options.num_predict``; Ollama's ``/api/chat`` and ``/api/generate``
  read only ``options.num_predict`` (a top-level ``max_tokens`` is ignored
  by Ollama, so it must be ignored here too).  When that cap is absent or
  unbounded (``num_predict`` -1/-2/0), the gateway's cap is charged and
  :func:`write_output_cap` writes it into the upstream body, in the field
  the backend kind reads, so the charge is a real bound on every route.
  ``n`` (and the legacy ``best_of``) multiply it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .tokens import (
    IMAGE_TOKENS,
    PROMPT_OVERHEAD,
    estimate_messages,
    estimate_text,
    json_tokens,
    value_tokens,
)

__all__ = [
    "DEFAULT_OUTPUT_CAP",
    "Charge",
    "admission_charge",
    "admission_tokens",
    "fitted_cap",
    "prompt_tokens",
    "request_charge",
    "write_output_cap",
]

# When token limits are on and neither the client nor the operator sets an
# output cap, this one is written upstream so that estimates stay bounds.
DEFAULT_OUTPUT_CAP = 4096

# The native routes, where Ollama reads options.num_predict and nothing else.
_NATIVE_ROUTES = frozenset({"ollama.chat", "ollama.generate"})
# Top-level fields that are not prompt: routing, and Ollama's runner options.
_NOT_PROMPT = frozenset({"model", "name", "options"})
# Output-cap fields an OpenAI-compatible server may read (llama.cpp's
# server reads its native n_predict before max_tokens).
_OPENAI_CAP_FIELDS = ("max_completion_tokens", "max_tokens", "n_predict")


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    """An admission charge: ``total = prompt + choices * cap``.

    ``cap`` is the per-choice output cap (0 for embeddings); ``client_cap``
    is True when it is the client's own, False when it is the gateway's
    (and so may be fitted to the limits, see :func:`fitted_cap`).
    """

    prompt: int
    cap: int
    choices: int
    client_cap: bool

    @property
    def total(self) -> int:
        return self.prompt + self.choices * self.cap


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _client_cap(body: dict[str, Any], route: str | None) -> int | None:
    """The output cap the client set, read the way the route's backend reads
    it; None when absent or unbounded."""
    options = body.get("options")
    native = _positive_int(options.get("num_predict")) if isinstance(options, dict) else None
    if route in _NATIVE_ROUTES:
        return native
    for key in ("max_completion_tokens", "max_tokens"):
        value = _positive_int(body.get(key))
        if value is not None:
            return value
    return native


def _choices(body: dict[str, Any], route: str | None) -> int:
    if route in _NATIVE_ROUTES:
        return 1  # Ollama's API has no n: one answer, whatever the body says
    n = _positive_int(body.get("n")) or 1
    best_of = _positive_int(body.get("best_of")) or 1
    return max(n, best_of)


def prompt_tokens(body: dict[str, Any]) -> int:
    """Upper-bound prompt tokens of every forwarded field of ``body``."""
    messages = body.get("messages")
    if isinstance(messages, list):
        total = estimate_messages([m if isinstance(m, dict) else {"content": m} for m in messages])
    else:
        total = PROMPT_OVERHEAD
    for key, value in body.items():
        if key in _NOT_PROMPT or key == "messages":
            continue
        if key == "images" and isinstance(value, list):
            total += IMAGE_TOKENS * len(value)
        elif key == "tools":
            total += json_tokens(value)  # rendered into the prompt as JSON text
        elif isinstance(value, (str, list, dict)):
            # /api/generate's ``context`` holds token ids of earlier turns,
            # one token each; value_tokens charges every number as one.
            total += value_tokens(value)
    return total


def request_charge(
    body: dict[str, Any], *, default_output_cap: int, generates: bool, route: str | None = None
) -> Charge:
    """The charge for a request body, as its route's parser decoded it on
    arrival.  ``route`` (a route name, routes.py) says which output-cap
    field the backend reads; None reads the OpenAI surface's order."""
    prompt = prompt_tokens(body)
    if not generates:
        return Charge(prompt=prompt, cap=0, choices=1, client_cap=True)
    cap = _client_cap(body, route)
    if cap is not None:
        return Charge(prompt=prompt, cap=cap, choices=_choices(body, route), client_cap=True)
    return Charge(
        prompt=prompt, cap=default_output_cap, choices=_choices(body, route), client_cap=False
    )


def admission_charge(
    raw_body: bytes, *, default_output_cap: int, generates: bool, route: str | None = None
) -> Charge:
    """:func:`request_charge` of a raw body.  A body that is not a JSON
    object (a route's parser rejects those) is charged by its size."""
    try:
        body = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        prompt = estimate_text(raw_body.decode("utf-8", "replace"))
        return Charge(prompt=prompt, cap=0, choices=1, client_cap=True)
    return request_charge(
        body, default_output_cap=default_output_cap, generates=generates, route=route
    )


def admission_tokens(
    raw_body: bytes, *, default_output_cap: int, generates: bool, route: str | None = None
) -> int:
    """Upper-bound tokens for a request body (prompt + output cap)."""
    return admission_charge(
        raw_body, default_output_cap=default_output_cap, generates=generates, route=route
    ).total


def fitted_cap(charge: Charge, ceiling: int | None) -> Charge:
    """Shrink the gateway's own output cap so the charge fits ``ceiling``
    (the smallest token burst or daily quota that applies).

    Without this, a tokens_per_minute below ~24.6k (burst = a sixth of it)
    makes every request without a cap a permanent "too large" 429.  The
    client's own cap is never changed: a request that asks for more than
    the limits allow is told so.  When even the prompt does not fit, the
    charge is left as it is and the limits refuse it.
    """
    if charge.client_cap or ceiling is None:
        return charge
    room = (ceiling - charge.prompt) // charge.choices
    if room < 1 or room >= charge.cap:
        return charge
    return Charge(prompt=charge.prompt, cap=room, choices=charge.choices, client_cap=False)


def write_output_cap(kind: str, body: bytes, cap: int, *, route: str = "") -> bytes:
    """``body`` (an upstream request) with every output-cap field that a
    backend of ``kind`` reads set to ``cap``, the cap admission charged.

    Ollama reads ``options.num_predict``; an OpenAI-compatible server reads
    ``max_completion_tokens`` or ``max_tokens`` (and llama.cpp ``n_predict``):
    each one present is set, and ``max_tokens`` is written when none is --
    the one field every OpenAI-compatible server honours (vLLM, llama.cpp,
    Ollama's /v1, LM Studio, OpenAI's non-reasoning models).  A Responses
    body, which the ``responses`` route sends a Responses-capable backend
    (it holds ``input``, a chat body never does), reads
    ``max_output_tokens``; an Anthropic backend reads ``max_tokens``, which
    its clients must always send.  Other kinds are left to their own flows.
    Only generating routes have a cap.
    """
    if kind not in ("ollama", "openai", "anthropic"):
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(data, dict):
        return body
    if kind == "ollama":
        options = data.get("options")
        data["options"] = {**(options if isinstance(options, dict) else {}), "num_predict": cap}
    elif kind == "anthropic":
        data["max_tokens"] = cap
    elif route == "responses" and "input" in data:
        data["max_output_tokens"] = cap
    else:
        present = [key for key in _OPENAI_CAP_FIELDS if key in data]
        for key in present or ["max_tokens"]:
            data[key] = cap
    return orjson.dumps(data)
