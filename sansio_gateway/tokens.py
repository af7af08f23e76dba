"""Token estimates made before a request is sent upstream.

Theory of operation: rate limits charge tokens at admission, before the
backend has counted anything, and reconcile with the backend's real counts
afterwards (rate-limiting.md, "A request's life").  An estimate that is too
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


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return estimate_text(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                total += estimate_text(part["text"])
            elif part.get("type") in ("image_url", "input_image"):
                total += IMAGE_TOKENS
    return total


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


def estimate_messages(
    messages: Iterable[dict[str, Any]], *, tools: Iterable[Any] = (), images: int = 0
) -> int:
    """Upper-bound prompt tokens for a chat request (either wire format)."""
    total = PROMPT_OVERHEAD + images * IMAGE_TOKENS
    for message in messages:
        total += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
        total += _json_tokens(message.get("tool_calls"))
        native_images = message.get("images")
        if isinstance(native_images, list):
            total += IMAGE_TOKENS * len(native_images)
    return total + sum(_json_tokens(tool) for tool in tools)
