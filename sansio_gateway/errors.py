"""Typed errors that carry their HTTP meaning, and their renderers.

Theory of operation: every failure the gateway can report is a
``GatewayError`` with a status code, an OpenAI error ``type``, an optional
``code`` and an optional ``param``.  Core code raises these internally; the
Exchange catches them and turns them into response actions with
:func:`render_openai_error` or :func:`render_ollama_error`, so an adapter
never sees an exception for a client- or upstream-caused failure.

The three families:

* client faults (4xx) -- ``InvalidRequest``, ``NotFound``, ``PayloadTooLarge`` ...
* upstream faults -- ``UpstreamError`` (502 by default, or the backend's own
  status when it answered with an error), ``UpstreamTimeout`` (504)
* bugs -- ``InternalError`` (500)

OpenAI's envelope (openapi ``ErrorResponse``) always has all four keys:
``{"error": {"message", "type", "param", "code"}}``.  Ollama's is
``{"error": "<message>"}`` (ollama ``docs/api/errors.mdx``).
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "GatewayError",
    "InternalError",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
    "UpstreamError",
    "UpstreamTimeout",
    "error_from_upstream",
    "openai_error_body",
    "render_ollama_error",
    "render_openai_error",
]


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status_code: int = 500
    type: str = "api_error"
    code: str | None = None
    # Seconds the client should wait before trying again, sent as
    # Retry-After (bounded: rendering.py) when known.
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        if type is not None:
            self.type = type

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(status={self.status_code}, type={self.type!r},"
            f" code={self.code!r}, param={self.param!r}, message={self.message!r})"
        )


class InvalidRequest(GatewayError):
    """The client sent something we cannot accept (400)."""

    status_code = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    """An unknown model or path (404).  OpenAI uses ``invalid_request_error``
    with ``code: model_not_found`` for unknown models."""

    status_code = 404
    type = "invalid_request_error"


class MethodNotAllowed(GatewayError):
    status_code = 405
    type = "invalid_request_error"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class PayloadTooLarge(GatewayError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ServiceUnavailable(GatewayError):
    status_code = 503
    type = "api_error"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after  # seconds, sent as Retry-After when known


class UpstreamError(GatewayError):
    """The backend failed or could not be reached (502 unless the backend's
    own status is carried over)."""

    status_code = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class InternalError(GatewayError):
    status_code = 500
    type = "api_error"
    code = "internal_error"


def openai_error_body(err: GatewayError) -> dict[str, Any]:
    """The OpenAI error object, usable both as a response body and as the
    payload of an SSE error event."""
    return {
        "error": {
            "message": err.message,
            "type": err.type,
            "param": err.param,
            "code": err.code,
        }
    }


def render_openai_error(err: GatewayError) -> bytes:
    return orjson.dumps(openai_error_body(err))


def render_ollama_error(err: GatewayError) -> bytes:
    return orjson.dumps({"error": err.message})


# Backend status -> (status we answer, OpenAI type, code).  Ollama answers
# 400/404/429/500/503 with meaningful messages (docs/wire-notes.md, "Error statuses and shapes");
# we keep the status where it means the same thing to the client and name the type
# the way OpenAI does for that status.
_UPSTREAM_STATUS_TABLE: dict[int, tuple[int, str, str | None]] = {
    400: (400, "invalid_request_error", None),
    401: (502, "api_error", "upstream_auth_failed"),
    403: (502, "api_error", "upstream_auth_failed"),
    404: (404, "invalid_request_error", None),
    408: (504, "api_error", "upstream_timeout"),
    413: (413, "invalid_request_error", "request_too_large"),
    422: (400, "invalid_request_error", None),
    429: (429, "rate_limit_error", "upstream_rate_limited"),
    499: (502, "api_error", "upstream_error"),
    500: (500, "api_error", "upstream_error"),
    502: (502, "api_error", "upstream_error"),
    503: (503, "api_error", "upstream_overloaded"),
    504: (504, "api_error", "upstream_timeout"),
    # Anthropic's "overloaded" (docs/anthropic-compatibility.md, "Errors"): the
    # same meaning as a 503, and answered as one (529 again on /v1/messages).
    529: (503, "api_error", "upstream_overloaded"),
}


def _message_from_body(body: bytes) -> str:
    """Ollama sends ``{"error": "..."}``; OpenAI-style servers send
    ``{"error": {"message": ...}}``; some proxies send plain text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text[:1000] or "upstream error"
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, str) and inner:
            return inner
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(data.get("message"), str):
            return str(data["message"])
        if isinstance(data.get("detail"), str):
            return str(data["detail"])
    return text[:1000] or "upstream error"


# The backend statuses whose Retry-After the client is told (the gateway
# gave up on them, but the client may try again later).
_PASSES_RETRY_AFTER = frozenset({429, 503, 529})


def error_from_upstream(
    status: int, body: bytes, *, model: str | None = None, retry_after: float | None = None
) -> GatewayError:
    """Turn a backend's error answer into the error we report; a 429 or an
    overloaded answer keeps the backend's ``retry_after`` (seconds)."""
    message = _message_from_body(body)
    if status in _UPSTREAM_STATUS_TABLE:
        out_status, type_, code = _UPSTREAM_STATUS_TABLE[status]
    elif 400 <= status < 500:
        out_status, type_, code = 400, "invalid_request_error", None
    else:
        out_status, type_, code = 502, "api_error", "upstream_error"
    if status == 404 and "not found" in message.lower():
        code = "model_not_found"
        if model is not None:
            message = f"The model `{model}` does not exist or you do not have access to it."
    cls = UpstreamError if out_status >= 500 else GatewayError
    err = cls(message, status_code=out_status, type=type_, code=code)
    if status in _PASSES_RETRY_AFTER:
        err.retry_after = retry_after
    return err
