"""The stream translator: OpenAI SSE events -> native Ollama NDJSON lines.

Theory of operation: the caller decodes the upstream ``text/event-stream``
(:class:`sansio_gateway.framing.SSEDecoder`) and passes each event's
``data`` (and its ``event`` field) to :meth:`OpenAIChatToOllamaStream.feed`,
which returns the native lines to send, as dicts, in order.  At upstream
EOF the caller calls :meth:`~OpenAIChatToOllamaStream.finish`; on a
transport failure, :meth:`~OpenAIChatToOllamaStream.fail`.  Once ``done``
or ``failed`` is set every call returns ``[]``.

One machine serves ``/api/chat`` and ``/api/generate`` (:class:`Shape`),
and reads both ``chat.completion.chunk`` deltas and ``text_completion``
chunks (``choices[0].text``).  States::

    STREAMING --finish_reason--> FINISHING --usage chunk or [DONE]--> DONE
    STREAMING --[DONE]--> DONE
    STREAMING / FINISHING --error event, garbage, limit--> FAILED
    STREAMING --EOF--> FAILED            FINISHING --EOF--> DONE

Rules (docs/wire-notes.md, "Serving Ollama clients from an OpenAI backend"):

* one native line per content or reasoning delta, ``done: false``;
* tool-call fragments are buffered by ``index`` -- a new ``id`` at a known
  index starts a new call, since some backends reuse index 0
  (docs/wire-notes.md, "Tool-call indexes in streams") -- and released as ONE line of complete calls with parsed-object arguments
  when the finish chunk arrives (or at the end if none does);
* the final line ``{..., message: {role, content: ""}, done: true,
  done_reason, prompt_eval_count, eval_count}`` follows the usage chunk that
  comes after the finish chunk (``stream_options.include_usage``, which the
  flows always request), or ``[DONE]``, even when no finish_reason was seen;
  a usage seen *before* the finish chunk (servers that send usage on every
  chunk) is remembered but does not end the stream;
* an in-band error (``event: error`` or a payload with an ``error`` key),
  an unparseable event, or EOF before any finish becomes one
  ``{"error": "<message>"}`` line (ollama-python raises ``ResponseError``
  on it: docs/wire-notes.md, "Framing: NDJSON and SSE") and the machine is
  failed.

Per-chunk code is the hot path: plain dicts, no validation models.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..errors import GatewayError, UpstreamError
from ..flows.base import NDJSON_HEADERS
from ..flows.stream import TranslatedStream
from ..framing import SSEDecoder, SSEEvent, encode_ndjson
from .responses import (
    Shape,
    body_line,
    done_reason,
    error_message,
    final_line,
    logprobs_of,
    native_tool_calls,
    reasoning_of,
    usage_from_openai,
)

__all__ = ["DEFAULT_MAX_TOOL_CHARS", "OpenAIChatToOllamaStream", "sse_to_ndjson"]

# Tool-call arguments are held until the finish chunk; the request's
# max_tokens bounds them already, this is the backstop (every buffer has a limit).
DEFAULT_MAX_TOOL_CHARS = 4 * 1024 * 1024


class _State(enum.Enum):
    STREAMING = "streaming"
    FINISHING = "finishing"  # finish_reason seen; waiting for usage or [DONE]
    DONE = "done"
    FAILED = "failed"


@dataclass(slots=True)
class _PendingCall:
    id: str
    name: str = ""
    pieces: list[str] = field(default_factory=list)
    whole: Any = None  # arguments a backend sent as an object, not as text


class OpenAIChatToOllamaStream:
    """Translate one OpenAI stream.  See the module docstring."""

    def __init__(
        self,
        *,
        shape: Shape,
        model: str,
        created_at: str,
        id_prefix: str,
        max_tool_chars: int = DEFAULT_MAX_TOOL_CHARS,
    ) -> None:
        self._shape = shape
        self._model = model
        self._created_at = created_at
        self._id_prefix = id_prefix
        self._max_tool_chars = max_tool_chars
        self._state = _State.STREAMING
        self._calls: list[_PendingCall] = []
        self._by_index: dict[int, _PendingCall] = {}
        self._tool_chars = 0
        self._finish_reason: Any = None
        self._last_usage: TokenUsage | None = None
        self.usage: TokenUsage | None = None  # set when the final line is emitted
        self.lines_out = 0
        # The native line of a text delta, cut around its text: every other
        # byte is the same for the whole stream.  Cut from the line
        # _deltas builds, so the two cannot drift apart; the empty text's
        # ``"key":""`` occurs once in it (inside a JSON string its quotes
        # would be escaped).
        line = body_line(shape, model, created_at, "", "")
        line["done"] = False
        key = b'"content":' if shape is Shape.CHAT else b'"response":'
        head, found, tail = encode_ndjson(line).partition(key + b'""')
        assert found
        self._text_line = (head + key, tail)

    @property
    def done(self) -> bool:
        """The final ``done: true`` line was emitted."""
        return self._state is _State.DONE

    @property
    def failed(self) -> bool:
        """An error line was emitted; the stream is over."""
        return self._state is _State.FAILED

    # -- inputs ------------------------------------------------------------------------

    def feed(self, data: str, event: str | None = None) -> list[dict[str, Any]]:
        """One SSE event's ``data`` (and ``event`` field) -> native lines."""
        if self._state in (_State.DONE, _State.FAILED):
            return []
        if data.strip() == "[DONE]":
            return self._close()
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.fail(UpstreamError("backend sent a malformed stream event"))
        if type(payload) is not dict:
            return self.fail(UpstreamError("backend sent a malformed stream event"))
        if event == "error" or "error" in payload:
            return self.fail(UpstreamError(error_message(payload.get("error"))))
        return self._payload(payload)

    def ndjson_line(self, data: str, event: str | None = None) -> bytes | None:
        """Hot path: the native line of a plain text delta, encoded, or None
        when the event needs :meth:`feed`.

        Plain means what most events of a stream are: while streaming, a
        ``chat.completion.chunk`` whose first choice has a ``delta`` with
        non-empty text ``content`` and nothing else :meth:`feed` would act
        on (no reasoning, tool calls, logprobs, finish reason, usage or
        error).  Then :meth:`feed` would return exactly one line, and this
        returns its bytes as ``encode_ndjson`` would, without building it.
        """
        if event is not None or self._state is not _State.STREAMING:
            return None
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if type(payload) is not dict or "error" in payload or payload.get("usage") is not None:
            return None
        choices = payload.get("choices")
        if type(choices) is not list or not choices:
            return None
        choice = choices[0]
        if type(choice) is not dict or choice.get("index", 0) not in (0, None):
            return None
        delta = choice.get("delta")
        if type(delta) is not dict or choice.get("finish_reason") or choice.get("logprobs"):
            return None
        content = delta.get("content")
        if type(content) is not str or not content or delta.get("tool_calls") is not None:
            return None
        if delta.get("reasoning_content") or delta.get("reasoning"):
            return None
        self.lines_out += 1
        head, tail = self._text_line
        return b"".join((head, orjson.dumps(content), tail))

    def finish(self) -> list[dict[str, Any]]:
        """Upstream EOF: the final line if a finish chunk was seen (some
        servers omit ``[DONE]``), else an error line."""
        if self._state is _State.FINISHING:
            return self._close()
        return self.fail(UpstreamError("backend closed the stream before it finished"))

    def fail(self, err: GatewayError) -> list[dict[str, Any]]:
        """The one ``{"error": ...}`` line, unless the stream is already over."""
        if self._state in (_State.DONE, _State.FAILED):
            return []
        self._state = _State.FAILED
        return self._count([{"error": err.message}])

    # -- one payload ---------------------------------------------------------------------

    def _payload(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        finishing = self._state is _State.FINISHING
        choice = _first_choice(payload.get("choices"))
        if choice is not None and not finishing:
            try:
                self._deltas(choice, out)
            except UpstreamError as err:
                return self._count(out) + self.fail(err)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self._state = _State.FINISHING
                self._flush_calls(out)
        usage = usage_from_openai(payload.get("usage"))
        if usage is not None:
            self._last_usage = usage
            if self._state is _State.FINISHING:
                return self._count(out) + self._close()
        return self._count(out)

    def _deltas(self, choice: dict[str, Any], out: list[dict[str, Any]]) -> None:
        delta = choice.get("delta")
        if type(delta) is dict:
            content = delta.get("content")
            thinking = reasoning_of(delta)
            self._fragments(delta.get("tool_calls"))
        else:  # a text_completion chunk
            content, thinking = choice.get("text"), ""
        text = content if type(content) is str else ""
        logprobs = logprobs_of(choice)
        if text or thinking or logprobs:
            line = body_line(self._shape, self._model, self._created_at, text, thinking)
            if logprobs:
                line["logprobs"] = logprobs
            line["done"] = False
            out.append(line)

    # -- tool calls ------------------------------------------------------------------------

    def _fragments(self, value: Any) -> None:
        for fragment in value if type(value) is list else ():
            if type(fragment) is dict:
                self._fragment(fragment)

    def _fragment(self, fragment: dict[str, Any]) -> None:
        index = fragment.get("index")
        call_id = fragment.get("id")
        call_id = call_id if type(call_id) is str else ""
        call = self._by_index.get(index) if type(index) is int else None
        if call is None and type(index) is not int and not call_id and self._calls:
            call = self._calls[-1]  # no index at all: continue the last call
        if call is None or (call_id and call.id and call_id != call.id):
            call = _PendingCall(id=call_id)
            self._calls.append(call)
        if type(index) is int:
            self._by_index[index] = call
        call.id = call.id or call_id
        function = fragment.get("function")
        if type(function) is dict:
            self._function(call, function)

    def _function(self, call: _PendingCall, function: dict[str, Any]) -> None:
        name = function.get("name")
        if type(name) is str and name and not call.name:
            call.name = name
        arguments = function.get("arguments")
        if type(arguments) is str:
            self._tool_chars += len(arguments)
            if self._tool_chars > self._max_tool_chars:
                raise UpstreamError(
                    f"tool-call arguments exceeded {self._max_tool_chars} characters"
                )
            call.pieces.append(arguments)
        elif arguments is not None:
            call.whole = arguments

    def _flush_calls(self, out: list[dict[str, Any]]) -> None:
        calls = [
            (
                c.id or f"call_{self._id_prefix}_{i}",
                c.name,
                c.whole if c.whole is not None and not c.pieces else "".join(c.pieces),
            )
            for i, c in enumerate(self._calls)
        ]
        self._calls, self._by_index = [], {}
        if not calls:
            return
        line = body_line(self._shape, self._model, self._created_at, "", "")
        target = line["message"] if self._shape is Shape.CHAT else line
        target["tool_calls"] = native_tool_calls(calls)
        line["done"] = False
        out.append(line)

    # -- the end ------------------------------------------------------------------------------

    def _close(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        self._flush_calls(out)
        self.usage = self._last_usage
        reason = done_reason(self._finish_reason)
        out.append(final_line(self._shape, self._model, self._created_at, reason, self.usage))
        self._state = _State.DONE
        return self._count(out)

    def _count(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.lines_out += len(lines)
        return lines


def _first_choice(choices: Any) -> dict[str, Any] | None:
    """The choice with index 0 (the gateway never asks for ``n`` > 1)."""
    if type(choices) is not list:
        return None
    for choice in choices:
        if type(choice) is dict and choice.get("index", 0) in (0, None):
            return choice
    return None


class _Events:
    """The machine above as the stream base's per-record translator: one
    SSE event (its ``data`` and ``event`` field) per record."""

    def __init__(self, lines: OpenAIChatToOllamaStream) -> None:
        self._lines = lines

    @property
    def done(self) -> bool:
        return self._lines.done

    @property
    def failed(self) -> bool:
        return self._lines.failed

    @property
    def usage(self) -> TokenUsage | None:
        return self._lines.usage

    def feed(self, record: SSEEvent) -> list[dict[str, Any]]:
        return self._lines.feed(record.data, record.event)

    def frame(self, record: SSEEvent) -> bytes | None:
        return self._lines.ndjson_line(record.data, record.event)

    def finish(self) -> list[dict[str, Any]]:
        return self._lines.finish()

    def fail(self, error: GatewayError) -> list[dict[str, Any]]:
        return self._lines.fail(error)


def sse_to_ndjson(
    lines: OpenAIChatToOllamaStream, *, prompt_bytes: int
) -> TranslatedStream[SSEEvent]:
    """OpenAI SSE in, native NDJSON out (flows/stream.py).  An unterminated
    SSE event at EOF is discarded, as WHATWG says: the decoder yields none."""
    records = _Events(lines)
    return TranslatedStream(
        decoder=SSEDecoder(),
        records=records,
        encode=encode_ndjson,
        headers=NDJSON_HEADERS,
        prompt_bytes=prompt_bytes,
        frame=records.frame,
    )
