"""Rate-limit headers and 429 responses, in OpenAI's conventions.

Theory of operation: every response carries ``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` and the
same three for ``-tokens`` (:func:`rate_limit_headers`), from the most
constraining limit of each unit.  Resets are Go ``time.Duration`` strings
("1s", "6m0s", "12ms"), rounded *up* to the millisecond so they stay ASCII
and never promise a reset earlier than the real one.

A denied :class:`Decision` becomes a response with :func:`render_denial`:

* rate (RPM/TPM) and concurrency: 429, ``Retry-After`` (whole seconds,
  rounded up), ``retry-after-ms``, ``code: rate_limit_exceeded``;
* daily quota: 429, ``code: insufficient_quota``, Retry-After to when it
  passes (the UTC day's end, unless in-flight reservations expire first),
  ``x-should-retry: false`` (without it, SDKs retry pointlessly);
* too large: 429, ``x-should-retry: false``, no Retry-After;
* store unavailable (``on_error = "closed"``): 503.

The body is OpenAI's envelope on the OpenAI and gateway surfaces and
``{"error": "..."}`` on the Ollama surface, Anthropic's on its own (with 529
for an unavailable limit store); the headers are the same.
"""

from __future__ import annotations

from ..errors import GatewayError, render_ollama_error, render_openai_error
from ..http import Headers, Surface
from ..wire.anthropic import anthropic_status_and_type, render_anthropic_error
from .decision import Decision, DenyReason, RateHeaders, UnitHeaders
from .specs import LimitName, ceil_div

__all__ = [
    "CONCURRENCY_RETRY_HINT_US",
    "denial_error",
    "denial_headers",
    "go_duration",
    "rate_limit_headers",
    "render_denial",
    "reset_duration",
]

# A concurrency lease is usually released by a commit long before it
# expires; point clients at a short retry instead of the lease lifetime.
CONCURRENCY_RETRY_HINT_US = 1_000_000


def _frac(value: int, prec: int) -> tuple[str, int]:
    """Go's fmtFrac: the fraction of value / 10**prec without trailing zeros."""
    digits = ""
    printed = False
    for _ in range(prec):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits = str(digit) + digits
        value //= 10
    return ("." + digits if printed else ""), value


def go_duration(ns: int) -> str:
    """Go's ``time.Duration(ns).String()``, byte for byte."""
    sign = "-" if ns < 0 else ""
    u = -ns if ns < 0 else ns
    if u == 0:
        return "0s"
    if u < 1_000_000_000:
        if u < 1_000:
            unit, prec = "ns", 0
        elif u < 1_000_000:
            unit, prec = "µs", 3
        else:
            unit, prec = "ms", 6
        frac, whole = _frac(u, prec)
        return f"{sign}{whole}{frac}{unit}"
    frac, secs = _frac(u, 9)
    out = f"{secs % 60}{frac}s"
    minutes = secs // 60
    if minutes > 0:
        out = f"{minutes % 60}m{out}"
        hours = minutes // 60
        if hours > 0:
            out = f"{hours}h{out}"
    return sign + out


def reset_duration(us: int) -> str:
    """A reset or wait for humans and headers: rounded up to the ms.

    ``go_duration`` of whole milliseconds, without its digit loop (hot
    path: two per admitted request): "0s", "12ms", "1.5s", "6m0s", "1h0m0.25s".
    """
    ms = ceil_div(max(us, 0), 1_000)
    if ms < 1_000:
        return f"{ms}ms" if ms else "0s"
    secs, rest = divmod(ms, 1_000)
    out = f"{secs % 60}.{rest:03d}".rstrip("0") + "s" if rest else f"{secs % 60}s"
    minutes = secs // 60
    if minutes > 0:
        out = f"{minutes % 60}m{out}"
        if minutes >= 60:
            out = f"{minutes // 60}h{out}"
    return out


