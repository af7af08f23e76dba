"""Token counts as a backend reported them, and the one reader per dialect.

A small value type shared by translators (which read counts off backend
responses) and accounting (which records and reconciles them).  Every
translator reads counts through the reader of its backend's dialect
(:func:`read_openai_usage`, :func:`read_ollama_usage`,
:func:`read_anthropic_usage`, :func:`read_responses_usage`), so what counts as "the backend reported usage"
-- which decides what the limits are charged (docs/rate-limiting.md,
"What is charged") -- is decided in one place per dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "TokenUsage",
    "read_anthropic_usage",
    "read_ollama_usage",
    "read_openai_usage",
    "read_responses_usage",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def _count(value: Any) -> int | None:
    # type() is, not isinstance: a JSON boolean is not a count.
    return value if type(value) is int and value >= 0 else None


def read_openai_usage(value: Any) -> TokenUsage | None:
    """An OpenAI ``usage`` object -> its counts, or None when it reports none.

    It reports counts only when it is an object whose ``prompt_tokens`` is a
    non-negative integer: ``null`` (every chunk but the last of a stream
    with ``include_usage``), ``{}`` or a malformed count is no report, so
    the limits charge the reserved amount rather than a made-up zero.
    ``completion_tokens`` absent (or null) is 0, as embeddings report it;
    present but not a non-negative integer, the object is not trusted.
    """
    if type(value) is not dict:
        return None
    prompt = _count(value.get("prompt_tokens"))
    raw_completion = value.get("completion_tokens")
    completion = 0 if raw_completion is None else _count(raw_completion)
    if prompt is None or completion is None:
        return None
    return TokenUsage(prompt_tokens=prompt, completion_tokens=completion)


def read_ollama_usage(value: dict[str, Any]) -> TokenUsage:
    """A native answer or final line -> ``prompt_eval_count``/``eval_count``
    (missing or invalid counts are 0: Ollama omits them, e.g. on a cached
    prompt, rather than sending a malformed report)."""
    return TokenUsage(
        prompt_tokens=_count(value.get("prompt_eval_count")) or 0,
        completion_tokens=_count(value.get("eval_count")) or 0,
    )


def read_responses_usage(value: Any) -> TokenUsage | None:
    """A Responses ``usage`` object (``input_tokens``, cached ones included,
    and ``output_tokens``, reasoning included) -> its counts, or None."""
    if type(value) is not dict:
        return None
    prompt, output = _count(value.get("input_tokens")), _count(value.get("output_tokens"))
    if prompt is None or output is None:
        return None
    return TokenUsage(prompt_tokens=prompt, completion_tokens=output)


# An Anthropic usage object's input side: tokens read fresh, written to and
# read from the prompt cache are all prompt the backend processed.
_INPUT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def read_anthropic_usage(value: Any, *, prior: TokenUsage | None = None) -> TokenUsage | None:
    """An Anthropic ``usage`` object -> its counts, or None when it reports none.

    ``prior`` is what the stream reported so far: ``message_delta``'s usage
    may carry only ``output_tokens``, the input side then stays as
    ``message_start`` said."""
    if type(value) is not dict:
        return None
    inputs = [_count(value.get(key)) for key in _INPUT_FIELDS if value.get(key) is not None]
    output = _count(value.get("output_tokens")) if "output_tokens" in value else None
    if None in inputs or (output is None and "output_tokens" in value):
        return None  # a malformed count: no report, so the limits charge the reserve
    prompt = sum(n for n in inputs if n is not None) if inputs else None
    if prompt is None and output is None:
        return None
    base = prior or TokenUsage()
    return TokenUsage(
        prompt_tokens=base.prompt_tokens if prompt is None else prompt,
        completion_tokens=base.completion_tokens if output is None else output,
    )
