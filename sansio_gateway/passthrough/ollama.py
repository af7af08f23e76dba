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

The stream is the one stream base (flows/stream.py) with NDJSON on both
sides.  Whether the answer streams follows the native rule: ``stream`` absent means
true on ``/api/chat`` and ``/api/generate``.  Ollama answers a load request
with one JSON object even then; the NDJSON decoder reads it as the one and
final line.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage, read_ollama_usage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, UpstreamError
from ..flows.base import NDJSON_HEADERS, Plan, UpstreamCall, upstream_object
from ..flows.context import FlowContext
from ..flows.stream import TranslatedStream
from ..framing import NDJSONDecoder, encode_ndjson
from ..wire.ollama import NativeBody

__all__ = ["OllamaPassthroughFlow"]

# Where admission writes an output cap: the generating routes.
_GENERATING = frozenset({"ChatRequest", "GenerateRequest"})


class OllamaPassthroughFlow:
    """One attempt; the flow itself translates a whole answer."""

    def __init__(self, context: FlowContext, body: NativeBody, model: str) -> None:
        self._body = body
        self._default_max_tokens = context.default_max_tokens
        self._usage: TokenUsage | None = None

    def _cap_output(self, body: dict[str, Any]) -> None:
        """With token limits on, the output cap that admission charged is
        written upstream when the client set none (or asked for -1/-2,
        "unbounded"), so the estimate stays an upper bound."""
        cap = self._default_max_tokens
        if cap is None or self._body.struct not in _GENERATING:
            return
        options = body.get("options")
        options = dict(options) if isinstance(options, dict) else {}
        current = options.get("num_predict")
        if not isinstance(current, int) or isinstance(current, bool) or current <= 0:
            options["num_predict"] = cap
            body["options"] = options

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        assert route is not None
        native = self._body
        body = {key: value for key, value in native.data.items() if key != "name"}
        body["model"] = route.target
        self._cap_output(body)
        encoded = orjson.dumps(body)
        if not (native.streams and native.data.get("stream") is not False):
            return UpstreamCall(method="POST", path=native.path, body=encoded, whole=self)
        stream = TranslatedStream(
            decoder=NDJSONDecoder(),
            records=_Lines(native.model),
            encode=encode_ndjson,
            headers=NDJSON_HEADERS,
            prompt_bytes=native.size,
        )
        return UpstreamCall(method="POST", path=native.path, body=encoded, stream=stream)

    # ---- whole answers ---------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        answer = upstream_object(body)
        self._usage = read_ollama_usage(answer)
        return orjson.dumps(_rewrite(answer, self._body.model))

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage(prompt_tokens=self._body.size // 4 + 1)


class _Lines:
    """The stream base's per-record translator: each NDJSON line passes
    with ``model`` put back; an error line or the done line ends it."""

    def __init__(self, requested: str) -> None:
        self._requested = requested
        self.done = False
        self.failed = False
        self.usage: TokenUsage | None = None

    def feed(self, record: Any) -> list[dict[str, Any]]:
        if type(record) is not dict:
            return self.fail(UpstreamError("backend sent a malformed stream line"))
        self.failed = "error" in record
        if record.get("done") is True and not self.failed:
            self.done = True
            self.usage = read_ollama_usage(record)
        return [_rewrite(record, self._requested)]

    def finish(self) -> list[dict[str, Any]]:
        return self.fail(UpstreamError("backend closed the stream before it finished"))

    def fail(self, error: GatewayError) -> list[dict[str, Any]]:
        self.failed = True
        return [{"error": error.message}]


def _rewrite(answer: dict[str, Any], requested: str) -> dict[str, Any]:
    if "model" in answer:
        answer["model"] = requested
    return answer