def _unit(name: bytes, unit: UnitHeaders | None) -> list[tuple[bytes, bytes]]:
    if unit is None:
        return []
    return [
        (b"x-ratelimit-limit-" + name, str(unit.limit).encode()),
        (b"x-ratelimit-remaining-" + name, str(unit.remaining).encode()),
        (b"x-ratelimit-reset-" + name, reset_duration(unit.reset_us).encode()),
    ]


def rate_limit_headers(headers: RateHeaders) -> Headers:
    """The x-ratelimit-* headers for any response (streams included)."""
    return (*_unit(b"requests", headers.requests), *_unit(b"tokens", headers.tokens))


_LABELS = {
    LimitName.REQUESTS_PER_MINUTE: ("requests per min (RPM)", "requests"),
    LimitName.TOKENS_PER_MINUTE: ("tokens per min (TPM)", "tokens"),
    LimitName.TOKENS_PER_DAY: ("tokens per day (TPD)", "tokens"),
    LimitName.CONCURRENT_REQUESTS: ("concurrent requests", "requests"),
}


def _wait_us(decision: Decision) -> int:
    if decision.reason is DenyReason.CONCURRENCY:
        return min(decision.retry_after_us, CONCURRENCY_RETRY_HINT_US)
    return decision.retry_after_us


def denial_error(decision: Decision, *, model: str, organization: str) -> GatewayError:
    """The error (status, type, code, message) for a denied Decision."""
    if decision.allowed:
        raise ValueError("the decision allows the request")
    if decision.reason is DenyReason.STORE_UNAVAILABLE or decision.limit is None:
        return GatewayError(
            "The rate-limit store is unavailable; please retry shortly.",
            status_code=503,
            type="api_error",
            code="rate_limit_store_unavailable",
        )
    label, type_ = _LABELS[decision.limit]
    where = f"for {model} in organization {organization} on {label}"
    if decision.reason is DenyReason.TOO_LARGE:
        burst = f" (at most {decision.burst} at once)" if decision.burst is not None else ""
        message = (
            f"Request too large {where}: Limit {decision.limit_value}{burst},"
            f" Requested {decision.requested}. The input or output tokens must be reduced"
            " in order to run successfully."
        )
        return GatewayError(message, status_code=429, type=type_, code="rate_limit_exceeded")
    head = (
        "Too many concurrent requests"
        if decision.reason is DenyReason.CONCURRENCY
        else "Rate limit reached"
    )
    message = (
        f"{head} {where}: Limit {decision.limit_value}, Used {decision.used},"
        f" Requested {decision.requested}. Please try again in {reset_duration(_wait_us(decision))}."
    )
    code = (
        "insufficient_quota" if decision.reason is DenyReason.DAILY_QUOTA else "rate_limit_exceeded"
    )
    return GatewayError(message, status_code=429, type=type_, code=code)


def denial_headers(decision: Decision) -> Headers:
    """Retry-After, retry-after-ms, x-should-retry and the x-ratelimit-* set."""
    out: list[tuple[bytes, bytes]] = []
    if decision.reason is DenyReason.STORE_UNAVAILABLE:
        out.append((b"retry-after", b"1"))
    elif decision.reason is not DenyReason.TOO_LARGE:
        wait = _wait_us(decision)
        out.append((b"retry-after", str(ceil_div(wait, 1_000_000)).encode()))
        out.append((b"retry-after-ms", str(ceil_div(wait, 1_000)).encode()))
    if not decision.retryable:
        out.append((b"x-should-retry", b"false"))
    return (*out, *rate_limit_headers(decision.headers))


def render_denial(
    decision: Decision, *, surface: Surface, model: str, organization: str
) -> tuple[int, Headers, bytes]:
    """``(status, headers, body)`` for a denied Decision on ``surface``."""
    err = denial_error(decision, model=model, organization=organization)
    if surface is Surface.ANTHROPIC:
        status, _ = anthropic_status_and_type(err)
        body = render_anthropic_error(err)
    else:
        status = err.status_code
        body = render_ollama_error(err) if surface is Surface.OLLAMA else render_openai_error(err)
    headers = ((b"content-type", b"application/json"), *denial_headers(decision))
    return status, headers, body
