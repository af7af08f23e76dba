"""What a flow gives the Exchange: a plan, and a translator per attempt.

Theory of operation: the Exchange owns the life of a request (state, errors,
usage records); a *flow* owns one route's wire formats for one attempt.
``plan`` says what to do: answer locally (:class:`LocalAnswer`), read the
usage ledger (:class:`LedgerQuery`), scrape the metrics
(:class:`MetricsScrape`), ask the adapter for data only it holds and
render it here (:class:`AdapterAnswer`: the status page's files and live
statistics), or call a backend (:class:`UpstreamCall`).  An
upstream call carries the translator of that attempt's answer, either a
:class:`WholeAnswer` (one body in, one body out) or a
:class:`StreamAnswer` (bytes in, bytes out, with its own end); nothing else
of a flow is ever called, so no flow stubs out the half it does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from ..accounting.usage import TokenUsage
from ..accounting.usage_query import UsageQuery
from ..actions import (
    AssetLoaded,
    AttemptReason,
    CollectOverview,
    ConfigReloaded,
    LoadAsset,
    OverviewCollected,
    ReloadConfig,
    SendUpstream,
)
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, UpstreamError
from ..http import Headers

__all__ = [
    "JSON_HEADERS",
    "NDJSON_HEADERS",
    "SSE_HEADERS",
    "AdapterAnswer",
    "AdapterData",
    "Flow",
    "LedgerQuery",
    "LocalAnswer",
    "MetricsScrape",
    "Plan",
    "StreamAnswer",
    "UpstreamCall",
    "WholeAnswer",
    "upstream_object",
]

JSON_HEADERS: Headers = ((b"content-type", b"application/json"),)
SSE_HEADERS: Headers = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
)
NDJSON_HEADERS: Headers = ((b"content-type", b"application/x-ndjson"),)


def upstream_object(body: bytes) -> dict[str, Any]:
    """A whole upstream answer as the JSON object every backend kind sends,
    or the 502 a translator raises for anything else."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError("backend sent a response that is not JSON") from None
    if type(answer) is not dict:
        raise UpstreamError("backend sent an unexpected response")
    return answer


class WholeAnswer(Protocol):
    """Translates a whole (non-stream) upstream answer."""

    def complete(self, body: bytes) -> bytes:
        """A whole upstream answer in, the whole client body out."""

    @property
    def usage(self) -> TokenUsage | None:
        """Token counts reported by the backend, once known."""

    def estimate_usage(self) -> TokenUsage:
        """Best estimate of tokens used when the backend reported none."""


class StreamAnswer(Protocol):
    """Translates a streamed upstream answer (flows/stream.py has the one base)."""

    @property
    def headers(self) -> Headers:
        """Response headers for the client's stream."""

    def feed(self, data: bytes) -> bytes:
        """Upstream stream bytes in, client bytes out (possibly empty)."""

    def finish(self) -> bytes:
        """The upstream stream ended; the last client bytes."""

    def fail(self, error: GatewayError) -> bytes:
        """The upstream failed mid-stream; an in-band error for the client."""

    @property
    def done(self) -> bool:
        """The client stream is complete (nothing more will be sent)."""

    @property
    def failed(self) -> bool:
        """The client stream ended with an in-band error."""

    @property
    def usage(self) -> TokenUsage | None:
        """Token counts reported by the backend, once known."""

    def estimate_usage(self) -> TokenUsage:
        """Best estimate of tokens used so far (for partial streams)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamCall:
    """Call the backend; exactly one of ``whole`` and ``stream`` translates
    the answer."""

    method: str
    path: str  # appended to the backend's base URL
    body: bytes
    whole: WholeAnswer | None = None
    stream: StreamAnswer | None = None
    # The flow's own request headers (the client's forwarded ones): each
    # name given here replaces the gateway's headers of that name (a
    # client's ``anthropic-version`` the backend kind's default).
    headers: Headers = ()

    def __post_init__(self) -> None:
        if (self.whole is None) == (self.stream is None):
            raise ValueError("an UpstreamCall has exactly one translator: whole or stream")

    def send(
        self,
        backend: BackendConfig,
        *,
        headers: Headers,
        body: bytes,
        delay: float,
        reason: AttemptReason,
    ) -> SendUpstream:
        """The action that sends this call to ``backend``; ``body`` is this
        call's body as the request's limit lease capped it, ``reason`` why
        the attempt is made."""
        url = backend.url + self.path
        if self.headers:
            names = {name for name, _ in self.headers}
            headers = (*(h for h in headers if h[0] not in names), *self.headers)
        return SendUpstream(
            backend=backend.name,
            method=self.method,
            url=url,
            headers=headers,
            body=body,
            delay=delay,
            reason=reason,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerQuery:
    """The answer comes from the usage ledger, which the adapter reads."""

    query: UsageQuery


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsScrape:
    """The answer is the adapter's metrics exposition."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalAnswer:
    status: int
    headers: Headers
    body: bytes


# What the adapter may report to an AdapterAnswer.
AdapterData = OverviewCollected | AssetLoaded | ConfigReloaded


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterAnswer:
    """The answer is rendered in the core from what the adapter reports:
    the Exchange issues ``ask`` and hands its result to ``render``."""

    ask: CollectOverview | LoadAsset | ReloadConfig
    render: Callable[[AdapterData], LocalAnswer]


Plan = UpstreamCall | LocalAnswer | LedgerQuery | MetricsScrape | AdapterAnswer


class Flow(Protocol):
    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        """What to do for this attempt (``route``/``backend`` are None on
        model-less routes)."""
