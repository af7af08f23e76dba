"""Token estimates made before a request is sent upstream.

Theory of operation: rate limits charge tokens at admission, before the
backend has counted anything, and reconcile with the backend's real counts
afterwards (docs/rate-limiting.md, "Committing: estimates reconciled").  An estimate that is too
low lets concurrent requests overrun a tokens-per-minute limit, so the
estimate errs high:

* **text**: one token per 2 bytes of UTF-8.  BPE tokenizers of the common
  local models (Llama 3, Qwen 2/3, Gemma, Mistral) average 3.5-4.5 bytes
  per token on English and code and about 3 bytes per token on CJK text
  (one CJK character is 3 bytes and rarely more than 1.5 tokens), so
  halving the byte count stays above the real count for anything but
  adversarial input, and reconciliation refunds the difference.
* **structure**: 8 tokens per message for the chat template's role markers,
  plus 16 for the prompt's own framing.
* **images**: 1,024 tokens each, above what the vision models served by
  Ollama spend on one image (LLaVA 576, Llama 3.2 Vision and Qwen2.5-VL
  scale with resolution but are capped by their processors near 1,000).
* **output**: the request's own cap (``max_tokens``/``max_completion_tokens``)
  or the gateway's ``default_max_tokens``, which is then written into the
  upstream request so the estimate really is an upper bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

__all__ = [
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "PROMPT_OVERHEAD",
    "estimate_messages",
    "estimate_text",
    "estimate_texts",
    "json_tokens",
    "value_tokens",
]

BYTES_PER_TOKEN = 2
MESSAGE_OVERHEAD = 8
PROMPT_OVERHEAD = 16
IMAGE_TOKENS = 1024


def estimate_text(text: str) -> int:
    """Upper-bound token estimate for one piece of text."""
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)


def estimate_texts(texts: Iterable[str]) -> int:
    return PROMPT_OVERHEAD + sum(estimate_text(t) for t in texts)


def value_tokens(value: Any) -> int:
    """Upper-bound tokens of any forwarded JSON value: every string (keys
    included) by its UTF-8 bytes, every number as one token (``context``
    ids, token-id prompts).  Booleans and null cost nothing.  Iterative:
    a body may nest deeper than Python's recursion limit."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += estimate_text(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, (int, float)):
            total += 1
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                total += estimate_text(str(key))
                stack.append(child)
        else:
            total += estimate_text(str(item))
    return total


def _part_tokens(part: Any) -> int:
    if not isinstance(part, dict):
        return value_tokens(part)
    if part.get("type") == "text" and isinstance(part.get("text"), str):
        return estimate_text(part["text"])
    if part.get("type") in ("image_url", "input_image"):
        return IMAGE_TOKENS
    # any other part (audio, files, ...) is forwarded: charge its text
    return value_tokens(part)


def _content_tokens(content: Any) -> int:
    if isinstance(content, list):
        return sum(_part_tokens(part) for part in content)
    return value_tokens(content)


def _json_tokens(value: Any) -> int:
    # Tool schemas and call arguments are rendered into the prompt as JSON
    # text: charge that text's UTF-8 bytes like any other text.
    if not value:
        return 0
    try:
        size = len(orjson.dumps(value))
    except TypeError:  # not JSON-serialisable: its text form, in bytes
        size = len(str(value).encode("utf-8"))
    return -(-size // BYTES_PER_TOKEN)


json_tokens = _json_tokens  # public name: admission charges top-level tools with it


def estimate_messages(
    messages: Iterable[dict[str, Any]], *, tools: Iterable[Any] = (), images: int = 0
) -> int:
    """Upper-bound prompt tokens for a chat request (either wire format)."""
    total = PROMPT_OVERHEAD + images * IMAGE_TOKENS
    for message in messages:
        total += MESSAGE_OVERHEAD
        for key, value in message.items():
            total += _message_field_tokens(key, value)
    return total + sum(_json_tokens(tool) for tool in tools)


def _message_field_tokens(key: str, value: Any) -> int:
    # Every field of a message is forwarded and counted.  MESSAGE_OVERHEAD
    # covers the role's markers and a role name of up to 16 bytes; a longer
    # one (the passthrough does not check it) pays for the rest.
    if key == "role":
        return max(0, value_tokens(value) - MESSAGE_OVERHEAD)
    if key == "content":
        return _content_tokens(value)
    if key == "tool_calls":
        return _json_tokens(value)
    if key == "images" and isinstance(value, list):
        return IMAGE_TOKENS * len(value)
    return estimate_text(key) + value_tokens(value)
