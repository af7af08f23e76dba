"""Same-format passthrough: an ``/api/*`` request whose model lives on an
Ollama backend (``kind = "ollama"``).

Theory of operation: nothing to translate, so the flow forwards the
client's body with only ``model`` rewritten to the backend's name
(``route.target``; a legacy ``name`` key is folded into it), and rewrites
``model`` back to the client's name in the answer -- the whole object, or
every NDJSON line of a stream.  It still reads ``prompt_eval_count`` and
``eval_count`` off the ``done`` line for accounting, and it still owns the
stream's end: an ``{"error": ...}`` line or the ``done`` line ends it, and
EOF before either becomes one more error line (docs/wire-notes.md, "Errors in a stream":
mid-stream errors are an extra NDJSON line with status 200).

Whether the answer streams follows the native rule: ``stream`` absent means
true on ``/api/chat`` and ``/api/generate``.  Ollama answers a load request
with one JSON object even then; the NDJSON decoder reads it as the one and
final line.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, UpstreamError
from ..flows.base import NDJSON_HEADERS, LocalAnswer, UpstreamCall
from ..framing import FramingError, NDJSONDecoder, encode_ndjson
from ..http import Headers, Surface
from ..openai_over_ollama.chat_response import usage_from_ollama

__all__ = ["OllamaPassthroughFlow"]


class OllamaPassthroughFlow:
    surface = Surface.OLLAMA

    def __init__(
        self,
        *,
        route_name: str,
        path: str,
        data: dict[str, Any],
        requested: str,
        model: str,
        stream: bool,
        prompt_bytes: int,
        default_max_tokens: int | None = None,
    ) -> None:
        self.route_name = route_name
        self._path = path
        self._data = data
        self._requested = requested
        self._model = model
        self._stream = stream
        self._prompt_bytes = prompt_bytes
        self._default_max_tokens = default_max_tokens
        self._decoder = NDJSONDecoder() if stream else None
        self._done = False
        self._failed = False
        self._usage: TokenUsage | None = None
        self._lines_out = 0

    @property
    def model(self) -> str:
        return self._model

    def _cap_output(self, body: dict[str, Any]) -> None:
        """With token limits on, the output cap that admission charged is
        written upstream when the client set none (or asked for -1/-2,
        "unbounded"), so the estimate stays an upper bound."""
        cap = self._default_max_tokens
        if cap is None or self.route_name not in ("ollama.chat", "ollama.generate"):
            return
        options = body.get("options")
        options = dict(options) if isinstance(options, dict) else {}
        current = options.get("num_predict")
        if not isinstance(current, int) or isinstance(current, bool) or current <= 0:
            options["num_predict"] = cap
            body["options"] = options

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer:
        assert route is not None
        body = {key: value for key, value in self._data.items() if key != "name"}
        body["model"] = route.target
        self._cap_output(body)
        return UpstreamCall(
            method="POST", path=self._path, body=orjson.dumps(body), stream=self._stream
        )

    # ---- streamed answers -----------------------------------------------

    def stream_headers(self) -> Headers:
        return NDJSON_HEADERS

    def feed(self, data: bytes) -> bytes:
        assert self._decoder is not None
        try:
            lines = self._decoder.feed(data)
        except FramingError as exc:
            return self.fail(UpstreamError(f"malformed stream from backend: {exc.reason}"))
        return self._lines(lines)

    def finish(self) -> bytes:
        assert self._decoder is not None
        if self.stream_done:
            return b""
        try:
            out = self._lines(self._decoder.feed_eof())
        except FramingError as exc:
            return self.fail(UpstreamError(f"malformed stream from backend: {exc.reason}"))
        if not self.stream_done:
            out += self.fail(UpstreamError("backend closed the stream before it finished"))
        return out

    def fail(self, error: GatewayError) -> bytes:
        if self.stream_done:
            return b""
        self._failed = True
        self._lines_out += 1
        return encode_ndjson({"error": error.message})

    @property
    def stream_done(self) -> bool:
        return self._done or self._failed

    @property
    def stream_failed(self) -> bool:
        return self._failed

    def _lines(self, lines: list[Any]) -> bytes:
        out: list[bytes] = []
        for line in lines:
            if self.stream_done:
                break  # nothing may follow the done or error line
            if type(line) is not dict:
                out.append(self.fail(UpstreamError("backend sent a malformed stream line")))
                break
            out.append(encode_ndjson(self._rewrite(line)))
            self._lines_out += 1
            self._failed = "error" in line
            if line.get("done") is True and not self._failed:
                self._done = True
                self._usage = usage_from_ollama(line)
        return b"".join(out)

    def _rewrite(self, line: dict[str, Any]) -> dict[str, Any]:
        if "model" in line:
            line["model"] = self._requested
        return line

    # ---- whole answers ---------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("backend sent a response that is not JSON") from None
        if type(answer) is not dict:
            raise UpstreamError("backend sent an unexpected response")
        self._usage = usage_from_ollama(answer)
        return orjson.dumps(self._rewrite(answer))

    # ---- accounting ------------------------------------------------------

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self._prompt_bytes // 4 + 1, completion_tokens=self._lines_out
        )
