"""The Exchange: one object per client request, walking the whole flow.

Theory of operation (cf. h11's ``Connection``): an adapter creates an
Exchange with a fresh request id, calls :meth:`Exchange.start` with the
parsed request and the current time, and executes the actions it gets back.
Whenever something happens -- the upstream answered, sent bytes, closed,
failed, or the client went away -- the adapter reports it with
:meth:`Exchange.handle` and executes the returned actions in order.

States and the results each accepts are one table, ``_TRANSITIONS``; a pair
missing from it is an adapter bug and raises :class:`ExchangeStateError`.
Client and upstream faults never raise: they come back as rendered error
responses (or in-band stream errors) in the caller's wire format.

Invariants the Exchange keeps, whatever the path:

* exactly one ``StartResponse`` and one ``EndResponse`` per request (unless
  the client disconnected, in which case nothing more is sent to it);
* a request that reached a backend produces exactly one ``RecordUsage``;
* once DONE, further upstream results are ignored (the response may end
  at Ollama's ``done`` line before the upstream socket closes).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .accounting.admission import (
    DEFAULT_OUTPUT_CAP,
    LIMITED_ROUTES,
    admission_charge,
    fitted_cap,
    write_output_cap,
)
from .accounting.usage_query import UsageQuery, render_usage
from .actions import (
    Action,
    AssetLoaded,
    CancelUpstream,
    CatalogueRefreshed,
    CheckLimits,
    ClientDisconnected,
    CollectMetrics,
    CommitLimits,
    EndResponse,
    LimitsDecided,
    MetricsCollected,
    OverviewCollected,
    QueryUsage,
    RecordUsage,
    RefreshCatalogue,
    Result,
    SendBody,
    SendUpstream,
    StartResponse,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
    UsageQueried,
    UsageRecord,
)
from .backends.catalogue import Catalogue, Route
from .backends.health import BackendHealth
from .backends.retry import next_step, parse_retry_after, targets_for
from .config import GatewayConfig
from .errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
    error_from_upstream,
)
from .flows.base import (
    AdapterAnswer,
    Flow,
    LedgerQuery,
    LocalAnswer,
    MetricsScrape,
    UpstreamCall,
)
from .flows.context import FlowContext
from .http import Headers, IncomingRequest, Surface, header_value
from .identity import ANONYMOUS, Identity
from .limits import Costs, Decision, LimitSpecs, Unit, rate_limit_headers, render_denial
from .rendering import error_response, request_id_from
from .routing import RouteEntry, surface_of

__all__ = ["Exchange", "ExchangeState", "ExchangeStateError", "GatewayView", "RequestSummary"]

# A non-stream upstream answer (or error body) larger than this is refused:
# every buffer has a limit.
MAX_UPSTREAM_BODY = 64 * 1024 * 1024
# The metrics label of a model the catalogue does not name (see RequestSummary).
UNKNOWN_MODEL_LABEL = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSummary:
    request_id: str
    surface: str
    route: str
    key_id: str | None
    user: str
    model: str
    backend: str
    resolved_model: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    latency: float
    ttft: float | None
    retries: int
    client_disconnected: bool
    # The model as a metrics label: the catalogue's name for it, "unknown"
    # for a name the catalogue does not hold (or one hidden by the caller's
    # allow-list), "-" for routes without a model.  Never the client's
    # free-form string, so clients cannot mint label values.
    model_label: str = "-"


class GatewayView(Protocol):
    """What an Exchange uses of the :class:`~sansio_gateway.gateway.Gateway`
    that made it.  A protocol, so that this module does not import
    ``gateway.py`` (which imports this one): the import graph has no circle
    (tests/core/test_import_graph.py)."""

    config: GatewayConfig
    catalogue: Catalogue
    health: BackendHealth
    limits_on: bool
    random: Callable[[], float]

    def authorize(
        self, method: str, path: str, headers: Headers
    ) -> tuple[RouteEntry, Identity]: ...

    def flow_context(self, request_id: str, now: float, identity: Identity) -> FlowContext: ...

    def may_use(self, identity: Identity, route: Route) -> bool: ...

    def should_refresh_on_miss(self, now: float) -> bool: ...

    def limit_specs(self, user: str, route: Route) -> LimitSpecs: ...

    def upstream_headers(self, backend: str, request_id: str) -> Headers: ...


class ExchangeStateError(RuntimeError):
    """The adapter reported a result the Exchange cannot accept now."""


class ExchangeState(enum.Enum):
    IDLE = "idle"
    AWAITING_UPSTREAM = "awaiting_upstream"  # SendUpstream issued, no head yet
    AWAITING_LIMITS = "awaiting_limits"  # CheckLimits issued
    # QueryUsage / CollectMetrics / an AdapterAnswer's action issued
    AWAITING_ADAPTER = "awaiting_adapter"
    BUFFERING = "buffering"  # non-stream answer being collected
    BUFFERING_ERROR = "buffering_error"  # upstream error body being collected
    STREAMING = "streaming"  # client response started, translating chunks
    DONE = "done"


class Exchange:
    """One client request.  Not thread-safe; one task drives it."""

    def __init__(self, gateway: GatewayView, *, request_id: str) -> None:
        self.gateway = gateway
        self.request_id = request_id
        self.trace_id = request_id
        self.state = ExchangeState.IDLE
        self.flow: Flow | None = None
        self.identity: Identity = ANONYMOUS
        self.surface = Surface.GATEWAY
        self.status = 0
        self.backend = ""
        self.resolved_model = ""
        self.model_label = "-"
        self.started_at = 0.0
        self.first_byte_at: float | None = None
        self._buffer = bytearray()
        self._upstream_status = 0
        self._reached_backend = False
        # True once an attempt may have reached a backend that could generate:
        # it answered, or failed in a way not known to precede the send.
        self._maybe_generated = False
        self._client_gone = False
        self._response_started = False
        self._head_only = False
        self._body = b""
        self._admitted = False
        self._settled = False
        self._estimate = 0
        self._output_cap: int | None = None  # written upstream when token limits apply
        self._specs: LimitSpecs | None = None
        self._commit: CommitLimits | None = None
        self._rate_headers: Headers = ()
        self.limit_decision: Decision | None = None
        self._ledger_query = UsageQuery()
        self._render: Callable[[OverviewCollected | AssetLoaded], LocalAnswer] | None = None
        self._targets: list[Route] = []
        self._target_index = 0
        self._retries_on_target = 0
        self._attempts = 0
        self._retry_after: float | None = None
        self._stream = False

    # ---- public API ------------------------------------------------------

    def start(self, request: IncomingRequest, now: float) -> list[Action]:
        """Begin handling ``request``; returns the first actions."""
        if self.state is not ExchangeState.IDLE:
            raise ExchangeStateError("start() called twice")
        self.started_at = now
        self._head_only = request.method == "HEAD"
        # The client's x-request-id is for tracing only: echoed, logged and
        # sent upstream.  Limits, the ledger and completion ids key on the
        # gateway's own id, so reusing an id cannot replace another
        # request's lease or usage record.
        self.trace_id = request_id_from(request.headers, self.request_id)
        self._body = request.body
        try:
            return self._with_commit(self._start(request, now))
        except GatewayError as err:
            return self._with_commit(self._fail_before_response(err, now))

    def handle(self, result: Result, now: float) -> list[Action]:
        """Feed one result; returns the actions it calls for."""
        handler = _TRANSITIONS.get((self.state, type(result)))
        if handler is None:
            raise ExchangeStateError(
                f"{type(result).__name__} not valid in state {self.state.name}"
            )
        try:
            return self._with_commit(handler(self, result, now))
        except GatewayError as err:
            return self._with_commit(self._fail(err, now))

    def summary(self, now: float) -> RequestSummary:
        """What happened, for the one log line and the metrics of a request.

        Holds no prompt text and no key, by construction.
        """
        flow = self.flow
        usage = flow.usage if flow is not None else None
        if usage is None and flow is not None and self._reached_backend:
            usage = flow.estimate_usage()
        return RequestSummary(
            request_id=self.trace_id,
            surface=self.surface.value,
            route=flow.route_name if flow is not None else "unknown",
            key_id=self.identity.key_id,
            user=self.identity.user,
            model=(flow.model if flow is not None else None) or "",
            backend=self.backend,
            resolved_model=self.resolved_model,
            status=self.status or 0,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency=now - self.started_at,
            ttft=None if self.first_byte_at is None else self.first_byte_at - self.started_at,
            retries=max(0, self._attempts - 1),
            client_disconnected=self._client_gone,
            model_label=self.model_label,
        )

    @property
    def response_headers_extra(self) -> Headers:
        return ((b"x-request-id", self.trace_id.encode("ascii")),)

    # ---- start -----------------------------------------------------------

    def _start(self, request: IncomingRequest, now: float) -> list[Action]:
        gateway = self.gateway
        self.surface = surface_of(request.path)
        # Before the body is parsed: an unauthenticated caller learns
        # nothing about what the gateway would accept.  (Adapters ask the
        # same question before reading the body: Gateway.refuse_head.)
        entry, self.identity = gateway.authorize(request.method, request.path, request.headers)
        if self.identity is not ANONYMOUS:
            request = replace(request, identity=self.identity)
        flow = entry.factory(gateway.flow_context(self.request_id, now, self.identity), request)
        self.flow = flow
        route = backend = None
        model = flow.model
        if model is not None:
            self.model_label = UNKNOWN_MODEL_LABEL
            route = gateway.catalogue.resolve(model)
            if (
                route is None
                and self.identity.may_use(model)
                and gateway.should_refresh_on_miss(now)
            ):
                # Perhaps the model was pulled since the last discovery.
                self.state = ExchangeState.AWAITING_ADAPTER
                return [RefreshCatalogue()]
            return self._route_to(route, model, now)
        plan = flow.plan(route, backend)
        if isinstance(plan, LedgerQuery):
            self.state = ExchangeState.AWAITING_ADAPTER
            self._ledger_query = plan.query
            return [QueryUsage(query=plan.query)]
        if isinstance(plan, MetricsScrape):
            self.state = ExchangeState.AWAITING_ADAPTER
            return [CollectMetrics()]
        if isinstance(plan, AdapterAnswer):
            self.state = ExchangeState.AWAITING_ADAPTER
            self._render = plan.render
            return [plan.ask]
        if isinstance(plan, LocalAnswer):
            self.state = ExchangeState.DONE
            self.status = plan.status
            return self._whole_response(plan.status, plan.headers, plan.body)
        raise InternalError(f"{flow.route_name}: a model-less flow asked for an upstream")

    def _model_not_found(self, model: str) -> NotFound:
        # Hidden and missing models look the same, so a key's allow-list
        # does not reveal what else exists; each surface in its own words.
        if self.surface is Surface.OLLAMA:
            message = f'model "{model}" not found, try pulling it first'
        else:
            message = f"The model `{model}` does not exist or you do not have access to it."
        return NotFound(message, code="model_not_found", param="model")

    def _route_to(self, route: Route | None, model: str, now: float) -> list[Action]:
        # The allow-list judges the model reached, not the spelling asked for.
        if route is None or not self.gateway.may_use(self.identity, route):
            raise self._model_not_found(model)
        self.model_label = self.gateway.catalogue.known_name(route) or UNKNOWN_MODEL_LABEL
        self._targets = targets_for(route)
        check = self._check_limits(route)
        if check is not None:
            self.state = ExchangeState.AWAITING_LIMITS
            return [check]
        return self._attempt(0.0, now)

    # ---- rate limits ------------------------------------------------------

    def _check_limits(self, route: Route) -> CheckLimits | None:
        """Ask for admission, charging an upper-bound estimate (or None when
        no limit applies to this request)."""
        gateway = self.gateway
        assert self.flow is not None
        generates = LIMITED_ROUTES.get(self.flow.route_name)
        if not gateway.limits_on or generates is None:
            return None
        specs = gateway.limit_specs(self.identity.user, route)
        if specs.empty:
            return None
        charge = fitted_cap(
            admission_charge(
                self._body,
                default_output_cap=gateway.config.server.default_max_tokens or DEFAULT_OUTPUT_CAP,
                generates=generates,
                route=self.flow.route_name,
            ),
            _token_ceiling(specs),
        )
        self._estimate = charge.total
        if generates and _token_ceiling(specs) is not None:
            self._output_cap = charge.cap
        self._specs = specs
        return CheckLimits(
            key=self.identity.user,
            specs=specs,
            costs=Costs(tokens=self._estimate, requests=1),
            request_id=self.request_id,
        )

    def _on_limits_decided(self, result: LimitsDecided, now: float) -> list[Action]:
        decision = result.decision
        self.limit_decision = decision
        assert self.flow is not None
        if not decision.allowed:
            self.state = ExchangeState.DONE
            status, headers, body = render_denial(
                decision, surface=self.surface, model=self.flow.model or "", organization="gateway"
            )
            self.status = status
            return self._whole_response(status, headers, body)
        self._admitted = True
        self._rate_headers = rate_limit_headers(decision.headers)
        if self._client_gone:
            self.state = ExchangeState.DONE
            self._settle(0)
            return []
        return self._attempt(0.0, now)

    def _on_limits_client_gone(self, result: ClientDisconnected, now: float) -> list[Action]:
        # The decision is still coming; if it admits, the lease is released then.
        self._client_gone = True
        return []

    def _settle(self, actual: int) -> None:
        """Queue the one CommitLimits of an admitted request."""
        if self._admitted and not self._settled:
            assert self._specs is not None
            self._settled = True
            self._commit = CommitLimits(
                key=self.identity.user,
                specs=self._specs,
                request_id=self.request_id,
                estimate=self._estimate,
                actual=max(0, actual),
            )

    def _with_commit(self, actions: list[Action]) -> list[Action]:
        commit = self._commit
        if commit is None:
            return actions
        self._commit = None
        return [*actions, commit]

    def _on_catalogue_refreshed(self, result: CatalogueRefreshed, now: float) -> list[Action]:
        assert self.flow is not None and self.flow.model is not None
        model = self.flow.model
        try:
            return self._route_to(self.gateway.catalogue.resolve(model), model, now)
        except GatewayError as err:
            return self._fail_before_response(err, now)

    # ---- attempts, retries and fallbacks ---------------------------------

    def _attempt(self, delay: float, now: float) -> list[Action]:
        """Plan the current target and ask for it to be sent."""
        assert self.flow is not None
        health = self.gateway.health
        # Backends whose breaker is open are skipped while another target remains.
        while not health.may_send(self._targets[self._target_index].backend, now + delay):
            if self._target_index + 1 >= len(self._targets):
                name = self._targets[self._target_index].backend
                self.backend = name
                wait = max(1, math.ceil(health.retry_after(name, now)))
                raise ServiceUnavailable(
                    f"Backend {name!r} is failing and was taken out of rotation; retry in {wait}s.",
                    code="backend_unavailable",
                    retry_after=wait,
                )
            self._target_index += 1
            self._retries_on_target = 0
            delay = 0.0
        route = self._targets[self._target_index]
        backend = self.gateway.config.backend(route.backend)
        self.backend = route.backend
        self.resolved_model = route.target
        try:
            plan = self.flow.plan(route, backend)
        except TypeError:
            # orjson encodes 254 levels of nesting but parses 1024: a body
            # in between validates and then cannot be re-encoded.
            raise InvalidRequest("The request JSON is nested too deeply.") from None
        if not isinstance(plan, UpstreamCall):
            self.state = ExchangeState.DONE
            if isinstance(plan, LocalAnswer):
                self.status = plan.status
                return self._whole_response(plan.status, plan.headers, plan.body)
            raise InternalError(f"{self.flow.route_name}: unexpected plan for a model route")
        self.state = ExchangeState.AWAITING_UPSTREAM
        self._reached_backend = True
        self._stream = plan.stream
        self._attempts += 1
        self._buffer = bytearray()
        headers = self.gateway.upstream_headers(self.backend, self.trace_id)
        body = plan.body
        if self._output_cap is not None:
            # The cap admission charged is the cap the backend reads, on
            # every route and backend kind (docs/rate-limiting.md, "What is charged").
            body = write_output_cap(self.flow.route_name, backend.kind, body, self._output_cap)
        return [
            SendUpstream(
                backend=self.backend,
                method=plan.method,
                url=backend.url + plan.path,
                headers=headers,
                body=body,
                delay=delay,
            )
        ]

    def _try_again(
        self, now: float, *, status: int | None, error: GatewayError | None
    ) -> list[Action] | None:
        """Another attempt, if the policy allows one (nothing was sent yet)."""
        # Only signs that the backend is unreachable or broken count against
        # its breaker: transport failures, and 502/504 from a proxy in front
        # of it.  A backend that answers 500 or 503 is alive -- those are
        # about one request or a busy moment, and retries handle them.
        failed_backend = error is not None or status in (502, 504)
        self.gateway.health.record(self.backend, not failed_backend, now)
        if self._response_started or not self._targets:
            return None
        backend = self.gateway.config.backend(self.backend)
        step = next_step(
            status=status,
            error=error,
            retries_on_target=self._retries_on_target,
            max_retries=backend.max_retries,
            attempts=self._attempts,
            max_attempts=self.gateway.config.server.max_attempts,
            has_next_target=self._target_index + 1 < len(self._targets),
            backoff_base=backend.retry_backoff,
            rand=self.gateway.random(),
            retry_after=self._retry_after,
        )
        if step.kind == "retry":
            self._retries_on_target += 1
            return self._attempt(step.delay, now)
        if step.kind == "fallback":
            self._target_index += 1
            self._retries_on_target = 0
            return self._attempt(0.0, now)
        return None

    # ---- transitions -----------------------------------------------------

    def _on_head(self, result: UpstreamResponseStarted, now: float) -> list[Action]:
        if not 400 <= result.status < 500:
            # A 4xx is the backend refusing the request, before generating;
            # a 5xx may come after minutes of generation (an OOM, a crash).
            self._maybe_generated = True
        self._upstream_status = result.status
        if result.status >= 400:
            self.state = ExchangeState.BUFFERING_ERROR
            self._retry_after = parse_retry_after(header_value(result.headers, b"retry-after"))
            return []
        self.gateway.health.record(self.backend, True, now)
        if not self._stream:
            self.state = ExchangeState.BUFFERING
            return []
        assert self.flow is not None
        self.state = ExchangeState.STREAMING
        self.status = 200
        self._response_started = True
        return [StartResponse(status=200, headers=self._headers(self.flow.stream_headers()))]

    def _on_buffer_chunk(self, result: UpstreamChunkReceived, now: float) -> list[Action]:
        if len(self._buffer) + len(result.data) > MAX_UPSTREAM_BODY:
            return [CancelUpstream(), *self._fail(UpstreamError("upstream answer too large"), now)]
        self._buffer += result.data
        return []

    def _on_buffer_closed(self, result: UpstreamClosed, now: float) -> list[Action]:
        assert self.flow is not None
        body = self.flow.complete(bytes(self._buffer))
        self.state = ExchangeState.DONE
        self.status = 200
        self.first_byte_at = now
        return [*self._whole_response(200, self.flow_json_headers(), body), self._record(now, "ok")]

    def _on_error_closed(self, result: UpstreamClosed, now: float) -> list[Action]:
        again = self._try_again(now, status=self._upstream_status, error=None)
        if again is not None:
            return again
        model = self.flow.model if self.flow else None
        err = error_from_upstream(self._upstream_status, bytes(self._buffer), model=model)
        return self._fail(err, now, outcome="upstream_error")

    def _on_stream_chunk(self, result: UpstreamChunkReceived, now: float) -> list[Action]:
        assert self.flow is not None
        out = self.flow.feed(result.data)
        actions: list[Action] = []
        if out:
            if self.first_byte_at is None:
                self.first_byte_at = now
            actions.append(SendBody(data=out))
        if self.flow.stream_done:
            actions += self._end_stream(now)
        return actions

    def _on_stream_closed(self, result: UpstreamClosed, now: float) -> list[Action]:
        assert self.flow is not None
        out = self.flow.finish()
        actions: list[Action] = [SendBody(data=out)] if out else []
        return actions + self._end_stream(now)

    def _on_stream_failed(self, result: UpstreamFailed, now: float) -> list[Action]:
        assert self.flow is not None
        self.gateway.health.record(self.backend, False, now)
        out = self.flow.fail(result.error)
        self.status = result.error.status_code
        actions: list[Action] = [SendBody(data=out)] if out else []
        self.state = ExchangeState.DONE
        return [*actions, EndResponse(keep_alive=False), self._record(now, "failed_mid_stream")]

    def _on_upstream_failed(self, result: UpstreamFailed, now: float) -> list[Action]:
        if not _before_send(result.error):
            self._maybe_generated = True
        self._retry_after = None
        again = self._try_again(now, status=None, error=result.error)
        if again is not None:
            return again
        return self._fail(result.error, now, outcome="upstream_error")

    def _on_client_gone(self, result: ClientDisconnected, now: float) -> list[Action]:
        if self.state is ExchangeState.AWAITING_UPSTREAM:
            self._maybe_generated = True  # the request may be on its way, or generating
        self._client_gone = True
        self.state = ExchangeState.DONE
        self.status = 499
        return [CancelUpstream(), self._record(now, "client_disconnected")]

    def _on_ledger_rows(self, result: UsageQueried, now: float) -> list[Action]:
        if result.error is not None:
            return self._fail_before_response(ServiceUnavailable(result.error), now)
        self.state = ExchangeState.DONE
        self.status = 200
        content_type, body = render_usage(self._ledger_query, result.rows)
        if content_type == b"application/json":
            return self._whole_response(200, self.flow_json_headers(), body)
        return self._whole_response(200, ((b"content-type", content_type),), body)

    def _on_metrics(self, result: MetricsCollected, now: float) -> list[Action]:
        self.state = ExchangeState.DONE
        self.status = 200
        return self._whole_response(200, ((b"content-type", result.content_type),), result.body)

    def _on_adapter_answer(
        self, result: OverviewCollected | AssetLoaded, now: float
    ) -> list[Action]:
        assert self._render is not None
        answer = self._render(result)
        self.state = ExchangeState.DONE
        self.status = answer.status
        return self._whole_response(answer.status, answer.headers, answer.body)

    def _on_ledger_client_gone(self, result: ClientDisconnected, now: float) -> list[Action]:
        self.state = ExchangeState.DONE
        return []

    def _on_client_gone_idle(self, result: ClientDisconnected, now: float) -> list[Action]:
        self._client_gone = True
        return []

    def _ignore(self, result: Result, now: float) -> list[Action]:
        return []

    # ---- helpers ---------------------------------------------------------

    def _end_stream(self, now: float) -> list[Action]:
        assert self.flow is not None
        self.state = ExchangeState.DONE
        outcome = "failed_mid_stream" if self.flow.stream_failed else "ok"
        return [EndResponse(), self._record(now, outcome)]

    def flow_json_headers(self) -> Headers:
        return ((b"content-type", b"application/json"),)

    def _headers(self, headers: Headers) -> Headers:
        return headers + self.response_headers_extra + self._rate_headers

    def _whole_response(self, status: int, headers: Headers, body: bytes) -> list[Action]:
        self._response_started = True
        start = StartResponse(
            status=status,
            headers=(*self._headers(headers), (b"content-length", str(len(body)).encode())),
        )
        if self._head_only:
            # HEAD: the same head as GET would get, and no body (RFC 9110 9.3.2).
            return [start, EndResponse()]
        return [start, SendBody(data=body), EndResponse()]

    def _fail_before_response(self, err: GatewayError, now: float) -> list[Action]:
        self._settle(0)  # admitted but never answered: refund the tokens
        self.state = ExchangeState.DONE
        self.status = err.status_code
        status, headers, body = error_response(self.surface, err)
        return self._whole_response(status, headers, body)

    def _fail(
        self, err: GatewayError, now: float, *, outcome: str = "upstream_error"
    ) -> list[Action]:
        """Report ``err`` in the right form for where the response stands."""
        if self.state is ExchangeState.DONE:
            return []
        if self._response_started:
            assert self.flow is not None
            out = self.flow.fail(err)
            self.state = ExchangeState.DONE
            self.status = err.status_code
            actions: list[Action] = [SendBody(data=out)] if out else []
            return [*actions, EndResponse(keep_alive=False), self._record(now, "failed_mid_stream")]
        if self._reached_backend:
            self._settle(self._limit_charge(outcome))  # before the refund below
        actions = self._fail_before_response(err, now)
        if self._reached_backend:
            actions.append(self._record(now, outcome))
        return actions

    def _limit_charge(self, outcome: str) -> int:
        """What the limits are charged for a request that reached a backend
        (docs/rate-limiting.md, "What is charged"): the backend's own counts when
        it gave them; else nothing when every attempt ended before the
        backend could generate (no connection, or a 4xx refusal); else, for
        a stream the client left, the prompt and the output streamed so far
        (the upstream is cancelled at once); else the reserved amount -- an
        upstream error after the send, a malformed answer, a first-byte
        timeout, a non-stream client disconnect or an answer without counts
        may all have generated."""
        assert self.flow is not None
        reported = self.flow.usage
        if reported is not None:
            return reported.total_tokens
        if not self._maybe_generated:
            return 0
        if outcome == "client_disconnected" and self._stream:
            return self.flow.estimate_usage().total_tokens
        return self._estimate

    def _record(self, now: float, outcome: str) -> RecordUsage:
        assert self.flow is not None
        usage = self.flow.usage
        reported = usage is not None
        if usage is None:
            usage = self.flow.estimate_usage()
        self._settle(self._limit_charge(outcome))
        ttft = None if self.first_byte_at is None else self.first_byte_at - self.started_at
        return RecordUsage(
            record=UsageRecord(
                request_id=self.request_id,
                time=self.started_at,
                key_id=self.identity.key_id,
                user=self.identity.user,
                model=self.flow.model or "",
                resolved_model=self.resolved_model,
                backend=self.backend,
                surface=self.surface.value,
                route=self.flow.route_name,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                status=self.status,
                latency=now - self.started_at,
                ttft=ttft,
                outcome=outcome,
                usage_reported=reported,
                attempts=self._attempts,
            )
        )


def _before_send(error: GatewayError) -> bool:
    """True for a failure known to happen before the backend could generate:
    no connection was made (refused, unresolvable, connect timeout)."""
    return error.code == "upstream_unreachable"


def _token_ceiling(specs: LimitSpecs) -> int | None:
    """The largest token charge the limits can ever admit (the smallest
    token burst or daily quota), or None when no token limit applies."""
    bounds = [spec.burst for spec in specs.rates if spec.unit is Unit.TOKENS]
    if specs.tokens_per_day is not None:
        bounds.append(specs.tokens_per_day)
    return min(bounds) if bounds else None


# Handlers take the specific result type their row names; Any keeps the
# table declarative without a cast per entry.
_Handler = Callable[[Exchange, Any, float], list[Action]]
_S = ExchangeState
_TRANSITIONS: dict[tuple[ExchangeState, type], _Handler] = {
    (_S.AWAITING_UPSTREAM, UpstreamResponseStarted): Exchange._on_head,
    (_S.AWAITING_UPSTREAM, UpstreamFailed): Exchange._on_upstream_failed,
    (_S.AWAITING_UPSTREAM, ClientDisconnected): Exchange._on_client_gone,
    (_S.BUFFERING, UpstreamChunkReceived): Exchange._on_buffer_chunk,
    (_S.BUFFERING, UpstreamClosed): Exchange._on_buffer_closed,
    (_S.BUFFERING, UpstreamFailed): Exchange._on_upstream_failed,
    (_S.BUFFERING, ClientDisconnected): Exchange._on_client_gone,
    (_S.BUFFERING_ERROR, UpstreamChunkReceived): Exchange._on_buffer_chunk,
    (_S.BUFFERING_ERROR, UpstreamClosed): Exchange._on_error_closed,
    (_S.BUFFERING_ERROR, UpstreamFailed): Exchange._on_upstream_failed,
    (_S.BUFFERING_ERROR, ClientDisconnected): Exchange._on_client_gone,
    (_S.STREAMING, UpstreamChunkReceived): Exchange._on_stream_chunk,
    (_S.STREAMING, UpstreamClosed): Exchange._on_stream_closed,
    (_S.STREAMING, UpstreamFailed): Exchange._on_stream_failed,
    (_S.STREAMING, ClientDisconnected): Exchange._on_client_gone,
    (_S.AWAITING_ADAPTER, UsageQueried): Exchange._on_ledger_rows,
    (_S.AWAITING_LIMITS, LimitsDecided): Exchange._on_limits_decided,
    (_S.AWAITING_LIMITS, ClientDisconnected): Exchange._on_limits_client_gone,
    (_S.AWAITING_ADAPTER, MetricsCollected): Exchange._on_metrics,
    (_S.AWAITING_ADAPTER, OverviewCollected): Exchange._on_adapter_answer,
    (_S.AWAITING_ADAPTER, AssetLoaded): Exchange._on_adapter_answer,
    (_S.AWAITING_ADAPTER, CatalogueRefreshed): Exchange._on_catalogue_refreshed,
    (_S.AWAITING_ADAPTER, ClientDisconnected): Exchange._on_ledger_client_gone,
    (_S.IDLE, ClientDisconnected): Exchange._on_client_gone_idle,
    (_S.DONE, UpstreamResponseStarted): Exchange._ignore,
    (_S.DONE, UpstreamChunkReceived): Exchange._ignore,
    (_S.DONE, UpstreamClosed): Exchange._ignore,
    (_S.DONE, UpstreamFailed): Exchange._ignore,
    (_S.DONE, ClientDisconnected): Exchange._ignore,
    (_S.DONE, UsageQueried): Exchange._ignore,
    (_S.DONE, MetricsCollected): Exchange._ignore,
    (_S.DONE, OverviewCollected): Exchange._ignore,
    (_S.DONE, AssetLoaded): Exchange._ignore,
    (_S.DONE, LimitsDecided): Exchange._ignore,
    (_S.DONE, CatalogueRefreshed): Exchange._ignore,
}
