"""Ollama API endpoints the gateway answers itself.

Theory of operation: these flows never reach a backend.  The model-less
ones build on :class:`~sansio_gateway.local.gateway.LocalFlow`; ``show`` and
``pull`` name a model, so they are built like any model-addressed flow,
from the typed request and the resolved model (routes.py).  They present the merged
model catalogue the way Ollama clients expect it (docs/wire-notes.md,
"Native endpoints clients call" for the shapes ollama-python requires,
"Model names" for the decisions):

* ``GET``/``HEAD /`` -> ``Ollama is running`` (health probes);
* ``GET /api/version`` -> a dotted numeric version (Open WebUI parses it);
* ``GET /api/tags`` -> every catalogue id as ``name`` and ``model``, tagged
  ``<id>:latest`` when it has no tag, with ``size: 0``, ``digest: ""`` and a
  ``details`` object (a discovered Ollama model keeps its own details);
* ``GET /api/ps`` -> ``{"models": []}``: the gateway loads nothing;
* ``POST /api/show`` for a model on an OpenAI-compatible backend -> what
  the gateway knows: ``details``, ``model_info: {}`` (ollama-python requires
  the key), guessed ``capabilities``, ``modified_at``;
* model management (``pull``, ``push``, ``create``, ``copy``, ``delete``,
  ``blobs``) -> 501: the gateway serves its backends' models and cannot
  manage them -- except ``pull`` of a model the catalogue already lists,
  which succeeds at once so that "pull before use" clients keep working.

``HEAD`` answers carry no body (h11 refuses body bytes on a HEAD response).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..backends.catalogue import DiscoveredModel, Route
from ..config import BackendConfig
from ..errors import GatewayError
from ..flows.base import JSON_HEADERS, NDJSON_HEADERS, LocalAnswer
from ..flows.context import FlowContext
from ..framing import encode_ndjson
from ..http import Headers, IncomingRequest
from ..ollama_over_openai.responses import rfc3339
from ..wire.ollama import NativeBody
from .gateway import LocalFlow
from .ollama_names import is_listed, listed_name

__all__ = [
    "OLLAMA_VERSION",
    "HeadOnly",
    "ModelManagement",
    "NativeLocal",
    "OllamaPs",
    "OllamaPull",
    "OllamaRoot",
    "OllamaShow",
    "OllamaTags",
    "OllamaVersion",
    "head_or_get",
    "not_implemented",
]

# What /api/version reports: the Ollama API level the gateway speaks.
OLLAMA_VERSION = "0.13.0"
_TEXT_HEADERS: Headers = ((b"content-type", b"text/plain; charset=utf-8"),)
_NO_DETAILS: dict[str, Any] = {
    "parent_model": "",
    "format": "",
    "family": "",
    "families": [],
    "parameter_size": "",
    "quantization_level": "",
}


def _json(body: object) -> LocalAnswer:
    return LocalAnswer(status=200, headers=JSON_HEADERS, body=orjson.dumps(body))


class NativeLocal(LocalFlow):
    """A local flow on the Ollama surface: ``plan`` is always the answer."""

    def plan(self, route: Route | None, backend: BackendConfig | None) -> LocalAnswer:
        return self.answer()


class OllamaRoot(NativeLocal):
    def answer(self) -> LocalAnswer:
        return LocalAnswer(status=200, headers=_TEXT_HEADERS, body=b"Ollama is running")


class OllamaVersion(NativeLocal):
    def answer(self) -> LocalAnswer:
        return _json({"version": OLLAMA_VERSION})


def _details(info: DiscoveredModel | None) -> dict[str, Any]:
    return {**_NO_DETAILS, **(info.details if info else {})}


class OllamaTags(NativeLocal):
    def answer(self) -> LocalAnswer:
        models: dict[str, dict[str, Any]] = {}
        for name, _backend, info in self.context.catalogue.models():
            if not self.visible(name):
                continue
            listed = listed_name(name)
            models.setdefault(  # a name clash: the first (config order) wins
                listed,
                {
                    "name": listed,
                    "model": listed,
                    "modified_at": rfc3339(info.created if info else 0),
                    "size": 0,
                    "digest": "",
                    "details": _details(info),
                },
            )
        return _json({"models": list(models.values())})


class OllamaPs(NativeLocal):
    def answer(self) -> LocalAnswer:
        return _json({"models": []})


def _capabilities(name: str) -> list[str]:
    # An OpenAI-compatible backend does not say what a model can do; the id
    # is the only hint.  Tools are offered so that clients send them; the
    # backend decides.
    if "embed" in name.lower():
        return ["embedding"]
    return ["completion", "tools"]


class OllamaShow:
    """``/api/show`` for a model on an OpenAI-compatible backend.  The
    Exchange has resolved ``model`` (the catalogue name) and checked the
    caller's allow-list before ``plan`` (unknown: its 404)."""

    def __init__(self, context: FlowContext, body: NativeBody, model: str) -> None:
        self.context = context
        self.model = model

    def plan(self, route: Route | None, backend: BackendConfig | None) -> LocalAnswer:
        return self.answer()

    def answer(self) -> LocalAnswer:
        name = self.model
        info = next((i for n, _, i in self.context.catalogue.models() if n == name), None)
        return _json(
            {
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": _details(info),
                "model_info": {},
                "capabilities": _capabilities(name),
                "modified_at": rfc3339(info.created if info else 0),
            }
        )


