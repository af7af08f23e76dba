"""One attempt at a backend: its flow, its plan, and its answer.

Theory of operation: each attempt gets a fresh flow, built for the kind of
the backend it goes to (a fallback may be of another kind), and
:func:`plan_attempt` returns it with its plan.  An ``UpstreamCall`` carries
exactly one translator of the backend's answer (``base.py``); the Exchange
keeps one :class:`AttemptAnswer` per attempt: that translator, the status
the backend answered with, and the body of a whole or error answer,
collected until the backend closes and bounded by ``MAX_UPSTREAM_BODY``
(every buffer has a limit).  It says what the attempt used -- the backend's
own counts when it reported them, an estimate otherwise -- for the usage
record and the limits' charge.  A stream's chunks go straight to
``stream``: the per-chunk path adds no call here; a stream that cannot go
on ends with :meth:`AttemptAnswer.fail_stream`.
"""

from __future__ import annotations

from typing import Any

from ..accounting.usage import TokenUsage
from ..actions import Action, EndResponse, SendBody
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..errors import GatewayError, InternalError, InvalidRequest, error_from_upstream
from .base import Flow, LocalAnswer, StreamAnswer, UpstreamCall, WholeAnswer
from .context import FlowConstructor, FlowContext

__all__ = ["MAX_UPSTREAM_BODY", "AttemptAnswer", "plan_attempt"]

# A whole upstream answer (or error body) larger than this is refused.
MAX_UPSTREAM_BODY = 64 * 1024 * 1024


def plan_attempt(
    make: FlowConstructor | None,
    context: FlowContext,
    request: Any,
    model: str,
    route: Route,
    backend: BackendConfig,
    route_name: str,
) -> tuple[Flow, UpstreamCall | LocalAnswer]:
    """The flow ``make`` builds from ``context``, the typed ``request`` and
    the catalogue's ``model`` for this attempt at ``route`` on ``backend``,
    and its plan (``make``: the flow constructor for the backend's kind and
    ``route_name``, None when that kind cannot serve it)."""
    if make is None:
        raise InvalidRequest(
            f"backend {backend.name!r} of kind {backend.kind!r} cannot serve {route_name}"
        )
    try:
        flow = make(context, request, model)
        plan = flow.plan(route, backend)
    except TypeError:
        # orjson encodes 254 levels of nesting but parses 1024: a body
        # in between validates and then cannot be re-encoded.
        raise InvalidRequest("The request JSON is nested too deeply.") from None
    if not isinstance(plan, UpstreamCall | LocalAnswer):
        raise InternalError(f"{route_name}: unexpected plan for a model route")
    return flow, plan


class AttemptAnswer:
    """One attempt's translator, status and bounded body; before any attempt,
    one with no translator (no usage, an estimate of nothing)."""

    __slots__ = ("_body", "_limit", "status", "stream", "whole")

    def __init__(
        self,
        *,
        whole: WholeAnswer | None = None,
        stream: StreamAnswer | None = None,
        limit: int = MAX_UPSTREAM_BODY,
    ) -> None:
        self.whole = whole
        self.stream = stream
        self.status = 0  # the backend's, once its head arrived
        self._body = bytearray()
        self._limit = limit

    @classmethod
    def of(cls, call: UpstreamCall) -> AttemptAnswer:
        return cls(whole=call.whole, stream=call.stream)

    def collect(self, data: bytes) -> bool:
        """Add ``data`` to the body; False, keeping nothing, when the body
        would grow past the limit."""
        if len(self._body) + len(data) > self._limit:
            return False
        self._body += data
        return True

    def complete(self) -> bytes:
        """The client's body, from the whole answer collected."""
        assert self.whole is not None
        return self.whole.complete(bytes(self._body))

    def fail_stream(self, error: GatewayError) -> list[Action]:
        """The rest of a started stream that fails with ``error``: its
        in-band error event, if the dialect has one, and the end of the
        response, after which the connection is closed (the client cannot
        tell a cut stream from a complete one otherwise)."""
        assert self.stream is not None
        out = self.stream.fail(error)
        end = EndResponse(keep_alive=False)
        return [SendBody(data=out), end] if out else [end]

    def error(self, *, model: str | None, retry_after: float | None = None) -> GatewayError:
        """The error to report for the error answer collected (with the
        backend's Retry-After, in seconds, when it gave one)."""
        body = bytes(self._body)
        return error_from_upstream(self.status, body, model=model, retry_after=retry_after)

    @property
    def usage(self) -> TokenUsage | None:
        """What the backend reported, if anything."""
        answer = self.whole if self.whole is not None else self.stream
        return answer.usage if answer is not None else None

    def estimate_usage(self) -> TokenUsage:
        answer = self.whole if self.whole is not None else self.stream
        return answer.estimate_usage() if answer is not None else TokenUsage()

    def used(self) -> tuple[TokenUsage, bool]:
        """What to record, and whether the backend reported it."""
        usage = self.usage
        return (usage, True) if usage is not None else (self.estimate_usage(), False)
