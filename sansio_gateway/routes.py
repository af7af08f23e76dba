"""The route table: every endpoint of the gateway, one declaration each.

Theory of operation: ``/v1/...`` (OpenAI, and Anthropic's ``/v1/messages``), ``/api/...`` (Ollama) and the
gateway's own endpoints live side by side on one port.  A
:class:`RouteDecl` says all there is to know about one route: its
method(s) and path (exact, or a prefix ``/*`` for a path parameter that
may itself contain ``/``), its name (``chat.completions``,
``ollama.chat``, ...: what the registry, the limits, the ledger and the
metrics call it), its surface (how its errors look), who may call it, and
either

* a **parser** (body -> typed request): a model-addressed route.  The
  parser runs once, when the request arrives; for each attempt the flow
  comes from the backend-kind registry, keyed by (kind, route name)
  (backends/registry.py), or from the route's own ``flow``; or
* a **local** flow factory: the gateway answers from its own state.

whether rate limits charge it, whether it generates output tokens and
whether it uses tokens at all (docs/rate-limiting.md, "What is charged";
a token count uses none: "Token counts"), and which of the client's
request headers its flows see (``forwards``: Anthropic's ``anthropic-beta``
and ``anthropic-version``, which a same-dialect backend needs; the
Exchange passes them on without knowing their names).  :class:`RouteTable` matches a
request's method and path to its declaration: an unknown path is a 404
and a known path with the wrong method a 405, both rendered in the
surface's error form by the Exchange (which learns the surface from
:func:`surface_of` first, before any route is known).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .backends.catalogue import Catalogue
from .errors import MethodNotAllowed, NotFound
from .flows.context import FlowConstructor, LocalFlowFactory
from .http import Headers, Surface
from .local.gateway import (
    AdminUsage,
    Health,
    LocalFlow,
    Metrics,
    OpenAIModelList,
    OpenAIModelRetrieve,
    Ready,
    Status,
)
from .local.ollama import (
    ModelManagement,
    OllamaPs,
    OllamaPull,
    OllamaRoot,
    OllamaTags,
    OllamaVersion,
    head_or_get,
)
from .local.ollama_names import catalogue_name
from .local.overview import AdminOverview
from .local.reload import AdminReload
from .local.ui import UiAsset
from .over_chat.requests import (
    parse_count_tokens_route,
    parse_messages_route,
    parse_responses_route,
)
from .wire.ollama import native_body_parser
from .wire.openai_chat import parse_chat_request
from .wire.openai_completions import parse_completion_request
from .wire.openai_embeddings import parse_embeddings_request

__all__ = [
    "ANTHROPIC_HEADERS",
    "DEFAULT_ROUTES",
    "LIMITED_ROUTES",
    "Access",
    "ParsedRequest",
    "RouteDecl",
    "RouteTable",
    "default_route_table",
    "surface_of",
]


class Access(enum.Enum):
    PUBLIC = "public"  # health probes
    KEY = "key"  # any valid key (or anonymous when no keys are configured)
    ADMIN = "admin"  # an admin key


class ParsedRequest(Protocol):
    """What a route's parser returns, whatever else it holds."""

    @property
    def model(self) -> str:
        """The model as the client named it."""

    @property
    def decoded(self) -> dict[str, Any]:
        """The body as decoded once on arrival (admission charges it)."""


def _as_asked(catalogue: Catalogue, requested: str) -> str:
    return requested


# A forwarded header value longer than this is dropped (a beta list is a
# few hundred bytes; a backend would refuse a huge one anyway).
MAX_FORWARDED_VALUE = 2048


