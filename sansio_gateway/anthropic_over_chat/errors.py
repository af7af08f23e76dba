"""Whole error responses on the Anthropic surface: any gateway error, and a limit denial.

Theory of operation: the status, headers and retry semantics are the ones
every surface shares (:func:`sansio_gateway.rendering.error_response`,
:func:`sansio_gateway.limits.headers.denial_headers`); only the body and the
status of an overloaded backend differ.  Anthropic's SDK retries 408, 409,
429 and 5xx (529 included) and honours ``retry-after`` and
``x-should-retry``, so the shared headers keep their meaning here.
"""

from __future__ import annotations

from ..errors import GatewayError
from ..http import Headers, Surface
from ..limits.decision import Decision
from ..limits.headers import denial_error, denial_headers
from ..rendering import error_response
from ..wire.anthropic import anthropic_status_and_type, render_anthropic_error

__all__ = ["anthropic_error_response", "render_anthropic_denial"]

_JSON = (b"content-type", b"application/json")


def anthropic_error_response(err: GatewayError) -> tuple[int, Headers, bytes]:
    """``(status, headers, body)`` for ``err``: the shared headers (``allow``,
    ``retry-after``), Anthropic's status and envelope."""
    _, headers, _ = error_response(Surface.OPENAI, err)
    status, _ = anthropic_status_and_type(err)
    return status, headers, render_anthropic_error(err)


def render_anthropic_denial(
    decision: Decision, *, model: str, organization: str
) -> tuple[int, Headers, bytes]:
    """``(status, headers, body)`` for a denied Decision: a 429
    ``rate_limit_error`` (or 529 when the limit store is unavailable), with
    the same ``retry-after`` and ``x-ratelimit-*`` headers as /v1."""
    err = denial_error(decision, model=model, organization=organization)
    status, _ = anthropic_status_and_type(err)
    return status, (_JSON, *denial_headers(decision)), render_anthropic_error(err)
