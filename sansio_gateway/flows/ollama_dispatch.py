"""One model-addressed request, whatever kind of backend each attempt reaches.

Theory of operation: the Exchange may call ``plan`` more than once -- a
retry of the same backend, or a fallback to another one, possibly of
another ``kind`` (an ``"ollama"`` primary with an ``"openai"`` fallback).
So the choice between the same-format passthrough and the translating flow
cannot be made when the request arrives: :class:`NativeDispatch` makes it
in ``plan``, per attempt, with a fresh inner flow from the registry (no
state from a failed attempt survives), and forwards every other call to
that flow.

The translating flow validates the whole native request when it is built,
so a bad request still never reaches a backend; the passthrough forwards
the client's body and lets the Ollama backend judge it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..accounting.usage import TokenUsage
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, InvalidRequest
from ..http import Headers, Surface
from .base import NDJSON_HEADERS, SSE_HEADERS, Flow, LocalAnswer, UpstreamCall

__all__ = ["NativeDispatch"]


class NativeDispatch:
    """See the module docstring.  ``make(kind)`` builds the inner flow for a
    backend of that kind (from the Gateway's registry), or None when the
    kind cannot serve the route.  Used on both surfaces."""

    surface = Surface.OLLAMA

    def __init__(
        self,
        *,
        route_name: str,
        model: str,
        make: Callable[[str], Flow | None],
        surface: Surface = Surface.OLLAMA,
    ) -> None:
        self.route_name = route_name
        self.surface = surface
        self._model = model
        self._make = make
        self._inner: Flow | None = None

    @property
    def model(self) -> str:
        """The catalogue name (``:latest`` handled: local/ollama_names.py)."""
        return self._model

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer:
        assert backend is not None
        inner = self._make(backend.kind)
        if inner is None:
            raise InvalidRequest(
                f"backend {backend.name!r} of kind {backend.kind!r} cannot serve {self.route_name}"
            )
        self._inner = inner
        return inner.plan(route, backend)

    def _flow(self) -> Flow:
        assert self._inner is not None, "plan() comes first"
        return self._inner

    def stream_headers(self) -> Headers:
        if self._inner is not None:
            return self._inner.stream_headers()
        return NDJSON_HEADERS if self.surface is Surface.OLLAMA else SSE_HEADERS

    def feed(self, data: bytes) -> bytes:
        return self._flow().feed(data)

    def finish(self) -> bytes:
        return self._flow().finish()

    def fail(self, error: GatewayError) -> bytes:
        return self._flow().fail(error)

    @property
    def stream_done(self) -> bool:
        return self._flow().stream_done

    @property
    def stream_failed(self) -> bool:
        return self._flow().stream_failed

    def complete(self, body: bytes) -> bytes:
        return self._flow().complete(body)

    @property
    def usage(self) -> TokenUsage | None:
        return self._inner.usage if self._inner else None

    def estimate_usage(self) -> TokenUsage:
        return self._inner.estimate_usage() if self._inner else TokenUsage()
