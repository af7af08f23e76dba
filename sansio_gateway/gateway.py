"""The Gateway: configuration, catalogue, route table and registry, shared by every Exchange.

Theory of operation: an adapter builds one :class:`Gateway` from a config at
startup and asks it for an :class:`~sansio_gateway.exchange.Exchange` per
request.  Long-lived, changing knowledge -- discovered models, backend
health -- is held here as immutable snapshots that the adapter replaces
(``record_discovery``); Exchanges read whatever snapshot is current when
they start, and change the rest only through the writes they return as
actions (``apply_write``).  There are no module-level singletons: two Gateways in one
process share nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import assert_never

from .accounting.admission import DEFAULT_OUTPUT_CAP
from .actions import CountBackendAttempt, RecordBackendOutcome, RefreshCatalogue, SharedWrite
from .auth import ANONYMOUS, Authenticator, Forbidden, Identity
from .backends.catalogue import Catalogue, DiscoveredModel, Route
from .backends.health import BackendHealth, BackendStatus, StoreStatus
from .backends.registry import Registry, builtin_registry
from .config import BackendConfig, ConfigError, GatewayConfig, LimitValues
from .errors import GatewayError
from .exchange import Exchange
from .flows.context import FlowConstructor, FlowContext
from .http import Headers
from .limits import LimitSpecs, build_specs, lease_ttl_for
from .reload import ReloadPlan
from .routes import Access, RouteDecl, RouteTable, default_route_table

__all__ = ["BackendStatus", "Gateway", "StoreStatus"]


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        routes: RouteTable | None = None,
        random: Callable[[], float] | None = None,
        limit_divisor: int = 1,
        registry: Registry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else builtin_registry()
        for i, backend in enumerate(config.backends):
            if backend.kind not in self.registry.names():
                problem = (
                    f"{backend.kind!r}: unknown backend kind"
                    f" (known: {', '.join(self.registry.names())})"
                )
                raise ConfigError(
                    f"backends[{i}].kind = {problem}", problems=((f"backends[{i}].kind", problem),)
                )
        self.limits_on = _any_limit(config)
        if _any_token_limit(config) and config.server.default_max_tokens is None:
            # Estimates must be upper bounds, so an output cap is written
            # upstream whenever the client gives none (docs/rate-limiting.md, "What is charged").
            server = config.server.model_copy(update={"default_max_tokens": DEFAULT_OUTPUT_CAP})
            config = config.model_copy(update={"server": server})
        self.config = config
        self.limit_divisor = limit_divisor
        self._lease_ttl_us = lease_ttl_for([b.total_timeout for b in config.backends])
        self._specs: dict[tuple[str, str], LimitSpecs] = {}
        self.catalogue = Catalogue(config)
        # [limits.models] by canonical route, rebuilt when the catalogue changes.
        self._model_limits: tuple[Catalogue | None, dict[str, LimitValues]] = (None, {})
        self.routes = routes if routes is not None else default_route_table()
        self.authenticator = Authenticator(config.auth)
        # A uniform [0, 1) source for retry jitter, injected by the adapter;
        # the default (no jitter: the midpoint) keeps tests deterministic.
        self.random: Callable[[], float] = random or (lambda: 0.5)
        self.backend_status: dict[str, BackendStatus] = {}
        # The shared limit store (None: none configured, or nothing reported
        # yet): /ready waits for it, /status shows why it is not ready.
        self.store_status: StoreStatus | None = None
        self._last_miss_refresh = float("-inf")
        self.health = BackendHealth(
            [b.name for b in config.backends],
            failure_threshold=config.server.breaker_failures,
            cooldown=config.server.breaker_cooldown,
        )
        self._upstream_headers = {b.name: self._static_headers(b) for b in config.backends}
        self._answered_here: dict[str, frozenset[str]] = {}  # per route name
        # Which process this is and which config it runs, as the adapter
        # says (pid, worker, config generation): /status shows it to admins.
        self.process: Mapping[str, object] = {}
        # After a reload (carry_over): the Gateway that replaced this one, and
        # the backends this one took over from its predecessor.
        self._successor: Gateway | None = None
        self._carried: frozenset[str] = frozenset()

    def _static_headers(self, backend: BackendConfig) -> Headers:
        headers: Headers = (
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, application/x-ndjson, text/event-stream"),
            (b"user-agent", b"sansio-gateway"),
        )
        # How to authenticate is the backend kind's to say (backends/registry.py).
        return headers + self.registry.kind(backend.kind).auth_headers(backend.api_key)

    def limit_specs(self, user: str, route: Route) -> LimitSpecs:
        """The limits for ``user`` calling ``route``'s model (cached: specs
        only change with the config and the catalogue).

        Per-model limits key on the canonical route, not the client's
        spelling, so "llama3.2", "llama3.2:latest" and an alias of it share
        one limit state; ``[limits.models."X"]`` applies to every spelling
        that reaches the model X resolves to.
        """
        per_model = self._limits_by_route()
        model = self.catalogue.canonical(route)
        key = (user, model)
        specs = self._specs.get(key)
        if specs is None:
            if len(self._specs) > 50_000:
                self._specs.clear()  # bounded: rebuilt on demand
            specs = build_specs(
                self.config.limits,
                user,
                model,
                divisor=self.limit_divisor,
                lease_ttl_us=self._lease_ttl_us,
                model_values=per_model.get(model, LimitValues()),
            )
            self._specs[key] = specs
        return specs

    def _config_routes(self, name: str) -> list[Route]:
        """Where a model name written in the config goes: its resolution,
        or (a name no backend offers yet) that name on every backend."""
        route = self.catalogue.resolve(name)
        if route is not None:
            return [route]
        return [Route(model=name, backend=b.name, target=name) for b in self.config.backends]

    def _limits_by_route(self) -> dict[str, LimitValues]:
        catalogue, table = self._model_limits
        if catalogue is self.catalogue:
            return table
        table = {}
        for name, values in self.config.limits.models.items():
            for route in self._config_routes(name):
                key = self.catalogue.canonical(route)
                table[key] = _strictest(table[key], values) if key in table else values
        self._model_limits = (self.catalogue, table)
        self._specs.clear()  # a name may now resolve elsewhere
        return table

    def may_use(self, identity: Identity, route: Route) -> bool:
        """Does ``identity``'s allow-list admit the model ``route`` reaches?

        A pattern admits it when it matches any name of that model (the
        client's spelling, an alias, the discovered name), or when it is a
        plain name that resolves to the same model.  So "llama3.2:latest"
        admits "llama3.2", and no spelling reaches a model that no pattern
        names.
        """
        if identity.models == ("*",) or identity.may_use(route.model):
            return True  # the spelling itself is named: no need to look further
        names = self.catalogue.names_of(route)
        if any(identity.may_use(name) for name in names):
            return True
        canonical = self.catalogue.canonical(route)
        return any(
            self.catalogue.canonical(r) == canonical
            for pattern in identity.models
            if not _is_glob(pattern)
            for r in self._config_routes(pattern)
        )

    def authorize(self, method: str, path: str, headers: Headers) -> tuple[RouteDecl, Identity]:
        """The route's declaration and the caller's identity, from the
        request head alone; raises ``NotFound``/``MethodNotAllowed`` (no such
        route), ``Unauthorized`` (401) or ``Forbidden`` (403, admin routes)."""
        route = self.routes.match(method, path)
        identity = ANONYMOUS
        if route.access is not Access.PUBLIC:
            identity = self.authenticator.authenticate(headers)
            if route.access is Access.ADMIN and not identity.admin:
                raise Forbidden("This endpoint needs an admin key.")
        return route, identity

    def refuse_head(self, method: str, path: str, headers: Headers) -> GatewayError | None:
        """For adapters, between a request's head and its body: the error to
        answer at once (then close the connection), or None to read the body
        and run the Exchange.  An unauthenticated caller never makes the
        gateway read (and buffer) a body of up to ``max_body_bytes``; the
        Exchange repeats the same check, so a None here grants nothing."""
        try:
            self.authorize(method, path, headers)
        except GatewayError as err:
            return err
        return None

    def exchange(self, request_id: str) -> Exchange:
        return Exchange(self, request_id=request_id)

    def flow_context(
        self, request_id: str, now: float, identity: Identity, forwarded: Headers = ()
    ) -> FlowContext:
        """All that the flows of one request see of the Gateway (flows/context.py),
        with the client's headers its route ``forwarded`` (routes.py)."""
        server = self.config.server
        return FlowContext(
            request_id=request_id,
            now=now,
            identity=identity,
            catalogue=self.catalogue,
            default_max_tokens=server.default_max_tokens,
            reasoning_field=server.reasoning_field,
            backends=self.config.backends,
            backend_status=self.backend_status,
            circuit=self.health.state,
            store_status=self.store_status,
            process=self.process,
            forwarded=forwarded,
        )

    def flow_for(self, kind: str, route: str) -> FlowConstructor | None:
        """The registry's flow constructor for ``route`` on a backend of ``kind``."""
        return self.registry.flow(kind, route)

    def answered_here(self, route: str) -> frozenset[str]:
        """The backends for which the gateway answers ``route`` itself,
        without calling them (``Registry.answers_itself``): their breakers
        do not matter to it."""
        found = self._answered_here.get(route)
        if found is None:
            found = self._answered_here[route] = frozenset(
                b.name for b in self.config.backends if self.registry.answers_itself(b.kind, route)
            )
        return found

    def upstream_headers(self, backend: str, request_id: str) -> Headers:
        return self._upstream_headers[backend] + ((b"x-request-id", request_id.encode("ascii")),)

    # ---- reloading -----------------------------------------------------------

    def carry_over(self, old: Gateway, plan: ReloadPlan) -> None:
        """Take over what ``old`` (the Gateway this one replaces) learnt and
        ``plan`` says still holds: the carried backends' discovered models,
        probe results and breakers, the limit store's status, the time of
        the last refresh on an unknown model.  From now on ``old`` -- still
        serving the requests that started on it -- forwards its writes about
        carried backends here (``apply_write``), so their breakers count
        every attempt, whichever config the request started on."""
        carried = [b for b in plan.backends.carried if old.health.knows(b)]
        discovered = {
            name: old.catalogue.discovered[name]
            for name in carried
            if name in old.catalogue.discovered and self.config.backend(name).discover
        }
        self.catalogue = Catalogue(self.config, discovered)
        self.backend_status = {n: old.backend_status[n] for n in carried if n in old.backend_status}
        self.health.carry(old.health, carried)
        self.store_status = old.store_status
        self._last_miss_refresh = old._last_miss_refresh
        self._carried = frozenset(carried)
        old._successor = self

    def _forward(self, backend: str | None) -> Gateway | None:
        """The successor that must also hear of ``backend`` (None: every write)."""
        successor = self._successor
        if successor is not None and (backend is None or backend in successor._carried):
            return successor
        return None

    def record_discovery(
        self,
        backend: str,
        models: list[DiscoveredModel],
        now: float,
        *,
        latency: float | None = None,
        probed: BackendConfig | None = None,
    ) -> None:
        """A discovery (which doubles as a health probe) of ``backend`` succeeded.

        ``probed``: the backend's config when the probe started; a probe of
        a backend that a reload has since removed or replaced is dropped."""
        if not self._probes(backend, probed):
            return
        self.catalogue = self.catalogue.with_discovery(backend, models, now)
        self.backend_status[backend] = BackendStatus(
            name=backend, up=True, checked_at=now, models=len(models), latency=latency
        )
        self.health.record(backend, True, now)

    def _probes(self, backend: str, probed: BackendConfig | None) -> bool:
        """Is a probe of ``backend`` (as configured by ``probed``) still about this config's backend?"""
        if not self.health.knows(backend):
            return False
        current = self.config.backend(backend)
        return probed is None or all(
            getattr(probed, f) == getattr(current, f) for f in ("kind", "url", "api_key")
        )

    def record_discovery_failure(
        self, backend: str, error: str, now: float, *, probed: BackendConfig | None = None
    ) -> None:
        if not self._probes(backend, probed):
            return
        previous = self.backend_status.get(backend)
        self.backend_status[backend] = BackendStatus(
            name=backend,
            up=False,
            checked_at=now,
            error=error,
            models=previous.models if previous else 0,
        )
        self.health.record(backend, False, now)

    def record_store(self, *, ready: bool, serving: bool, reason: str | None) -> None:
        """The adapter's view of the shared limit store changed."""
        self.store_status = StoreStatus(ready=ready, serving=serving, reason=reason)

    def may_refresh_on_miss(self, now: float) -> bool:
        """An unknown model may be new: refresh discovery, but at most once
        per ``discovery_ttl`` so unknown names cannot make us hammer backends.
        Only asks: executing the ``RefreshCatalogue`` notes the time."""
        if not any(b.discover for b in self.config.backends):
            return False
        return now - self._last_miss_refresh >= self.config.server.discovery_ttl

    def apply_write(self, action: SharedWrite, now: float) -> None:
        """Apply one of an Exchange's writes to the shared state (``now``:
        the adapter's clock).  Adapters call this for every ``SharedWrite``
        as soon as they receive the list holding it, before awaiting
        anything (actions.py)."""
        backend: str | None
        match action:
            case CountBackendAttempt(backend=backend, at=at):
                self.health.count_attempt(backend, at)
            case RecordBackendOutcome(backend=backend, ok=ok, at=at):
                self.health.record(backend, ok, at)
            case RefreshCatalogue():
                self._last_miss_refresh = now
                backend = None
            case _:
                assert_never(action)
        successor = self._forward(backend)
        if successor is not None:
            successor.apply_write(action, now)

    def discovery_path(self, backend: str) -> str:
        return self.registry.kind(self.config.backend(backend).kind).discovery_path

    def parse_discovery(self, backend: str, body: bytes) -> list[DiscoveredModel]:
        return self.registry.kind(self.config.backend(backend).kind).parse_discovery(body)


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _strictest(a: LimitValues, b: LimitValues) -> LimitValues:
    """Two [limits.models] entries for one model: the lower of each value."""
    merged = {}
    for name in LimitValues.model_fields:
        x, y = getattr(a, name), getattr(b, name)
        merged[name] = y if x is None else x if y is None else min(x, y)
    return LimitValues(**merged)


def _values(config: GatewayConfig) -> list[LimitValues]:
    limits = config.limits
    return [limits, *limits.users.values(), *limits.models.values()]


def _any_limit(config: GatewayConfig) -> bool:
    fields = ("requests_per_minute", "tokens_per_minute", "tokens_per_day", "concurrent_requests")
    return any(getattr(v, f) is not None for v in _values(config) for f in fields)


def _any_token_limit(config: GatewayConfig) -> bool:
    return any(
        v.tokens_per_minute is not None or v.tokens_per_day is not None for v in _values(config)
    )
