"""Errors and ids rendered for the client, per surface.

``error_response`` is the one place that decides how a failure looks on the
wire: OpenAI's four-key envelope on ``/v1`` (and gateway endpoints), Anthropic's
on ``/v1/messages*`` (its status too: 529 for an overloaded backend), Ollama's
``{"error": "..."}`` on ``/api``.  ``whole_response`` is the one shape of
an answer known in full before it is sent.
"""

from __future__ import annotations

import math

from .actions import Action, EndResponse, SendBody, StartResponse
from .errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    render_ollama_error,
    render_openai_error,
)
from .http import Headers, Surface, header_value
from .wire.anthropic import anthropic_status_and_type, render_anthropic_error

__all__ = [
    "MAX_RETRY_AFTER",
    "error_response",
    "model_not_found",
    "render_error",
    "request_id_from",
    "retry_after_seconds",
    "whole_response",
]

_JSON: Headers = ((b"content-type", b"application/json"),)
_MAX_REQUEST_ID = 128
# The longest Retry-After passed on to a client (seconds).
MAX_RETRY_AFTER = 3600


def render_error(surface: Surface, err: GatewayError) -> tuple[int, bytes]:
    """The status and body of ``err`` on ``surface`` (headers are shared)."""
    if surface is Surface.ANTHROPIC:
        return anthropic_status_and_type(err)[0], render_anthropic_error(err)
    if surface is Surface.OLLAMA:
        return err.status_code, render_ollama_error(err)
    return err.status_code, render_openai_error(err)


def error_response(surface: Surface, err: GatewayError) -> tuple[int, Headers, bytes]:
    status, body = render_error(surface, err)
    headers = _JSON
    if isinstance(err, MethodNotAllowed):
        headers = (*headers, (b"allow", err.allow.encode("ascii")))
    if err.retry_after is not None:
        headers = (*headers, (b"retry-after", str(retry_after_seconds(err.retry_after)).encode()))
    return status, headers, body


def retry_after_seconds(seconds: float) -> int:
    """A Retry-After in whole seconds, rounded up, at least 1 and at most
    ``MAX_RETRY_AFTER``: a backend's value is passed on, but a client is
    never told to wait longer than an hour (or 0 s, a busy loop)."""
    if not seconds < MAX_RETRY_AFTER:  # NaN included
        return MAX_RETRY_AFTER
    return max(1, math.ceil(seconds)) if seconds > 0 else 1


def model_not_found(surface: Surface, model: str) -> NotFound:
    """The one answer for a missing model and a hidden one, so a key's
    allow-list does not reveal what else exists; each surface in its own words."""
    if surface is Surface.OLLAMA:
        message = f'model "{model}" not found, try pulling it first'
    else:
        message = f"The model `{model}` does not exist or you do not have access to it."
    return NotFound(message, code="model_not_found", param="model")


def _is_safe_id(value: bytes) -> bool:
    # Echoed into response headers and upstream requests: only visible ASCII
    # without separators that could smuggle a header.
    return 0 < len(value) <= _MAX_REQUEST_ID and all(
        0x21 <= byte <= 0x7E and byte not in b'",;\\' for byte in value
    )


def request_id_from(headers: Headers, generated: str) -> str:
    """The client's ``x-request-id`` when it is safe to echo, else ``generated``.

    For tracing only: echoed, logged and sent upstream.  Limits, the ledger
    and completion ids key on the gateway's own id, so reusing an id cannot
    replace another request's lease or usage record.
    """
    value = header_value(headers, b"x-request-id")
    if value is not None and _is_safe_id(value):
        return value.decode("ascii")
    return generated


def whole_response(status: int, headers: Headers, body: bytes, *, head_only: bool) -> list[Action]:
    """The actions of a response known in full: head (with its length), body, end."""
    start = StartResponse(
        status=status, headers=(*headers, (b"content-length", str(len(body)).encode()))
    )
    if head_only:
        # HEAD: the same head as GET would get, and no body (RFC 9110 9.3.2).
        return [start, EndResponse()]
    return [start, SendBody(data=body), EndResponse()]
