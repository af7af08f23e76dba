"""The Exchange: one object per client request, walking the whole flow.

Theory of operation (cf. h11's ``Connection``): an adapter creates an
Exchange with a fresh request id, calls :meth:`Exchange.start` with the
parsed request and the current time, and executes the actions it gets back.
Whenever something happens -- the upstream answered, sent bytes, closed,
failed, or the client went away -- the adapter reports it with
:meth:`Exchange.handle` and executes the returned actions in order.

Each wait is a state, and one table (``exchange_table.py``) gives for
every (state, result type) pair the handler's name and the states it may
lead to; ``handle`` checks the handler's next state against it.  A pair
missing from the table is an adapter bug and raises
:class:`ExchangeStateError`.  Client and
upstream faults never raise: a handler's ``GatewayError`` ends in DONE (the
edge every state has, like h11's ERROR) with a rendered error response or
an in-band stream error.  Shared Gateway state changes only through actions
(actions.py, ``SharedWrite``); the retries live in ``backends/attempts.py``,
the limit lease in ``accounting/lease.py``.

Invariants, whatever the path:

* exactly one ``StartResponse`` and one ``EndResponse`` per request (unless
  the client disconnected, in which case nothing more is sent to it);
* a request that reached a backend produces exactly one ``RecordUsage``;
* an admitted request produces exactly one ``CommitLimits``;
* once DONE, further results are ignored (the response may end at Ollama's
  ``done`` line before the upstream socket closes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from .accounting.admission import DEFAULT_OUTPUT_CAP
from .accounting.lease import LimitLease, charge, lease_for
from .accounting.report import RequestFacts, RequestSummary, summary, usage_record
from .accounting.usage import TokenUsage
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
    StartResponse,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
    UsageQueried,
)
from .backends.attempts import Attempts
from .backends.catalogue import Route
from .backends.health import BreakerPreview, answered_alive
from .errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamError,
    error_from_upstream,
)
from .exchange_table import STARTS, ExchangeState, ExchangeStateError, Step, row
from .exchange_table import next_states as next_states
from .flows.base import (
    AdapterAnswer,
    Flow,
    LedgerQuery,
    LocalAnswer,
    MetricsScrape,
    StreamAnswer,
    UpstreamCall,
    WholeAnswer,
)
from .flows.context import FlowContext
from .gateway_view import GatewayView
from .http import Headers, IncomingRequest, Surface, header_value
from .identity import ANONYMOUS, Identity
from .limits import Decision, rate_limit_headers, render_denial
from .rendering import error_response, model_not_found, request_id_from, whole_response
from .routes import ParsedRequest, RouteDecl, surface_of

__all__ = ["Exchange", "ExchangeState", "ExchangeStateError", "GatewayView", "RequestSummary"]

# A non-stream upstream answer (or error body) larger than this is refused:
# every buffer has a limit.
MAX_UPSTREAM_BODY = 64 * 1024 * 1024
# The metrics label of a model the catalogue does not name (see RequestSummary).
UNKNOWN_MODEL_LABEL = "unknown"
_JSON: Headers = ((b"content-type", b"application/json"),)


_S = ExchangeState


class Exchange:
    """One client request.  Not thread-safe; one task drives it."""

    def __init__(self, gateway: GatewayView, *, request_id: str) -> None:
        self.gateway = gateway
        self.request_id = request_id
        self.trace_id = request_id
        self.state = _S.IDLE
        self.route: RouteDecl | None = None  # once the request is parsed
        self.model: str | None = None  # the catalogue's name, on model-addressed routes
        self._request: ParsedRequest | None = None  # what the route's parser made of the body
        self._context: FlowContext | None = None
        self.flow: Flow | None = None  # the route's, or the current attempt's
        # The current attempt's answer translator: exactly one, once planned.
        self._whole: WholeAnswer | None = None
        self._streamed: StreamAnswer | None = None
        self.identity: Identity = ANONYMOUS
        self.surface = Surface.GATEWAY
        self.method = ""
        self.status = 0
        self.backend = ""
        self.resolved_model = ""
        self.model_label = "-"
        self.started_at = 0.0
        self.first_byte_at: float | None = None
        self.limit_decision: Decision | None = None
        self._buffer = bytearray()
        self._upstream_status = 0
        self._attempts = Attempts(targets=())
        self._lease: LimitLease | None = None
        self._commit: CommitLimits | None = None  # owed at the end of this step
        self._breakers = BreakerPreview(gateway.health)
        self._rate_headers: Headers = ()
        self._ledger_query = UsageQuery()
        self._render: Callable[[OverviewCollected | AssetLoaded], LocalAnswer] | None = None

    # ---- public API ------------------------------------------------------

    def start(self, request: IncomingRequest, now: float) -> list[Action]:
        """Begin handling ``request``; returns the first actions."""
        if self.state is not _S.IDLE:
            raise ExchangeStateError(f"start() not valid in state {self.state.name}")
        self.started_at = now
        self.method = request.method
        # The client's x-request-id is for tracing only: echoed, logged and
        # sent upstream.  Limits, the ledger and completion ids key on the
        # gateway's own id, so reusing an id cannot replace another
        # request's lease or usage record.
        self.trace_id = request_id_from(request.headers, self.request_id)
        return self._step(lambda: self._start(request, now), STARTS, "start()", now)

    def handle(self, result: Result, now: float) -> list[Action]:
        """Feed one result; returns the actions it calls for."""
        found = row(self.state, type(result))
        if found is None:
            raise ExchangeStateError(
                f"{type(result).__name__} not valid in state {self.state.name}"
            )
        name, leads_to = found
        handler: Callable[[Result, float], Step] = getattr(self, name)
        return self._step(lambda: handler(result, now), leads_to, type(result).__name__, now)

    def summary(self, now: float) -> RequestSummary:
        """What happened, for the one log line and the metrics of a request.

        Holds no prompt text and no key, by construction.
        """
        usage = self._usage()
        if usage is None and self._attempts.made:
            usage = self._estimate_usage()
        return summary(self._facts(self.trace_id), usage, model_label=self.model_label, now=now)

    @property
    def response_headers_extra(self) -> Headers:
        return ((b"x-request-id", self.trace_id.encode("ascii")),)

    def _step(
        self, run: Callable[[], Step], leads_to: frozenset[ExchangeState], what: str, now: float
    ) -> list[Action]:
        self._breakers = BreakerPreview(self.gateway.health)
        try:
            state, actions = run()
        except GatewayError as err:
            state, actions = self._fail(err, now)
        else:
            if state not in leads_to:  # a bug in this module, caught by the table test
                raise ExchangeStateError(f"{what} in {self.state.name} led to {state.name}")
        self.state = state
        commit, self._commit = self._commit, None
        # The shared writes first: the adapter applies them before anything else.
        return [*self._breakers.events, *actions, *([commit] if commit else [])]

    # ---- start -----------------------------------------------------------

    def _start(self, request: IncomingRequest, now: float) -> Step:
        gateway = self.gateway
        self.surface = surface_of(request.path)
        # Before the body is parsed: an unauthenticated caller learns
        # nothing about what the gateway would accept.  (Adapters ask the
        # same question before reading the body: Gateway.refuse_head.)
        decl, self.identity = gateway.authorize(request.method, request.path, request.headers)
        if self.identity is not ANONYMOUS:
            request = replace(request, identity=self.identity)
        context = self._context = gateway.flow_context(self.request_id, now, self.identity)
        self.route = decl
        if decl.parse is not None:
            # The one parse of the body: a bad request never reaches a
            # backend, whatever its kind.
            parsed = self._request = decl.parse(request.body)
            self.model = model = decl.model_name(context.catalogue, parsed.model)
            self.model_label = UNKNOWN_MODEL_LABEL
            route = gateway.catalogue.resolve(model)
            if route is None and self.identity.may_use(model) and gateway.may_refresh_on_miss(now):
                # Perhaps the model was pulled since the last discovery.
                return _S.AWAITING_CATALOGUE, [RefreshCatalogue()]
            return self._route_to(route, model, now)
        assert decl.local is not None
        flow = self.flow = decl.local(context, request)
        plan = flow.plan(None, None)
        if isinstance(plan, LedgerQuery):
            self._ledger_query = plan.query
            return _S.AWAITING_LEDGER, [QueryUsage(query=plan.query)]
        if isinstance(plan, MetricsScrape):
            return _S.AWAITING_METRICS, [CollectMetrics()]
        if isinstance(plan, AdapterAnswer):
            self._render = plan.render
            return _S.AWAITING_ADAPTER_DATA, [plan.ask]
        if isinstance(plan, LocalAnswer):
            return self._answer(plan.status, plan.headers, plan.body)
        raise InternalError(f"{decl.name}: a model-less flow asked for an upstream")

    def _route_to(self, route: Route | None, model: str, now: float) -> Step:
        # The allow-list judges the model reached, not the spelling asked for.
        if route is None or not self.gateway.may_use(self.identity, route):
            raise model_not_found(self.surface, model)
        self.model_label = self.gateway.catalogue.known_name(route) or UNKNOWN_MODEL_LABEL
        self._attempts = Attempts.for_route(route)
        check = self._check_limits(route)
        if check is not None:
            return _S.AWAITING_LIMITS, [check]
        return self._attempt(0.0, now)

    def _on_catalogue_refreshed(self, result: CatalogueRefreshed, now: float) -> Step:
        assert self.model is not None
        model = self.model
        return self._route_to(self.gateway.catalogue.resolve(model), model, now)

    # ---- rate limits ------------------------------------------------------

    def _check_limits(self, route: Route) -> CheckLimits | None:
        """Ask for admission, charging an upper-bound estimate (or None when
        no limit applies to this request)."""
        gateway = self.gateway
        assert self.route is not None and self._request is not None
        if not gateway.limits_on or not self.route.limited:
            return None
        specs = gateway.limit_specs(self.identity.user, route)
        if specs.empty:
            return None
        self._lease = lease_for(
            # From the body as the route's parser decoded it on arrival.
            decoded=self._request.decoded,
            route=self.route.name,
            generates=self.route.generates,
            specs=specs,
            key=self.identity.user,
            request_id=self.request_id,
            default_output_cap=gateway.config.server.default_max_tokens or DEFAULT_OUTPUT_CAP,
        )
        return self._lease.check()

    def _on_limits_decided(self, result: LimitsDecided, now: float) -> Step:
        decision = result.decision
        self.limit_decision = decision
        assert self._lease is not None
        if not decision.allowed:
            status, headers, body = render_denial(
                decision, surface=self.surface, model=self.model or "", organization="gateway"
            )
            return self._answer(status, headers, body)
        self._lease = self._lease.admit()
        self._rate_headers = rate_limit_headers(decision.headers)
        return self._attempt(0.0, now)

    def _on_limits_client_gone(self, result: ClientDisconnected, now: float) -> Step:
        # The decision is still coming; if it admits, the lease is released then.
        self.status = 499
        return _S.AWAITING_LIMITS_CLIENT_GONE, []

    def _on_limits_decided_client_gone(self, result: LimitsDecided, now: float) -> Step:
        self.limit_decision = result.decision
        if result.decision.allowed and self._lease is not None:
            self._lease = self._lease.admit()
            self._settle(0)  # never sent: refund the tokens, free the slot
        return _S.DONE, []

    def _settle(self, actual: int) -> None:
        """Owe the one CommitLimits of an admitted request."""
        if self._lease is not None:
            self._lease, commit = self._lease.settle(actual)
            self._commit = commit or self._commit

    # ---- attempts, retries and fallbacks ---------------------------------

    def _attempt(self, delay: float, now: float) -> Step:
        """Plan the current target and ask for it to be sent."""
        assert self.route is not None and self._context is not None
        self._attempts, delay, free = self._attempts.choose(self._breakers, now, delay)
        route = self._attempts.current
        self.backend = route.backend
        if not free:
            raise self._attempts.unavailable(self._breakers, now)
        backend = self.gateway.config.backend(route.backend)
        self.resolved_model = route.target
        # A fresh flow per attempt (no state from a failed attempt survives),
        # for this backend's kind: a fallback may be of another kind.
        make = self.route.flow or self.gateway.flow_for(backend.kind, self.route.name)
        if make is None:
            raise InvalidRequest(
                f"backend {backend.name!r} of kind {backend.kind!r} cannot serve {self.route.name}"
            )
        try:
            assert self.model is not None and self._request is not None
            self.flow = make(self._context, self._request, self.model)
            plan = self.flow.plan(route, backend)
        except TypeError:
            # orjson encodes 254 levels of nesting but parses 1024: a body
            # in between validates and then cannot be re-encoded.
            raise InvalidRequest("The request JSON is nested too deeply.") from None
        if not isinstance(plan, UpstreamCall):
            if isinstance(plan, LocalAnswer):
                return self._answer(plan.status, plan.headers, plan.body)
            raise InternalError(f"{self.route.name}: unexpected plan for a model route")
        self._whole, self._streamed = plan.whole, plan.stream
        self._attempts = self._attempts.sent(stream=plan.stream is not None)
        self._buffer = bytearray()
        headers = self.gateway.upstream_headers(self.backend, self.trace_id)
        body = plan.body if self._lease is None else self._lease.capped(backend.kind, plan.body)
        call = plan.send(backend, headers=headers, body=body, delay=delay)
        return _S.AWAITING_UPSTREAM, [call]

    def _try_again(
        self, now: float, *, status: int | None, error: GatewayError | None
    ) -> Step | None:
        """Another attempt, if the policy allows one (nothing was sent yet)."""
        alive = answered_alive(status, failed=error is not None)
        self._breakers.record(self.backend, alive, now)
        backend = self.gateway.config.backend(self.backend)
        after = self._attempts.after_failure(
            status=status,
            error=error,
            max_retries=backend.max_retries,
            max_attempts=self.gateway.config.server.max_attempts,
            backoff_base=backend.retry_backoff,
            rand=self.gateway.random(),
        )
        if after is None:
            return None
        self._attempts, delay = after
        return self._attempt(delay, now)

    # ---- transitions -----------------------------------------------------

    def _on_head(self, result: UpstreamResponseStarted, now: float) -> Step:
        retry_after = header_value(result.headers, b"retry-after")
        self._attempts = self._attempts.answered(result.status, retry_after)
        self._upstream_status = result.status
        if result.status >= 400:
            return _S.BUFFERING_ERROR, []
        self._breakers.record(self.backend, True, now)
        if not self._attempts.stream:
            return _S.BUFFERING, []
        assert self._streamed is not None
        self.status = 200
        headers = self._headers(self._streamed.headers)
        return _S.STREAMING, [StartResponse(status=200, headers=headers)]

    def _on_buffer_chunk(self, result: UpstreamChunkReceived, now: float) -> Step:
        if len(self._buffer) + len(result.data) > MAX_UPSTREAM_BODY:
            state, actions = self._fail(UpstreamError("upstream answer too large"), now)
            return state, [CancelUpstream(), *actions]
        self._buffer += result.data
        return self.state, []

    def _on_buffer_closed(self, result: UpstreamClosed, now: float) -> Step:
        assert self._whole is not None
        body = self._whole.complete(bytes(self._buffer))
        self.first_byte_at = now
        state, actions = self._answer(200, _JSON, body)
        return state, [*actions, self._record(now, "ok")]

    def _on_error_closed(self, result: UpstreamClosed, now: float) -> Step:
        again = self._try_again(now, status=self._upstream_status, error=None)
        if again is not None:
            return again
        err = error_from_upstream(self._upstream_status, bytes(self._buffer), model=self.model)
        return self._fail(err, now, outcome="upstream_error")

    def _on_stream_chunk(self, result: UpstreamChunkReceived, now: float) -> Step:
        assert self._streamed is not None
        out = self._streamed.feed(result.data)
        actions: list[Action] = []
        if out:
            if self.first_byte_at is None:
                self.first_byte_at = now
            actions.append(SendBody(data=out))
        if self._streamed.done:
            return self._end_stream(now, actions)
        return _S.STREAMING, actions

    def _on_stream_closed(self, result: UpstreamClosed, now: float) -> Step:
        assert self._streamed is not None
        out = self._streamed.finish()
        return self._end_stream(now, [SendBody(data=out)] if out else [])

    def _on_stream_failed(self, result: UpstreamFailed, now: float) -> Step:
        self._breakers.record(self.backend, False, now)
        return self._fail(result.error, now)

    def _on_upstream_failed(self, result: UpstreamFailed, now: float) -> Step:
        self._attempts = self._attempts.failed(result.error)
        again = self._try_again(now, status=None, error=result.error)
        if again is not None:
            return again
        return self._fail(result.error, now, outcome="upstream_error")

    def _on_client_gone(self, result: ClientDisconnected, now: float) -> Step:
        if self.state is _S.AWAITING_UPSTREAM:
            self._attempts = self._attempts.left_early()
        self.status = 499
        return _S.DONE, [CancelUpstream(), self._record(now, "client_disconnected")]

    def _on_ledger_rows(self, result: UsageQueried, now: float) -> Step:
        if result.error is not None:
            return self._fail_before_response(ServiceUnavailable(result.error))
        content_type, body = render_usage(self._ledger_query, result.rows)
        if content_type == b"application/json":
            return self._answer(200, _JSON, body)
        return self._answer(200, ((b"content-type", content_type),), body)

    def _on_metrics(self, result: MetricsCollected, now: float) -> Step:
        return self._answer(200, ((b"content-type", result.content_type),), result.body)

    def _on_adapter_data(self, result: OverviewCollected | AssetLoaded, now: float) -> Step:
        assert self._render is not None
        answer = self._render(result)
        return self._answer(answer.status, answer.headers, answer.body)

    def _on_client_gone_early(self, result: ClientDisconnected, now: float) -> Step:
        # Nothing reached a backend yet: nothing to cancel or record.
        self.status = 499
        return _S.DONE, []

    def _stay(self, result: Result, now: float) -> Step:
        return self.state, []

    # ---- helpers ---------------------------------------------------------

    def _end_stream(self, now: float, actions: list[Action]) -> Step:
        assert self._streamed is not None
        outcome = "failed_mid_stream" if self._streamed.failed else "ok"
        return _S.DONE, [*actions, EndResponse(), self._record(now, outcome)]

    def _headers(self, headers: Headers) -> Headers:
        return headers + self.response_headers_extra + self._rate_headers

    def _answer(self, status: int, headers: Headers, body: bytes) -> Step:
        self.status = status
        head_only = self.method == "HEAD"
        return _S.DONE, whole_response(status, self._headers(headers), body, head_only=head_only)

    def _fail_before_response(self, err: GatewayError) -> Step:
        self._settle(0)  # admitted but never answered: refund the tokens
        state, actions = self._answer(*error_response(self.surface, err))
        self.status = err.status_code
        return state, actions

    def _fail(self, err: GatewayError, now: float, *, outcome: str = "upstream_error") -> Step:
        """Report ``err`` in the right form for where the response stands."""
        if self.state is _S.DONE:
            return _S.DONE, []
        if self.state is _S.STREAMING:
            assert self._streamed is not None
            out = self._streamed.fail(err)
            self.status = err.status_code
            actions: list[Action] = [SendBody(data=out)] if out else []
            end = EndResponse(keep_alive=False)
            return _S.DONE, [*actions, end, self._record(now, "failed_mid_stream")]
        reached = self._attempts.made > 0
        if reached:
            self._settle(self._limit_charge(outcome))  # before the refund below
        state, actions = self._fail_before_response(err)
        return state, [*actions, self._record(now, outcome)] if reached else actions

    def _limit_charge(self, outcome: str) -> int:
        """What the limits are charged for a request that reached a backend
        (accounting/lease.py, ``charge``)."""
        if self._lease is None or not self._lease.open:
            return 0
        reported = self._usage()
        return charge(
            reported=None if reported is None else reported.total_tokens,
            maybe_generated=self._attempts.maybe_generated,
            left_stream=outcome == "client_disconnected" and self._attempts.stream,
            streamed=lambda: self._estimate_usage().total_tokens,
            estimate=self._lease.estimate,
        )

    def _facts(self, request_id: str) -> RequestFacts:
        return RequestFacts(
            request_id=request_id,
            identity=self.identity,
            surface=self.surface.value,
            route=self.route.name if self.route is not None else "unknown",
            model=self.model or "",
            backend=self.backend,
            resolved_model=self.resolved_model,
            status=self.status or 0,
            started_at=self.started_at,
            first_byte_at=self.first_byte_at,
            attempts=self._attempts.made,
        )

    def _usage(self) -> TokenUsage | None:
        """What the current attempt's backend reported, if anything."""
        answer = self._whole if self._whole is not None else self._streamed
        return answer.usage if answer is not None else None

    def _estimate_usage(self) -> TokenUsage:
        answer = self._whole if self._whole is not None else self._streamed
        return answer.estimate_usage() if answer is not None else TokenUsage()

    def _record(self, now: float, outcome: str) -> RecordUsage:
        usage = self._usage()
        reported = usage is not None
        if usage is None:
            usage = self._estimate_usage()
        self._settle(self._limit_charge(outcome))
        facts = self._facts(self.request_id)
        return usage_record(facts, usage, reported=reported, outcome=outcome, now=now)