def not_implemented(message: str) -> GatewayError:
    return GatewayError(message, status_code=501, type="api_error", code="not_implemented")


_VERBS = {
    "/api/pull": "pull",
    "/api/push": "push",
    "/api/create": "create",
    "/api/copy": "copy",
    "/api/delete": "delete",
}


def _cannot(verb: str) -> GatewayError:
    return not_implemented(
        f"this server is a gateway (sansio-gateway) and cannot {verb} models: it serves "
        "the models of its backends; manage them on the backend itself"
    )


class ModelManagement(NativeLocal):
    """``push``, ``create``, ``copy``, ``delete``, ``blobs``: always 501."""

    def answer(self) -> LocalAnswer:
        path = self.request.path
        if self.request.method == "HEAD":
            return LocalAnswer(status=501, headers=JSON_HEADERS, body=b"")
        raise _cannot(_VERBS.get(path, "upload blobs for"))


class OllamaPull:
    """``pull`` of a listed model succeeds at once; a name the gateway would
    only route blindly (an undiscovered backend) is 501.  As for
    :class:`OllamaShow`, the Exchange has resolved ``model``: unknown or
    hidden is a 404."""

    def __init__(self, context: FlowContext, body: NativeBody, model: str) -> None:
        self.context = context
        self.body = body
        self.model = model

    def plan(self, route: Route | None, backend: BackendConfig | None) -> LocalAnswer:
        name = self.model
        if not is_listed(self.context.catalogue, name):
            raise not_implemented(
                f"model '{name}' is not served by any backend of this gateway, and the "
                "gateway cannot pull models; pull it on a backend instead"
            )
        success = {"status": "success"}
        if self.body.data.get("stream") is False:
            return _json(success)
        # Streamed progress ends with this very line (docs/wire-notes.md, "Native endpoints clients
        # call").
        return LocalAnswer(status=200, headers=NDJSON_HEADERS, body=encode_ndjson(success))


class HeadOnly(NativeLocal):
    """``HEAD``: the ``GET`` answer's status and headers, without a body."""

    def __init__(self, inner: NativeLocal) -> None:
        super().__init__(inner.context, inner.request)
        self.inner = inner

    def answer(self) -> LocalAnswer:
        full = self.inner.answer()
        return LocalAnswer(status=full.status, headers=full.headers, body=b"")


def head_or_get(cls: type[NativeLocal]) -> Callable[[FlowContext, IncomingRequest], NativeLocal]:
    """The flow of a route declared for ``GET`` and ``HEAD``: a ``HEAD`` is
    answered by :class:`HeadOnly`."""

    def create(context: FlowContext, request: IncomingRequest) -> NativeLocal:
        flow = cls(context, request)
        return HeadOnly(flow) if request.method == "HEAD" else flow

    return create
