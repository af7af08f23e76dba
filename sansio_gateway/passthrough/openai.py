"""Same-format passthrough: an OpenAI client in front of an OpenAI-compatible backend.

Theory of operation: the body the client sent is forwarded with only the
model rewritten to the backend's name for it (and back again in every
answer).  Streams always ask the backend for ``stream_options.include_usage``
so the gateway learns the real token counts; when the client did not ask
for usage, the usage chunk is dropped on the way back (and a ``usage``
field riding on an ordinary chunk is removed), so the client sees exactly
what it asked for (docs/rate-limiting.md, "What is charged").

The SSE stream is decoded and re-encoded event by event: the rewrite of
``model`` needs the JSON, and re-encoding guarantees clean framing even when
the backend sends comments or multi-line events.  ``[DONE]`` and in-band
``{"error": ...}`` events pass through; a stream that ends without
``[DONE]`` gets an error event, as every /v1 stream does.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..accounting.usage import TokenUsage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, InvalidRequest, UpstreamError, openai_error_body
from ..flows.base import JSON_HEADERS, SSE_HEADERS, LocalAnswer, UpstreamCall
from ..framing import SSE_DONE, FramingError, SSEDecoder, encode_sse_json
from ..http import Headers, IncomingRequest, Surface
from ..wire.openai_chat import remote_image_url_param

__all__ = ["OpenAIPassthroughFlow"]

_PATHS = {
    "chat.completions": "/chat/completions",
    "completions": "/completions",
    "embeddings": "/embeddings",
}


def _usage_of(value: Any) -> TokenUsage | None:
    if not isinstance(value, dict):
        return None
    prompt, completion = value.get("prompt_tokens"), value.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return TokenUsage(prompt_tokens=prompt, completion_tokens=completion)


class OpenAIPassthroughFlow:
    surface = Surface.OPENAI

    def __init__(self, request: IncomingRequest, model: str) -> None:
        data = orjson.loads(request.body)  # the route's parser already validated it
        if not isinstance(data, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        self.route_name = _route_of(request.path)
        self._data: dict[str, Any] = data
        self._model = model
        self._stream = bool(data.get("stream")) and self.route_name != "embeddings"
        options = data.get("stream_options")
        self._client_wants_usage = (
            isinstance(options, dict) and options.get("include_usage") is True
        )
        self._decoder = SSEDecoder()
        self._usage: TokenUsage | None = None
        self._done = False
        self._failed = False
        self._events_out = 0
        self._prompt_bytes = len(request.body)

    @property
    def model(self) -> str:
        return self._model

    # ---- planning ---------------------------------------------------------

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer:
        assert route is not None
        if backend is None or not backend.allow_image_urls:
            _refuse_image_urls(self._data)
        body = dict(self._data)
        body["model"] = route.target
        if self._stream:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        self._decoder = SSEDecoder()
        return UpstreamCall(
            method="POST",
            path=_PATHS[self.route_name],
            body=orjson.dumps(body),
            stream=self._stream,
        )

    # ---- streamed answers -----------------------------------------------

    def stream_headers(self) -> Headers:
        return SSE_HEADERS

    def feed(self, data: bytes) -> bytes:
        try:
            events = self._decoder.feed(data)
        except FramingError as exc:
            return self.fail(UpstreamError(f"malformed stream from backend: {exc.reason}"))
        out: list[bytes] = []
        for event in events:
            if self.stream_done:
                break
            out.append(self._event(event.data))
        return b"".join(out)

    def _event(self, data: str) -> bytes:
        if data.startswith("[DONE]"):
            self._done = True
            return SSE_DONE
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.fail(UpstreamError("backend sent an event that is not JSON"))
        if not isinstance(chunk, dict):
            return self.fail(UpstreamError("backend sent an unexpected event"))
        if "error" in chunk:
            self._failed = True
            return encode_sse_json(chunk)
        usage = _usage_of(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        if not self._client_wants_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return b""  # the usage chunk the gateway asked for, not the client
            del chunk["usage"]
        if "model" in chunk:
            chunk["model"] = self._model
        self._events_out += 1
        return encode_sse_json(chunk)

    def finish(self) -> bytes:
        if self.stream_done:
            return b""
        return self.fail(UpstreamError("backend closed the stream before it finished"))

    def fail(self, error: GatewayError) -> bytes:
        if self.stream_done:
            return b""
        self._failed = True
        return encode_sse_json(openai_error_body(error))

    @property
    def stream_done(self) -> bool:
        return self._done or self._failed

    @property
    def stream_failed(self) -> bool:
        return self._failed

    # ---- whole answers ---------------------------------------------------

    def complete(self, body: bytes) -> bytes:
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("backend sent a response that is not JSON") from None
        if not isinstance(answer, dict):
            raise UpstreamError("backend sent an unexpected response")
        self._usage = _usage_of(answer.get("usage"))
        if "model" in answer:
            answer["model"] = self._model
        return orjson.dumps(answer)

    def whole_headers(self) -> Headers:
        return JSON_HEADERS

    # ---- accounting ------------------------------------------------------

    @property
    def usage(self) -> TokenUsage | None:
        return self._usage

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage(
            prompt_tokens=self._prompt_bytes // 4 + 1, completion_tokens=self._events_out
        )


def _refuse_image_urls(data: dict[str, Any]) -> None:
    # The same 400 as the Ollama path (openai_over_ollama.chat_request._image): a remote
    # image URL would be fetched by the backend, from inside the network.
    param = remote_image_url_param(data.get("messages"))
    if param is not None:
        raise InvalidRequest(
            "Image URLs are not forwarded to this backend; send the image inline "
            "as a base64 data URL (data:image/png;base64,...).",
            param=param,
        )


def _route_of(path: str) -> str:
    for route, suffix in _PATHS.items():
        if path.endswith(suffix):
            return route
    raise InvalidRequest(f"no passthrough for {path}")
