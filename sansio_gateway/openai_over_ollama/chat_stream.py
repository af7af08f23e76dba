"""The stream translator: native ``/api/chat`` NDJSON values -> OpenAI chunks.

Theory of operation: the caller parses each NDJSON line and calls
:meth:`OllamaChatStream.feed`, which returns the ``chat.completion.chunk``
payloads (plain dicts) to send as SSE events.  At upstream EOF it calls
:meth:`~OllamaChatStream.finish`; if the transport fails it calls
:meth:`~OllamaChatStream.fail`.  Once :attr:`~OllamaChatStream.done` is set
and :attr:`~OllamaChatStream.failed` is not, the caller writes
``data: [DONE]`` itself.

States (one ``Enum``): STREAMING -> DONE on the native ``done`` line, or
STREAMING -> FAILED on an in-band error, garbage, EOF before ``done``, or a
transport failure.  DONE and FAILED are final: every later call returns
``[]``, so nothing ever follows the finish/usage chunks or the error payload.

Framing is OpenAI-exact, which is what Ollama >= v0.32.6 converged on
(docs/wire-notes.md, "Chat stream chunks"), plus fixes for Ollama's known faults:

* one ``id`` and one ``created`` for every chunk; ``role`` on the first only;
* a line with thinking and content gives two chunks, reasoning first;
* each tool call is one complete delta whose ``index`` is the running count of
  calls in this stream -- never the native index, which is often 0 for every
  call and makes clients merge parallel calls (docs/wire-notes.md, "Tool-call indexes in streams");
  its id is the native id or the same synthesized id as the non-stream answer;
* the finish chunk ``{"index": 0, "delta": {}, "finish_reason": R}`` comes
  from the ``done`` line (``stop`` plus any call is ``tool_calls``; ``length``
  stays ``length``), then the usage chunk with ``choices: []`` when
  ``include_usage`` is set, in which case every other chunk has
  ``"usage": null`` as OpenAI's do;
* errors become ``{"error": {...}}`` payloads (Ollama loses them: docs/wire-notes.md, "Errors in a
  stream");
* with a forced ``tool_choice`` the JSON content is held back and released
  at ``done`` as one tool-call delta (or as content if it is not that JSON).

Per-chunk code is the hot path: plain dicts, no validation models.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..errors import GatewayError, UpstreamError, openai_error_body
from ..framing import encode_sse_json
from ..wire.openai_chat import ForcedTool
from .chat_response import (
    SYSTEM_FINGERPRINT,
    NativeCall,
    NativeLine,
    finish_reason,
    forced_tool_call,
    read_native_line,
    tool_call_id,
    usage_from_ollama,
)

__all__ = ["DEFAULT_MAX_FORCED_CHARS", "OllamaChatStream"]

# A forced tool call is held in memory until the done line; the request's
# num_predict already bounds it, this is the backstop (every buffer
# has a limit).
DEFAULT_MAX_FORCED_CHARS = 4 * 1024 * 1024


class _State(Enum):
    STREAMING = "streaming"
    DONE = "done"
    FAILED = "failed"


class OllamaChatStream:
    """Translate one native chat stream.  See the module docstring."""

    def __init__(
        self,
        *,
        completion_id: str,
        created: int,
        model: str,
        include_usage: bool,
        reasoning_field: str = "reasoning_content",
        forced_tool: ForcedTool | None = None,
        max_forced_chars: int = DEFAULT_MAX_FORCED_CHARS,
    ) -> None:
        self._id = completion_id
        self._created = created
        self._model = model
        self._include_usage = include_usage
        self._reasoning_field = reasoning_field
        self._forced = forced_tool
        self._max_forced_chars = max_forced_chars
        self._state = _State.STREAMING
        self._started = False  # a chunk (and so the role) has been emitted
        self._calls = 0  # tool calls emitted so far: the next call's index
        self._held: list[str] = []  # forced tool_choice: content held back
        self._held_chars = 0
        self._held_logprobs: list[dict[str, Any]] = []
        self.usage: TokenUsage | None = None
        # The SSE event of a content chunk, cut around its content: every
        # other byte is the same for the whole stream.  The first chunk
        # also carries the role (see _chunk).
        self._first_event = self._content_frame({"role": "assistant", "content": ""})
        self._content_event = self._content_frame({"content": ""})

    def _content_frame(self, delta: dict[str, Any]) -> tuple[bytes, bytes]:
        """The bytes before and after the content of the chunk :meth:`_chunk`
        builds for ``delta`` (whose content is ``""``): cut from that very
        chunk, so the two cannot drift apart.  ``"content":""`` occurs once
        in it: inside a JSON string its quotes would be escaped."""
        event = encode_sse_json(self._envelope([self._choice(delta, None)]))
        head, found, tail = event.partition(b'"content":""')
        assert found
        return head + b'"content":', tail

    @property
    def done(self) -> bool:
        """The done line was seen and the finish chunk emitted."""
        return self._state is _State.DONE

    @property
    def failed(self) -> bool:
        """An error payload was emitted; the stream is over."""
        return self._state is _State.FAILED

    # -- inputs -------------------------------------------------------------------

    def feed(self, line: Any) -> list[dict[str, Any]]:
        """One parsed NDJSON value -> the payloads to send, in order."""
        if self._state is not _State.STREAMING:
            return []
        try:
            native = read_native_line(line)
            if self._forced is not None:
                native = self._hold(native)
        except UpstreamError as err:
            return self.fail(err)
        out: list[dict[str, Any]] = []
        self._deltas(native, out)
        if native.done:
            self._finish(native, line, out)
        return out

    def sse_event(self, line: Any) -> bytes | None:
        """Hot path: the SSE event of a plain content line, or None when
        ``line`` needs :meth:`feed`.

        Plain means what most lines of a stream are: no forced tool call,
        and a line that is not done and holds non-empty text content and
        nothing else that :meth:`feed` would read (no thinking, tool calls,
        logprobs, error or done reason).  Then :meth:`feed` would return
        exactly one chunk, ``{"content": text}`` (with the role first in
        the stream's first chunk) in the stream's constant envelope, and
        this returns its bytes as ``encode_sse_json`` would, without
        building it.
        """
        if self._forced is not None or self._state is not _State.STREAMING:
            return None
        if type(line) is not dict or line.get("done") is not False:
            return None
        msg = line.get("message")
        if type(msg) is not dict or "error" in line:
            return None
        content = msg.get("content")
        if type(content) is not str or not content:
            return None
        thinking = msg.get("thinking")
        if (thinking is not None and thinking != "") or msg.get("tool_calls") is not None:
            return None
        if line.get("logprobs") is not None or line.get("done_reason") is not None:
            return None
        if self._started:
            head, tail = self._content_event
        else:
            self._started = True
            head, tail = self._first_event
        return b"".join((head, orjson.dumps(content), tail))

    def finish(self) -> list[dict[str, Any]]:
        """The upstream ended: an error payload unless the done line was seen."""
        return self.fail(UpstreamError("upstream closed the stream before it finished"))

    def fail(self, err: GatewayError) -> list[dict[str, Any]]:
        """The transport failed: the error payload, once, unless already over."""
        if self._state is not _State.STREAMING:
            return []
        self._state = _State.FAILED
        return [openai_error_body(err)]

    # -- deltas -------------------------------------------------------------------

    def _deltas(self, native: NativeLine, out: list[dict[str, Any]]) -> None:
        # A metrics trailer (done line with an empty message) yields nothing
        # here; nor does any line with nothing in it.
        calls = [self._call(c) for c in native.tool_calls]
        content = native.content
        logprobs = native.logprobs
        main = bool(content or calls)
        if native.thinking:
            # Reasoning first, in a chunk of its own (docs/wire-notes.md, "Chat stream chunks").
            reasoning = {self._reasoning_field: native.thinking}
            out.append(self._chunk(reasoning, None if main else logprobs))
        if main or (logprobs and not native.thinking):
            delta: dict[str, Any] = {"content": content} if content or not calls else {}
            if calls:
                delta["tool_calls"] = calls
            out.append(self._chunk(delta, logprobs))

    def _call(self, call: NativeCall) -> dict[str, Any]:
        index = self._calls
        self._calls += 1
        return {
            "index": index,
            "id": call.id or tool_call_id(self._id, index),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }

    def _chunk(
        self, delta: dict[str, Any], logprobs: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        if not self._started:
            self._started = True
            delta = {"role": "assistant", **delta}
        return self._envelope([self._choice(delta, logprobs)])

    @staticmethod
    def _choice(delta: dict[str, Any], logprobs: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {
            "index": 0,
            "delta": delta,
            "logprobs": {"content": logprobs} if logprobs else None,
            "finish_reason": None,
        }

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    # -- forced tool_choice -----------------------------------------------------------

    def _hold(self, native: NativeLine) -> NativeLine:
        """Keep the content (and its logprobs) back until the done line."""
        if not native.content and not native.logprobs:
            return native
        self._held.append(native.content)
        self._held_chars += len(native.content)
        self._held_logprobs.extend(native.logprobs)
        if self._held_chars > self._max_forced_chars:
            raise UpstreamError(
                f"the forced tool call exceeded {self._max_forced_chars} characters"
            )
        return native._replace(content="", logprobs=[])

    def _release(self, out: list[dict[str, Any]]) -> None:
        content = "".join(self._held)
        logprobs = self._held_logprobs
        forced = forced_tool_call(content, self._forced) if content and self._forced else None
        if forced is not None:
            out.append(self._chunk({"tool_calls": [self._call(forced)]}, logprobs))
        elif content or logprobs:
            # Not the JSON we forced (e.g. cut short by `length`): plain content.
            out.append(self._chunk({"content": content}, logprobs))

    # -- the done line ------------------------------------------------------------------

    def _finish(self, native: NativeLine, line: dict[str, Any], out: list[dict[str, Any]]) -> None:
        if self._forced is not None:
            self._release(out)
        if not self._started:
            out.append(self._chunk({"content": ""}, None))
        reason = finish_reason(native.done_reason, self._calls > 0)
        out.append(
            self._envelope([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])
        )
        self.usage = usage_from_ollama(line)
        if self._include_usage:
            chunk = self._envelope([])
            chunk["usage"] = self.usage.as_openai()
            out.append(chunk)
        self._state = _State.DONE
