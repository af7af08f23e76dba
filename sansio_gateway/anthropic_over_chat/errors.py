"""Whole error responses on the Anthropic surface: any gateway error, and a limit denial.

Theory of operation: the status, headers and retry semantics are the ones
every surface shares (:func:`sansio_gateway.rendering.error_response`,
:func:`sansio_gateway.limits.headers.render_denial`, which dispatch on
``Surface.ANTHROPIC``); only the body and the status of an overloaded
backend differ.  Anthropic's SDK retries 408, 409, 429 and 5xx (529
included) and honours ``retry-after`` and ``x-should-retry``, so the shared
headers keep their meaning here.
"""

from __future__ import annotations

from ..errors import GatewayError
from ..http import Headers, Surface
from ..limits.decision import Decision
from ..limits.headers import render_denial
from ..rendering import error_response

__all__ = ["anthropic_error_response", "render_anthropic_denial"]


def anthropic_error_response(err: GatewayError) -> tuple[int, Headers, bytes]:
    """``(status, headers, body)`` for ``err``: the shared headers (``allow``,
    ``retry-after``), Anthropic's status and envelope."""
    return error_response(Surface.ANTHROPIC, err)


def render_anthropic_denial(
    decision: Decision, *, model: str, organization: str
) -> tuple[int, Headers, bytes]:
    """``(status, headers, body)`` for a denied Decision: a 429
    ``rate_limit_error`` (or 529 when the limit store is unavailable), with
    the same ``retry-after`` and ``x-ratelimit-*`` headers as /v1."""
    return render_denial(
        decision, surface=Surface.ANTHROPIC, model=model, organization=organization
    )
