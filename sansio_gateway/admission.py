"""What a request costs at admission, before any backend has counted it.

Theory of operation: the Exchange charges rate limits before the request is
sent (rate-limiting.md, "A request's life").  The charge is an upper bound:
the prompt estimate of :mod:`sansio_gateway.tokens` plus the output cap --
the client's own (``max_completion_tokens``, ``max_tokens``,
``options.num_predict``) or the gateway's ``default_max_tokens``, which the
OpenAI-surface flows write into the upstream request.  Both API dialects
share the field names that matter (``messages``, ``prompt``, ``input``), so
one function reads either.  Reconciliation with the backend's real counts
happens at commit.
"""

from __future__ import annotations

from typing import Any

import orjson

from .tokens import IMAGE_TOKENS, estimate_messages, estimate_text, estimate_texts

__all__ = ["DEFAULT_OUTPUT_CAP", "LIMITED_ROUTES", "admission_tokens"]

# The routes that rate limits charge, and whether each generates output
# tokens (embeddings do not).  Model lists, /api/show, pulls and the
# gateway's own endpoints are not charged.
LIMITED_ROUTES: dict[str, bool] = {
    "chat.completions": True,
    "completions": True,
    "embeddings": False,
    "ollama.chat": True,
    "ollama.generate": True,
    "ollama.embed": False,
    "ollama.embeddings": False,
}

# When token limits are on and neither the client nor the operator sets an
# output cap, this one is written upstream so that estimates stay bounds.
DEFAULT_OUTPUT_CAP = 4096


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _output_cap(body: dict[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    options = body.get("options")
    if isinstance(options, dict):
        value = options.get("num_predict")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        tools = body.get("tools")
        return estimate_messages(
            [m for m in messages if isinstance(m, dict)],
            tools=tools if isinstance(tools, list) else (),
        )
    texts = _texts(body.get("prompt")) + _texts(body.get("suffix")) + _texts(body.get("system"))
    texts += _texts(body.get("input"))
    images = body.get("images")
    extra = IMAGE_TOKENS * len(images) if isinstance(images, list) else 0
    # /api/generate's `context` holds the token ids of earlier turns, which
    # Ollama prepends to the prompt: one token each, exactly.
    context = body.get("context")
    if isinstance(context, list):
        extra += len(context)
    return estimate_texts(texts) + extra


def admission_tokens(raw_body: bytes, *, default_output_cap: int, generates: bool) -> int:
    """Upper-bound tokens for a request body (prompt + output cap).

    ``generates`` is False for embeddings, which produce no output tokens.
    A body that is not a JSON object (the flow rejects those anyway) is
    charged by its size.
    """
    try:
        body = orjson.loads(raw_body)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return estimate_text(raw_body.decode("utf-8", "replace"))
    prompt = _prompt_tokens(body)
    if not generates:
        return prompt
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return prompt + choices * _output_cap(body, default_output_cap)