def _forwardable(value: bytes) -> bool:
    # Visible ASCII and spaces only: the value goes into an upstream request.
    return len(value) <= MAX_FORWARDED_VALUE and all(0x20 <= byte <= 0x7E for byte in value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDecl:
    """One route.  Exactly one of ``parse`` and ``local`` is set."""

    name: str
    methods: tuple[str, ...]
    path: str
    surface: Surface
    access: Access = Access.KEY
    # Model-addressed routes: body -> typed request (with ``.model``, the
    # client's name, and ``.decoded``, the body as decoded once).
    parse: Callable[[bytes], ParsedRequest] | None = None
    # The catalogue's name for the client's (Ollama's synthetic ``:latest``
    # mapped back: local/ollama_names.py).
    model_name: Callable[[Catalogue, str], str] = _as_asked
    # The route's own flow, whatever the backend's kind (else the registry's).
    flow: FlowConstructor | None = None
    local: LocalFlowFactory | None = None
    limited: bool = False  # rate limits charge it
    generates: bool = False  # it generates output tokens (charged up to a cap)
    # False for a token count: it is charged as one request and no tokens,
    # the usage ledger keeps no row of it and the metrics observe no time
    # to first token (docs/rate-limiting.md, "Token counts").
    uses_tokens: bool = True
    # The client's request headers (lower-case names) its flows receive
    # (FlowContext.forwarded); a same-dialect flow sends them on.
    forwards: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if (self.parse is None) == (self.local is None):
            raise ValueError(f"route {self.name}: exactly one of parse and local")
        if self.generates and not self.uses_tokens:
            raise ValueError(f"route {self.name}: a route that generates uses tokens")

    def forwarded(self, headers: Headers) -> Headers:
        """The client's ``headers`` this route forwards, in the order sent
        (a value that is not visible ASCII, or too long, is dropped)."""
        if not self.forwards:
            return ()
        picked = ((name.lower(), value) for name, value in headers)
        return tuple(
            (name, value) for name, value in picked if name in self.forwards and _forwardable(value)
        )


def surface_of(path: str) -> Surface:
    if path.startswith("/api/") or path == "/api":
        return Surface.OLLAMA
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return Surface.ANTHROPIC
    if path.startswith("/v1/") or path == "/v1":
        return Surface.OPENAI
    return Surface.GATEWAY


class RouteTable:
    """Exact paths, plus prefixes for routes with a path parameter that may
    itself contain ``/`` (model ids such as ``hf.co/user/model:tag``)."""

    def __init__(self, routes: Iterable[RouteDecl] = ()) -> None:
        self._routes: list[RouteDecl] = []
        self._exact: dict[str, dict[str, RouteDecl]] = {}
        self._prefixes: list[tuple[str, dict[str, RouteDecl]]] = []
        for route in routes:
            self.add(route)

    def add(self, route: RouteDecl) -> None:
        self._routes.append(route)
        if route.path.endswith("/*"):
            prefix = route.path[:-1]
            methods = next((m for p, m in self._prefixes if p == prefix), None)
            if methods is None:
                methods = {}
                self._prefixes.append((prefix, methods))
                # Longest prefix first, so specific routes win.
                self._prefixes.sort(key=lambda item: -len(item[0]))
        else:
            methods = self._exact.setdefault(route.path, {})
        for method in route.methods:
            methods[method] = route

    def __iter__(self) -> Iterator[RouteDecl]:
        return iter(self._routes)

    def match(self, method: str, path: str) -> RouteDecl:
        methods = self._exact.get(path)
        if methods is None:
            for prefix, candidates in self._prefixes:
                if path.startswith(prefix) and len(path) > len(prefix):
                    methods = candidates
                    break
        if methods is None:
            raise NotFound(f"Invalid URL ({method} {path})", code="unknown_url")
        route = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if route is None:
            raise MethodNotAllowed(
                f"Method {method} is not allowed for {path}", allow=", ".join(sorted(methods))
            )
        return route


def _local(cls: type[LocalFlow]) -> LocalFlowFactory:
    return cls


def _openai(
    name: str, path: str, parse: Callable[[bytes], ParsedRequest], *, generates: bool
) -> RouteDecl:
    return RouteDecl(
        name=name,
        methods=("POST",),
        path=path,
        surface=surface_of(path),
        parse=parse,
        limited=True,
        generates=generates,
    )


def _native(
    name: str,
    path: str,
    struct: str,
    *,
    streams: bool = False,
    limited: bool = False,
    generates: bool = False,
    flow: FlowConstructor | None = None,
) -> RouteDecl:
    return RouteDecl(
        name=name,
        methods=("POST",),
        path=path,
        surface=Surface.OLLAMA,
        parse=native_body_parser(struct, path=path, streams=streams),
        model_name=catalogue_name,
        flow=flow,
        limited=limited,
        generates=generates,
    )


def _gateway(
    name: str, path: str, cls: type[LocalFlow], *, access: Access = Access.KEY
) -> RouteDecl:
    return RouteDecl(
        name=name,
        methods=("GET",),
        path=path,
        surface=surface_of(path),
        access=access,
        local=_local(cls),
    )


def _manage(methods: tuple[str, ...], path: str) -> RouteDecl:
    return RouteDecl(
        name="ollama.manage",
        methods=methods,
        path=path,
        surface=Surface.OLLAMA,
        local=_local(ModelManagement),
    )


# The client's headers an Anthropic-compatible backend reads: the betas it
# asked for and the API version it speaks (docs/anthropic-compatibility.md,
# "Headers").
ANTHROPIC_HEADERS = (b"anthropic-beta", b"anthropic-version")

# Model lists, /api/show, pulls and the gateway's own endpoints are not
# charged; embeddings are charged for their input only.
DEFAULT_ROUTES: tuple[RouteDecl, ...] = (
    # -- OpenAI (docs/openai-compatibility.md)
    _openai("chat.completions", "/v1/chat/completions", parse_chat_request, generates=True),
    _openai("completions", "/v1/completions", parse_completion_request, generates=True),
    _openai("embeddings", "/v1/embeddings", parse_embeddings_request, generates=False),
    _openai("responses", "/v1/responses", parse_responses_route, generates=True),
    _gateway("models.list", "/v1/models", OpenAIModelList),
    _gateway("models.retrieve", "/v1/models/*", OpenAIModelRetrieve),
    # -- Anthropic (docs/anthropic-compatibility.md); count_tokens is
    # model-addressed (an unknown model refreshes the catalogue, an
    # Anthropic backend counts itself) and uses no tokens: one request to
    # the limits, no ledger row (docs/rate-limiting.md, "Token counts").
    RouteDecl(
        name="anthropic.messages",
        methods=("POST",),
        path="/v1/messages",
        surface=Surface.ANTHROPIC,
        parse=parse_messages_route,
        limited=True,
        generates=True,
        forwards=ANTHROPIC_HEADERS,
    ),
    RouteDecl(
        name="anthropic.count_tokens",
        methods=("POST",),
        path="/v1/messages/count_tokens",
        surface=Surface.ANTHROPIC,
        parse=parse_count_tokens_route,
        limited=True,
        uses_tokens=False,
        forwards=ANTHROPIC_HEADERS,
    ),
    # -- the gateway's own
    _gateway("health", "/health", Health, access=Access.PUBLIC),
    _gateway("ready", "/ready", Ready, access=Access.PUBLIC),
    _gateway("status", "/status", Status),
    _gateway("admin.usage", "/admin/usage", AdminUsage, access=Access.ADMIN),
    _gateway("metrics", "/metrics", Metrics, access=Access.PUBLIC),
    # The status page (docs/status-page.md): the page holds no data and is
    # public; its JSON needs an admin key.
    _gateway("admin.overview", "/admin/overview", AdminOverview, access=Access.ADMIN),
    # Reads the config file again (docs/operations.md, "Reloading").
    RouteDecl(
        name="admin.reload",
        methods=("POST",),
        path="/admin/reload",
        surface=Surface.GATEWAY,
        access=Access.ADMIN,
        local=_local(AdminReload),
    ),
    _gateway("ui", "/ui", UiAsset, access=Access.PUBLIC),
    _gateway("ui", "/ui/*", UiAsset, access=Access.PUBLIC),
    # -- Ollama (docs/wire-notes.md, "Native endpoints clients call").  ``/``
    # and ``/api/version`` are public, as health probes are.
    *(
        RouteDecl(
            name=name,
            methods=("GET", "HEAD"),
            path=path,
            surface=surface_of(path),
            access=access,
            local=head_or_get(cls),
        )
        for name, path, cls, access in (
            ("ollama.root", "/", OllamaRoot, Access.PUBLIC),
            ("ollama.version", "/api/version", OllamaVersion, Access.PUBLIC),
            ("ollama.tags", "/api/tags", OllamaTags, Access.KEY),
            ("ollama.ps", "/api/ps", OllamaPs, Access.KEY),
        )
    ),
    _native("ollama.chat", "/api/chat", "ChatRequest", streams=True, limited=True, generates=True),
    _native(
        "ollama.generate",
        "/api/generate",
        "GenerateRequest",
        streams=True,
        limited=True,
        generates=True,
    ),
    _native("ollama.embed", "/api/embed", "EmbedRequest", limited=True),
    _native("ollama.embeddings", "/api/embeddings", "EmbeddingRequest", limited=True),
    _native("ollama.show", "/api/show", "ShowRequest"),
    _native("ollama.pull", "/api/pull", "PullRequest", flow=OllamaPull),
    _manage(("POST",), "/api/push"),
    _manage(("POST",), "/api/create"),
    _manage(("POST",), "/api/copy"),
    _manage(("DELETE",), "/api/delete"),
    _manage(("POST", "HEAD"), "/api/blobs/*"),
)

# Route name -> whether it generates, for the routes rate limits charge tokens.
LIMITED_ROUTES: dict[str, bool] = {
    r.name: r.generates for r in DEFAULT_ROUTES if r.limited and r.uses_tokens
}


def default_route_table() -> RouteTable:
    return RouteTable(DEFAULT_ROUTES)
