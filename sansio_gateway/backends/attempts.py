"""The upstream attempts of one request: where it goes now, and next.

Theory of operation: a request has an ordered list of targets (the
resolved route, then its fallbacks; ``retry.targets_for``).
:meth:`Attempts.choose` picks the current one, skipping backends whose
breaker is open while another target remains; :meth:`Attempts.sent` counts
an attempt; after a failure before the client saw a byte,
:meth:`Attempts.after_failure` applies the retry policy (``retry.next_step``)
and says where the next attempt goes, if anywhere (:meth:`Attempts.retry`:
with the knobs the config sets for the current target).  ``reason`` says why
the current attempt is made, for its ``SendUpstream``: "first", "retry" (the
same target again) or "fallback" (a later target than the attempt before,
or than the route's own for a first attempt that skipped an open breaker).

The value also keeps what the limits' charge rule needs to know about all
attempts together: whether any may have reached a backend that could
generate (docs/rate-limiting.md, "What is charged").  Immutable; every
method returns a new value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..actions import AttemptReason
from ..config import GatewayConfig
from ..errors import GatewayError, ServiceUnavailable
from .catalogue import Route
from .health import BreakerPreview
from .retry import next_step, parse_retry_after, targets_for

__all__ = ["Attempts", "before_send"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempts:
    targets: tuple[Route, ...]
    index: int = 0
    retries_on_target: int = 0
    made: int = 0
    reason: AttemptReason = "first"  # why the current attempt is made
    retry_after: float | None = None  # the last error answer's Retry-After
    stream: bool = False  # the attempt in flight asked for a stream
    # True once an attempt may have reached a backend that could generate:
    # it answered, or failed in a way not known to precede the send.
    maybe_generated: bool = False

    @classmethod
    def for_route(cls, route: Route) -> Attempts:
        return cls(targets=tuple(targets_for(route)))

    @property
    def current(self) -> Route:
        return self.targets[self.index]

    def choose(
        self,
        breakers: BreakerPreview,
        now: float,
        delay: float,
        answered_here: frozenset[str] = frozenset(),
    ) -> tuple[Attempts, float, bool]:
        """The attempts at the first target from here whose breaker lets a
        request through, the delay to use, and whether one does (when none
        does, the attempts stand at the last target).  A target on a backend
        in ``answered_here`` is answered by the gateway itself (an estimate):
        it needs no breaker's leave, and asking would count an attempt."""
        attempts = self
        while attempts.current.backend not in answered_here and not breakers.may_send(
            attempts.current.backend, now + delay
        ):
            if attempts.index + 1 >= len(attempts.targets):
                return attempts, delay, False
            attempts = attempts._next_target()
            delay = 0.0
        return attempts, delay, True

    def unavailable(self, breakers: BreakerPreview, now: float) -> ServiceUnavailable:
        """The error for a request whose every target's breaker is open."""
        name = self.current.backend
        wait = max(1, math.ceil(breakers.retry_after(name, now)))
        return ServiceUnavailable(
            f"Backend {name!r} is failing and was taken out of rotation; retry in {wait}s.",
            code="backend_unavailable",
            retry_after=wait,
        )

    def _with(
        self, *, made: int, stream: bool, retry_after: float | None, maybe_generated: bool
    ) -> Attempts:
        # What every request does (sent, answered) without dataclasses.replace,
        # which looks the fields up again each call: a few microseconds.
        return Attempts(
            targets=self.targets,
            index=self.index,
            retries_on_target=self.retries_on_target,
            made=made,
            reason=self.reason,
            retry_after=retry_after,
            stream=stream,
            maybe_generated=maybe_generated,
        )

    def sent(self, *, stream: bool) -> Attempts:
        return self._with(
            made=self.made + 1,
            stream=stream,
            retry_after=self.retry_after,
            maybe_generated=self.maybe_generated,
        )

    def answered(self, status: int, retry_after: bytes | None) -> Attempts:
        """The backend answered with ``status`` (and this Retry-After)."""
        # A 4xx is the backend refusing the request, before generating;
        # a 5xx may come after minutes of generation (an OOM, a crash).
        generated = self.maybe_generated or not 400 <= status < 500
        return self._with(
            made=self.made,
            stream=self.stream,
            retry_after=self.retry_after if status < 400 else parse_retry_after(retry_after),
            maybe_generated=generated,
        )

    def failed(self, error: GatewayError) -> Attempts:
        """The attempt failed in transport (no answer, or a broken one)."""
        generated = self.maybe_generated or not before_send(error)
        return replace(self, maybe_generated=generated, retry_after=None)

    def left_early(self) -> Attempts:
        """The client left while the request may be on its way, or generating."""
        return replace(self, maybe_generated=True)

    def after_failure(
        self,
        *,
        status: int | None,
        error: GatewayError | None,
        max_retries: int,
        max_attempts: int,
        backoff_base: float,
        rand: float,
    ) -> tuple[Attempts, float] | None:
        """Where the next attempt goes and after what delay, or None to give
        up (``status`` for an HTTP error answer, ``error`` for a transport
        failure)."""
        step = next_step(
            status=status,
            error=error,
            retries_on_target=self.retries_on_target,
            max_retries=max_retries,
            attempts=self.made,
            max_attempts=max_attempts,
            has_next_target=self.index + 1 < len(self.targets),
            backoff_base=backoff_base,
            rand=rand,
            retry_after=self.retry_after,
        )
        if step.kind == "retry":
            again = replace(self, retries_on_target=self.retries_on_target + 1, reason="retry")
            return again, step.delay
        if step.kind == "fallback":
            return self._next_target(), 0.0
        return None

    def _next_target(self) -> Attempts:
        return replace(self, index=self.index + 1, retries_on_target=0, reason="fallback")

    def retry(
        self, *, status: int | None, error: GatewayError | None, config: GatewayConfig, rand: float
    ) -> tuple[Attempts, float] | None:
        """:meth:`after_failure` with the configured policy: the retries and
        backoff of the current target's backend, the server's attempt cap."""
        backend = config.backend(self.current.backend)
        return self.after_failure(
            status=status,
            error=error,
            max_retries=backend.max_retries,
            max_attempts=config.server.max_attempts,
            backoff_base=backend.retry_backoff,
            rand=rand,
        )


def before_send(error: GatewayError) -> bool:
    """True for a failure known to happen before the backend could generate:
    no connection was made (refused, unresolvable, connect timeout)."""
    return error.code == "upstream_unreachable"
