"""Chat answers and the chunk streams an OpenAI-compatible backend could send for them.

Shared by the Anthropic and Responses translator tests: :func:`answers`
draws a whole ``chat.completion`` and :func:`chunkings` draws one of the
many ``chat.completion.chunk`` sequences that carry the same answer (text
split anywhere, the finish reason on its own chunk or on the last delta,
the usage chunk present or not).  :func:`decode_events` reads SSE bytes
back with the gateway's own decoder.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from sansio_gateway.framing import SSEDecoder

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_names = st.text("abcxyz_", min_size=1, max_size=8)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=3),
    max_leaves=6,
)


# The machine is shared; drawing nested answers is slow there, not wrong.
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Answer:
    reasoning: str
    content: str
    calls: tuple[tuple[str, str, str], ...]  # (id, name, arguments JSON)
    finish: str
    matched: str | None
    usage: tuple[int, int] | None

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.calls:
            message["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in self.calls
            ]
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": self.finish}
        if self.matched is not None:
            choice["stop_reason"] = self.matched
        out: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice]}
        if self.usage is not None:
            out["usage"] = {"prompt_tokens": self.usage[0], "completion_tokens": self.usage[1]}
        return out


@st.composite
def answers(draw: st.DrawFn, *, stops: tuple[str, ...] = ("STOP",)) -> Answer:
    calls = draw(st.lists(st.tuples(_names, st.dictionaries(_names, _json_values, max_size=3)),
                          max_size=3))  # fmt: skip
    finish = draw(st.sampled_from(("stop", "length", "content_filter")))
    if calls and draw(st.booleans()):
        finish = "tool_calls"
    matched = draw(st.sampled_from((None, *stops, "other"))) if finish == "stop" else None
    return Answer(
        reasoning=draw(_text),
        content=draw(_text),
        calls=tuple(
            (f"call_{k}", name, orjson.dumps(args).decode()) for k, (name, args) in enumerate(calls)
        ),
        finish=finish,
        matched=matched,
        usage=draw(st.none() | st.tuples(st.integers(0, 10**6), st.integers(0, 10**6))),
    )


def _pieces(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=4)))
    bounds = [0, *[c for c in cuts if c < len(text)], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b]]


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, **extra}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


@st.composite
def chunkings(draw: st.DrawFn, answer: Answer) -> list[dict[str, Any]]:
    """One chunk sequence an OpenAI backend could stream for ``answer``."""
    chunks = [_chunk({"role": "assistant", "content": ""})] if draw(st.booleans()) else []
    chunks += [_chunk({"reasoning_content": p}) for p in _pieces(draw, answer.reasoning)]
    chunks += [_chunk({"content": p}) for p in _pieces(draw, answer.content)]
    for index, (id_, name, arguments) in enumerate(answer.calls):
        pieces = _pieces(draw, arguments) or [""]
        head = {"index": index, "id": id_, "type": "function",
                "function": {"name": name, "arguments": pieces[0]}}  # fmt: skip
        chunks.append(_chunk({"tool_calls": [head]}))
        chunks += [
            _chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
            for p in pieces[1:]
        ]
    extra = {} if answer.matched is None else {"stop_reason": answer.matched}
    if chunks and draw(st.booleans()):  # the finish reason rides on the last delta
        chunks[-1]["choices"][0].update(finish_reason=answer.finish, **extra)
    else:
        chunks.append(_chunk({}, answer.finish, **extra))
    if answer.usage is not None:
        usage = {"prompt_tokens": answer.usage[0], "completion_tokens": answer.usage[1]}
        chunks.append({"id": "chatcmpl-1", "choices": [], "usage": usage})
    return chunks


def decode_events(data: bytes) -> list[tuple[str | None, Any]]:
    """``(event name, JSON payload)`` for each SSE event in ``data``."""
    decoder = SSEDecoder()
    events = decoder.feed(data) + decoder.feed_eof()
    return [(e.event, orjson.loads(e.data)) for e in events]
