"""What a transport answers on its own, before (or instead of) an Exchange.

Theory of operation: the adapters' transports (the h11 server, the ASGI
app, through the shared front in ``adapters/front.py``) read request heads
and bodies under size limits and timeouts.  When one of those goes wrong
-- a head too large, ambiguous framing, a body past the cap, a request
that does not arrive in time, too many connections, a shutdown -- the
transport answers without running an Exchange.  Which error that is, and
its bytes, are decided here, so every transport answers alike; the
transport only notices the situation and writes the answer.

Before reading a body, :func:`refuse_head` judges the head: framing, then
the core's own early refusal (:meth:`Gateway.refuse_head`: no key, 401) so
an unauthenticated body is never read, then the declared length against
the cap.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import GatewayError, InvalidRequest, PayloadTooLarge, ServiceUnavailable
from .http import Headers
from .rendering import error_response
from .routes import surface_of

__all__ = [
    "ambiguous_framing",
    "body_too_large",
    "content_length",
    "has_header",
    "header_fields_too_large",
    "malformed_request",
    "no_api_keys",
    "read_timed_out",
    "refuse_head",
    "render_refusal",
    "shutting_down",
    "too_many_connections",
]

HeadJudge = Callable[[str, str, Headers], GatewayError | None]


def header_fields_too_large() -> InvalidRequest:
    return InvalidRequest("Request header fields too large", status_code=431)


def malformed_request(status_hint: int, detail: str) -> InvalidRequest:
    """A request the HTTP parser rejected, with the status it suggests."""
    if status_hint == 431:
        return header_fields_too_large()
    return InvalidRequest(f"Bad request: {detail}", status_code=status_hint)


def ambiguous_framing() -> InvalidRequest:
    # RFC 9112 6.3: Content-Length with Transfer-Encoding is how requests
    # are smuggled past a proxy that frames them the other way.
    return InvalidRequest("Content-Length together with Transfer-Encoding is not allowed")


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body too large: the limit is {limit} bytes")


def read_timed_out() -> InvalidRequest:
    return InvalidRequest("Timed out reading the request", status_code=408)


def too_many_connections() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The gateway has too many open connections; retry shortly.",
        code="too_many_connections",
        retry_after=1,
    )


def no_api_keys(problem: str) -> ServiceUnavailable:
    """An open gateway (no keys) reached on an address it must not answer on."""
    return ServiceUnavailable(problem, code="no_api_keys")


def shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable("The gateway is shutting down; retry the request.", code="shutdown")


def has_header(headers: Headers, name: bytes) -> bool:
    return any(key == name for key, _ in headers)


def content_length(headers: Headers) -> int | None:
    """The declared body length; None when absent or not a number."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def refuse_head(
    judge: HeadJudge,
    method: str,
    path: str,
    headers: Headers,
    *,
    body_follows: bool,
    max_body_bytes: int,
) -> GatewayError | None:
    """The error to answer once a head is in, before its body is read, or None.

    ``judge`` is :meth:`Gateway.refuse_head`; it is asked only when a body
    may follow (``body_follows``, which only the transport's framing knows):
    without a body there is nothing to save, and the Exchange answers as
    usual.  ``refuse_head`` repeats no check the Exchange makes, so None
    grants nothing.
    """
    if has_header(headers, b"transfer-encoding") and has_header(headers, b"content-length"):
        return ambiguous_framing()
    if body_follows:
        refusal = judge(method, path, headers)
        if refusal is not None:
            return refusal
    declared = content_length(headers)
    if declared is not None and declared > max_body_bytes:
        return body_too_large(max_body_bytes)  # refused before a byte of it is read
    return None


def render_refusal(err: GatewayError, path: str) -> tuple[int, Headers, bytes]:
    """A transport's own answer, in the dialect of ``path`` (the gateway's
    own when the path is not known yet); the connection closes after it."""
    status, headers, body = error_response(surface_of(path), err)
    framing = ((b"content-length", str(len(body)).encode("ascii")), (b"connection", b"close"))
    return status, (*headers, *framing), body
