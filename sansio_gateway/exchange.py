"""The Exchange: one object per client request, walking the whole flow.

Theory of operation (cf. h11's ``Connection``): an adapter creates an
Exchange with a fresh request id, calls :meth:`Exchange.start` with the
request and the current time, and executes the actions it gets back.
Whatever happens next -- the upstream answered, sent bytes, closed, failed,
or the client left -- it reports with :meth:`Exchange.handle`, and executes
the returned actions in order.  Each wait is a state; the table
(``exchange_table.py``) names the handler of every (state, result type)
pair and the states it may lead to, and a pair it lacks raises
:class:`ExchangeStateError`.  Client and upstream faults never raise: they
end in DONE with a rendered error.  The handlers delegate what is not the
machine's own: the targets and retries (``backends/attempts.py``), each
attempt's flow and answer (``flows/attempt.py``), the limits
(``accounting/limit_account.py``), a local route's wait (``local/pending.py``).
What holds on every path: docs/architecture.md, "What always holds".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .accounting.limit_account import LimitAccount
from .accounting.report import RequestSummary, facts_of, summary, usage_record
from .actions import (
    Action,
    CancelUpstream,
    CatalogueRefreshed,
    ClientDisconnected,
    EndResponse,
    LimitsDecided,
    RecordUsage,
    RefreshCatalogue,
    Result,
    SendBody,
    StartResponse,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamResponseStarted,
    send_body,
)
from .backends.attempts import Attempts
from .backends.health import BreakerPreview, answered_alive
from .backends.reach import UNKNOWN_MODEL_LABEL, reach, worth_a_refresh
from .errors import GatewayError, UpstreamError
from .exchange_table import (
    AWAITS,
    STARTS,
    STREAMED,
    ExchangeState,
    ExchangeStateError,
    Step,
    row,
)
from .exchange_table import next_states as next_states
from .flows.attempt import AttemptAnswer, plan_attempt
from .flows.base import JSON_HEADERS, Flow, LocalAnswer, StreamAnswer
from .flows.context import FlowContext
from .gateway_view import GatewayView
from .http import Headers, IncomingRequest, Surface, header_value
from .identity import ANONYMOUS, Identity
from .limits import Decision
from .local.pending import LocalResult, Pending, local_step
from .rendering import error_response, request_id_from, whole_response
from .routes import ParsedRequest, RouteDecl, surface_of
from .tracing import forwarded_trace_context

__all__ = ["Exchange", "ExchangeState", "ExchangeStateError", "GatewayView", "RequestSummary"]

_S = ExchangeState
# Before any attempt (immutable, so one value serves every Exchange).
_NO_ATTEMPTS = Attempts(targets=())


class Exchange:
    """One client request.  Not thread-safe; one task drives it."""

    def __init__(self, gateway: GatewayView, *, request_id: str) -> None:
        self.gateway = gateway
        self.request_id = request_id
        self.trace_id = request_id
        self.state = _S.IDLE
        self.route: RouteDecl | None = None  # once the request is parsed
        self.model: str | None = None  # the catalogue's name, on model-addressed routes
        self.flow: Flow | None = None  # the route's, or the current attempt's
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
        self._request: ParsedRequest | None = None  # what the route's parser made of the body
        self._context: FlowContext | None = None
        self._attempts = _NO_ATTEMPTS
        self._answer = AttemptAnswer()  # the current attempt's
        self._limits = LimitAccount(request_id)
        self._pending: Pending | None = None  # a local route's wait on the adapter
        self._preview: BreakerPreview | None = None  # the current step's, once it reads one
        self._trace_context: Headers = ()  # the client's, passed on to every attempt

    # ---- public API ------------------------------------------------------

    def start(self, request: IncomingRequest, now: float) -> list[Action]:
        """Begin handling ``request``; returns the first actions."""
        if self.state is not _S.IDLE:
            raise ExchangeStateError(f"start() not valid in state {self.state.name}")
        self.started_at = now
        self.method = request.method
        # The client's ids, for tracing only: its x-request-id (echoed, sent
        # upstream) and its W3C trace context (passed on unchanged).
        self.trace_id = request_id_from(request.headers, self.request_id)
        self._trace_context = forwarded_trace_context(request.headers)
        return self._step(self._start, request, STARTS, "start()", now)

    def handle(self, result: Result, now: float) -> list[Action]:
        """Feed one result; returns the actions it calls for."""
        kind = type(result)
        if kind is UpstreamChunkReceived and self.state is _S.STREAMING:
            # Hot path, every stream chunk: the table's row, known.
            return self._step(self._on_stream_chunk, result, STREAMED, kind, now)
        found = row(self.state, kind)
        if found is None:
            raise ExchangeStateError(f"{kind.__name__} not valid in state {self.state.name}")
        name, leads_to = found
        handler: Callable[[Any, float], Step] = getattr(self, name)
        return self._step(handler, result, leads_to, kind, now)

    def summary(self, now: float) -> RequestSummary:
        """What happened, for the one log line and the metrics of a request.

        Holds no prompt text and no key, by construction.
        """
        usage, _ = self._answer.used()
        facts = facts_of(self, request_id=self.trace_id, attempts=self._attempts.made)
        return summary(facts, usage, model_label=self.model_label, now=now)

    @property
    def response_headers_extra(self) -> Headers:
        return ((b"x-request-id", self.trace_id.encode("ascii")),)

    @property
    def _breakers(self) -> BreakerPreview:
        # Built on first use in a step: most steps (every stream chunk)
        # neither choose a target nor record an outcome.
        preview = self._preview
        if preview is None:
            preview = self._preview = BreakerPreview(self.gateway.health)
        return preview

    def _step(
        self,
        handler: Callable[[Any, float], Step],
        given: object,
        leads_to: frozenset[ExchangeState],
        what: type | str,
        now: float,
    ) -> list[Action]:
        """Run ``handler(given, now)`` as one step (``what``: the result's
        type, or the call, for errors)."""
        self._preview = None
        try:
            state, actions = handler(given, now)
        except GatewayError as err:
            state, actions = self._fail(err, now)
        else:
            if state not in leads_to:  # a bug in this module, caught by the table test
                name = what if isinstance(what, str) else what.__name__
                raise ExchangeStateError(f"{name} in {self.state.name} led to {state.name}")
        self.state = state
        # The shared writes first: the adapter applies them before anything
        # else.  The limits' one commit last, once the step has settled it.
        preview = self._preview
        if preview is None and self._limits.owed is None:
            return actions  # the per-chunk path: nothing to add
        events = preview.events if preview is not None else ()
        return [*events, *actions, *self._limits.take()]

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
        context = self._context = gateway.flow_context(
            self.request_id, now, self.identity, decl.forwarded(request.headers)
        )
        self.route = decl
        if decl.parse is None:
            assert decl.local is not None
            self.flow = decl.local(context, request)
            return self._local(local_step(self.flow.plan(None, None), decl.name))
        # The one parse of the body: a bad request never reaches a backend,
        # whatever its kind.
        parsed = self._request = decl.parse(request.body)
        self.model = model = decl.model_name(context.catalogue, parsed.model)
        self.model_label = UNKNOWN_MODEL_LABEL
        refresh = worth_a_refresh(gateway.catalogue, self.identity, model)
        if refresh and gateway.may_refresh_on_miss(now):
            return _S.AWAITING_CATALOGUE, [RefreshCatalogue()]
        return self._route_to(now)

    def _route_to(self, now: float) -> Step:
        decl, parsed, model, gateway = self.route, self._request, self.model, self.gateway
        assert decl is not None and parsed is not None and model is not None
        route, self.model_label = reach(
            gateway.catalogue, self.identity, model, self.surface, may_use=gateway.may_use
        )
        self._attempts = Attempts.for_route(route)
        user = self.identity.user
        check = self._limits.ask(gateway, decl, parsed.decoded, key=user, target=route)
        if check is not None:
            return _S.AWAITING_LIMITS, [check]
        return self._attempt(0.0, now)

    def _on_catalogue_refreshed(self, result: CatalogueRefreshed, now: float) -> Step:
        return self._route_to(now)

    def _local(self, step: LocalAnswer | Pending) -> Step:
        """Answer locally now, or ask the adapter for what the answer needs."""
        if isinstance(step, LocalAnswer):
            return self._respond(step.status, step.headers, step.body)
        self._pending = step
        return AWAITS[type(step.ask)], [step.ask]

    def _on_local_data(self, result: LocalResult, now: float) -> Step:
        assert self._pending is not None
        return self._local(self._pending.answer(result))

    # ---- rate limits ------------------------------------------------------

    def _on_limits_decided(self, result: LimitsDecided, now: float) -> Step:
        self.limit_decision = result.decision
        model = self.model or ""
        denied = self._limits.decided(result.decision, surface=self.surface, model=model)
        return self._attempt(0.0, now) if denied is None else self._respond(*denied)

    def _on_limits_client_gone(self, result: ClientDisconnected, now: float) -> Step:
        # The decision is still coming; if it admits, the lease is released then.
        self.status = 499
        return _S.AWAITING_LIMITS_CLIENT_GONE, []

    def _on_limits_decided_client_gone(self, result: LimitsDecided, now: float) -> Step:
        self.limit_decision = result.decision
        self._limits.decided_after_leaving(result.decision)
        return _S.DONE, []

    # ---- attempts, retries and fallbacks ---------------------------------

    def _attempt(self, delay: float, now: float) -> Step:
        """Plan the current target and ask for it to be sent."""
        decl, model = self.route, self.model
        assert decl is not None and self._context is not None and model is not None
        here = self.gateway.answered_here(decl.name)  # no breaker stops an estimate
        self._attempts, delay, free = self._attempts.choose(self._breakers, now, delay, here)
        route = self._attempts.current
        self.backend = route.backend
        if not free:
            raise self._attempts.unavailable(self._breakers, now)
        backend = self.gateway.config.backend(route.backend)
        self.resolved_model = route.target
        # A fresh flow per attempt (no state from a failed attempt survives),
        # for this backend's kind: a fallback may be of another kind.
        make = decl.flow or self.gateway.flow_for(backend.kind, decl.name)
        context, parsed = self._context, self._request
        self.flow, plan = plan_attempt(make, context, parsed, model, route, backend, decl.name)
        if isinstance(plan, LocalAnswer):
            self._limits.settle(0)  # nothing reached a backend: refund an admission
            return self._local(plan)
        self._answer = AttemptAnswer.of(plan)
        self._attempts = self._attempts.sent(stream=plan.stream is not None)
        headers = self.gateway.upstream_headers(self.backend, self.trace_id) + self._trace_context
        body = self._limits.capped(backend.kind, plan.body)
        why = self._attempts.reason
        send = plan.send(backend, headers=headers, body=body, delay=delay, reason=why)
        return _S.AWAITING_UPSTREAM, [send]

    def _try_again(
        self, now: float, *, status: int | None, error: GatewayError | None
    ) -> Step | None:
        """Another attempt, if the policy allows one (nothing was sent yet)."""
        alive = answered_alive(status, failed=error is not None)
        self._breakers.record(self.backend, alive, now)
        config, rand = self.gateway.config, self.gateway.random()
        after = self._attempts.retry(status=status, error=error, config=config, rand=rand)
        if after is None:
            return None
        self._attempts, delay = after
        return self._attempt(delay, now)

    # ---- the upstream's answer --------------------------------------------

    def _on_head(self, result: UpstreamResponseStarted, now: float) -> Step:
        retry_after = header_value(result.headers, b"retry-after")
        self._attempts = self._attempts.answered(result.status, retry_after)
        self._answer.status = result.status
        if result.status >= 400:
            return _S.BUFFERING_ERROR, []
        self._breakers.record(self.backend, True, now)
        stream = self._answer.stream
        if stream is None:
            return _S.BUFFERING, []
        self.status = 200
        return _S.STREAMING, [StartResponse(status=200, headers=self._headers(stream.headers))]

    def _on_buffer_chunk(self, result: UpstreamChunkReceived, now: float) -> Step:
        if not self._answer.collect(result.data):
            state, actions = self._fail(UpstreamError("upstream answer too large"), now)
            return state, [CancelUpstream(), *actions]
        return self.state, []

    def _on_buffer_closed(self, result: UpstreamClosed, now: float) -> Step:
        body = self._answer.complete()
        self.first_byte_at = now
        state, actions = self._respond(200, JSON_HEADERS, body)
        return state, [*actions, self._record(now, "ok")]

    def _on_error_closed(self, result: UpstreamClosed, now: float) -> Step:
        again = self._try_again(now, status=self._answer.status, error=None)
        if again is not None:
            return again
        err = self._answer.error(model=self.model, retry_after=self._attempts.retry_after)
        return self._fail(err, now, outcome="upstream_error")

    def _on_stream_chunk(self, result: UpstreamChunkReceived, now: float) -> Step:
        stream = self._answer.stream
        assert stream is not None
        out = stream.feed(result.data)
        actions: list[Action] = []
        if out:
            if self.first_byte_at is None:
                self.first_byte_at = now
            actions.append(send_body(out))
        if stream.done:
            return self._end_stream(stream, now, actions)
        return _S.STREAMING, actions

    def _on_stream_closed(self, result: UpstreamClosed, now: float) -> Step:
        stream = self._answer.stream
        assert stream is not None
        out = stream.finish()
        return self._end_stream(stream, now, [SendBody(data=out)] if out else [])

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

    def _on_client_gone_early(self, result: ClientDisconnected, now: float) -> Step:
        # Nothing reached a backend yet: nothing to cancel or record.
        self.status = 499
        return _S.DONE, []

    def _stay(self, result: Result, now: float) -> Step:
        return self.state, []

    # ---- helpers ---------------------------------------------------------

    def _end_stream(self, stream: StreamAnswer, now: float, actions: list[Action]) -> Step:
        outcome = "failed_mid_stream" if stream.failed else "ok"
        return _S.DONE, [*actions, EndResponse(), self._record(now, outcome)]

    def _headers(self, headers: Headers) -> Headers:
        return headers + self.response_headers_extra + self._limits.headers

    def _respond(self, status: int, headers: Headers, body: bytes) -> Step:
        self.status = status
        head_only = self.method == "HEAD"
        return _S.DONE, whole_response(status, self._headers(headers), body, head_only=head_only)

    def _fail(self, err: GatewayError, now: float, *, outcome: str = "upstream_error") -> Step:
        """Report ``err`` in the right form for where the response stands."""
        if self.state is _S.DONE:
            return _S.DONE, []
        if self.state is _S.STREAMING:
            self.status = err.status_code
            return _S.DONE, [*self._answer.fail_stream(err), self._record(now, "failed_mid_stream")]
        state, actions = self._respond(*error_response(self.surface, err))
        self.status = err.status_code
        if not self._attempts.made:
            self._limits.settle(0)  # admitted but never sent: refund the tokens
            return state, actions
        return state, [*actions, self._record(now, outcome)]

    def _record(self, now: float, outcome: str) -> RecordUsage:
        usage, reported = self._answer.used()
        client_left = outcome == "client_disconnected"
        self._limits.charge_used(self._answer, self._attempts, client_left=client_left)
        facts = facts_of(self, request_id=self.request_id, attempts=self._attempts.made)
        return usage_record(facts, usage, reported=reported, outcome=outcome, now=now)
