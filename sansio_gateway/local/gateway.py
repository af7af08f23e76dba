"""Flows answered by the gateway itself: model lists, health, readiness, status.

They never reach a backend, so they use :class:`LocalFlow`, whose stream and
usage hooks are unreachable by construction (``plan`` always returns a
:class:`LocalAnswer`).
"""

from __future__ import annotations

from urllib.parse import unquote

import orjson

from ..accounting.usage import TokenUsage
from ..accounting.usage_query import parse_usage_query
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, NotFound
from ..flows.base import (
    JSON_HEADERS,
    AdapterAnswer,
    LedgerQuery,
    LocalAnswer,
    MetricsScrape,
    UpstreamCall,
)
from ..flows.context import FlowContext
from ..http import Headers, IncomingRequest, Surface, header_value
from ..routing import Access, Router

__all__ = ["LocalFlow", "install_local_routes"]


class LocalFlow:
    """A flow whose answer is computed in the core from the Gateway's state,
    as the request's :class:`~sansio_gateway.flows.context.FlowContext` shows it."""

    surface = Surface.GATEWAY
    route_name = "local"
    model: str | None = None
    stream_done = True
    stream_failed = False
    usage: TokenUsage | None = None

    def __init__(self, context: FlowContext, request: IncomingRequest) -> None:
        self.context = context
        self.request = request
        self.now = context.now

    def answer(self) -> LocalAnswer:
        raise NotImplementedError

    def visible(self, model: str) -> bool:
        """May the caller see ``model``?  (Its key's allow-list.)"""
        return self.context.identity.may_use(model)

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer | LedgerQuery | MetricsScrape | AdapterAnswer:
        return self.answer()

    def stream_headers(self) -> Headers:
        return JSON_HEADERS

    def feed(self, data: bytes) -> bytes:
        return b""

    def finish(self) -> bytes:
        return b""

    def fail(self, error: GatewayError) -> bytes:
        return b""

    def complete(self, body: bytes) -> bytes:
        return body

    def estimate_usage(self) -> TokenUsage:
        return TokenUsage()


def _json(body: object, status: int = 200) -> LocalAnswer:
    return LocalAnswer(status=status, headers=JSON_HEADERS, body=orjson.dumps(body))


def _model_object(name: str, created: int, owned_by: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


class OpenAIModelList(LocalFlow):
    surface = Surface.OPENAI
    route_name = "models.list"

    def answer(self) -> LocalAnswer:
        data = [
            _model_object(name, info.created if info else 0, info.owned_by if info else backend)
            for name, backend, info in self.context.catalogue.models()
            if self.visible(name)
        ]
        # Always an array, never null (Ollama sends null when empty: docs/wire-notes.md, "Empty
        # model lists").
        return _json({"object": "list", "data": data})


class OpenAIModelRetrieve(LocalFlow):
    surface = Surface.OPENAI
    route_name = "models.retrieve"

    def answer(self) -> LocalAnswer:
        # Ids contain "/" and ":" (hf.co/user/model:Q4); take the whole rest
        # of the path, percent-decoded, rather than one segment (docs/wire-notes.md, "Namespaced
        # model ids").
        name = unquote(self.request.path[len("/v1/models/") :])
        for known, backend, info in self.context.catalogue.models():
            if known == name and self.visible(name):
                created = info.created if info else 0
                return _json(_model_object(name, created, info.owned_by if info else backend))
        raise NotFound(
            f"The model `{name}` does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )


class Health(LocalFlow):
    route_name = "health"

    def answer(self) -> LocalAnswer:
        return _json({"status": "ok"})


class Ready(LocalFlow):
    route_name = "ready"

    def answer(self) -> LocalAnswer:
        up = [s.name for s in self.context.backend_status.values() if s.up]
        store = self.context.store_status
        if store is not None and not store.ready:
            # A shared limit store not yet warmed would answer 503 or fall back.
            body = {"status": "unavailable", "backends_up": up, "store": store.reason}
            return _json(body, status=503)
        if up:
            return _json({"status": "ready", "backends_up": up})
        return _json({"status": "unavailable", "backends_up": []}, status=503)


class Status(LocalFlow):
    """``/status``: backends, their health and the models.  Backend URLs and
    probe errors (which name hosts and ports) are shown to admin keys only;
    other keys see the same document without them, and only the models
    their allow-list admits (docs/deployment.md,
    "Exposure: what an outsider or an ordinary key can see and cost")."""

    route_name = "status"

    def answer(self) -> LocalAnswer:
        context = self.context
        admin = context.identity.admin
        backends = []
        for backend in context.backends:
            status = context.backend_status.get(backend.name)
            entry: dict[str, object] = {
                "name": backend.name,
                "kind": backend.kind,
            }
            if admin:
                entry["url"] = backend.url
            entry.update(
                {
                    "up": status.up if status else None,
                    "checked_at": status.checked_at if status else None,
                    "latency_ms": round(status.latency * 1000, 3)
                    if status and status.latency is not None
                    else None,
                    "last_error": status.error if status else None,
                    "models": status.models if status else 0,
                    "circuit": context.circuit(backend.name).value,
                }
            )
            if not admin:
                del entry["last_error"]
            backends.append(entry)
        models = [
            {"name": name, "backend": backend}
            for name, backend, _ in context.catalogue.models()
            if admin or self.visible(name)
        ]
        body: dict[str, object] = {"backends": backends, "models": models}
        store = context.store_status
        if store is not None:
            body["limit_store"] = {
                "ready": store.ready,
                "serving": store.serving,
                "reason": store.reason,
            }
        return _json(body)


class AdminUsage(LocalFlow):
    route_name = "admin.usage"

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer | LedgerQuery | MetricsScrape:
        accept = header_value(self.request.headers, b"accept") or b""
        return LedgerQuery(
            query=parse_usage_query(self.request.query, accept=accept.decode("latin-1"))
        )


class Metrics(LocalFlow):
    route_name = "metrics"

    def plan(
        self, route: Route | None, backend: BackendConfig | None
    ) -> UpstreamCall | LocalAnswer | LedgerQuery | MetricsScrape:
        return MetricsScrape()


def _factory(cls: type[LocalFlow]):  # type: ignore[no-untyped-def]
    def create(context: FlowContext, request: IncomingRequest) -> LocalFlow:
        return cls(context, request)

    return create


def install_local_routes(router: Router) -> None:
    router.add("GET", "/v1/models", _factory(OpenAIModelList))
    router.add("GET", "/v1/models/*", _factory(OpenAIModelRetrieve))
    router.add("GET", "/health", _factory(Health), access=Access.PUBLIC)
    router.add("GET", "/ready", _factory(Ready), access=Access.PUBLIC)
    router.add("GET", "/status", _factory(Status))
    router.add("GET", "/admin/usage", _factory(AdminUsage), access=Access.ADMIN)
    router.add("GET", "/metrics", _factory(Metrics), access=Access.PUBLIC)
