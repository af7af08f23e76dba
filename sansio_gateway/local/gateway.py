"""Flows answered by the gateway itself: model lists, health, readiness, status.

They never reach a backend: ``plan`` answers (a :class:`LocalAnswer`), or
asks the adapter for the usage ledger or the metrics.  Their routes are
declared in routes.py.
"""

from __future__ import annotations

from urllib.parse import unquote

import orjson

from ..accounting.usage_query import parse_usage_query
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import NotFound
from ..flows.base import JSON_HEADERS, LedgerQuery, LocalAnswer, MetricsScrape, Plan
from ..flows.context import FlowContext
from ..http import IncomingRequest, header_value

__all__ = [
    "AdminUsage",
    "Health",
    "LocalFlow",
    "Metrics",
    "OpenAIModelList",
    "OpenAIModelRetrieve",
    "Ready",
    "Status",
]


class LocalFlow:
    """A flow whose answer is computed in the core from the Gateway's state,
    as the request's :class:`~sansio_gateway.flows.context.FlowContext` shows it."""

    def __init__(self, context: FlowContext, request: IncomingRequest) -> None:
        self.context = context
        self.request = request
        self.now = context.now

    def answer(self) -> LocalAnswer:
        raise NotImplementedError

    def visible(self, model: str) -> bool:
        """May the caller see ``model``?  (Its key's allow-list.)"""
        return self.context.identity.may_use(model)

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        return self.answer()


def _json(body: object, status: int = 200) -> LocalAnswer:
    return LocalAnswer(status=status, headers=JSON_HEADERS, body=orjson.dumps(body))


def _model_object(name: str, created: int, owned_by: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


class OpenAIModelList(LocalFlow):
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
    def answer(self) -> LocalAnswer:
        return _json({"status": "ok"})


class Ready(LocalFlow):
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
        if admin and context.process:
            body["process"] = dict(context.process)
        store = context.store_status
        if store is not None:
            body["limit_store"] = {
                "ready": store.ready,
                "serving": store.serving,
                "reason": store.reason,
            }
        return _json(body)


class AdminUsage(LocalFlow):
    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        accept = header_value(self.request.headers, b"accept") or b""
        return LedgerQuery(
            query=parse_usage_query(self.request.query, accept=accept.decode("latin-1"))
        )


class Metrics(LocalFlow):
    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        return MetricsScrape()
