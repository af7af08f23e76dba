"""Limit stores: where the rate limiter's state lives, and what to do when it is gone.

Every store has the same async interface (:class:`LimitStore`):

* ``await store.admit(user_key, specs, costs, request_id, now_us=None) -> Decision``
* ``await store.commit(user_key, specs, request_id, estimate, actual, now_us=None)``
* ``await store.peek(user_key, specs, now_us=None) -> RateHeaders``
* ``await store.aclose()``

``now_us`` overrides the clock (tests); otherwise :class:`MemoryStore` reads
``time.time_ns() // 1000`` and :class:`RedisLimitStore` lets the script read
Redis ``TIME`` (and the Decision carries the ``now`` it used).

:class:`RedisLimitStore` makes exactly one EVALSHA per call (redis-py's
``register_script`` reloads after NOSCRIPT) on ``redis.asyncio.Redis`` or
``RedisCluster``.  Its failures are mapped in one place,
:func:`map_redis_errors`: a configuration problem (a script error, a
cross-slot or wrong-type key, an ACL refusal) raises
:class:`LimitStoreConfigError` and is never silently allowed; anything
operational (connection, timeout, failover, OOM) raises
:class:`LimitStoreUnavailable`.

:class:`ResilientLimitStore` wraps a shared store with the operator's
``on_error`` policy, a short decision timeout and a circuit breaker.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote

import anyio

from sansio_gateway.config import StoreConfig, redact_url
from sansio_gateway.limits import (
    Breaker,
    BreakerState,
    Costs,
    Decision,
    DenyReason,
    Fallback,
    LimitSpecs,
    MemoryLimitStore,
    RateHeaders,
    Reading,
    Verdict,
    attempt,
    decide,
    divide_specs,
    failed,
    succeeded,
)
from sansio_gateway.limits.decision import headers_from
from sansio_gateway.limits.specs import MAX_NOW_US, Unit, clamp_cost

from .limits_lua import ADMIT_LUA, COMMIT_LUA

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = [
    "LimitStore",
    "LimitStoreConfigError",
    "LimitStoreError",
    "LimitStoreUnavailable",
    "MemoryStore",
    "RedisLimitStore",
    "ResilientLimitStore",
    "map_redis_errors",
    "open_limit_store",
    "wall_clock_us",
]

log = logging.getLogger("sansio_gateway.limits")

Policy = Literal["open", "closed", "local"]


def wall_clock_us() -> int:
    return time.time_ns() // 1000


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class LimitStoreError(Exception):
    """Base of the limit stores' errors."""


class LimitStoreConfigError(LimitStoreError):
    """The store is misconfigured (script error, cross-slot keys, ACL...).
    Never answered by a failure policy: report it and fix the deployment."""


class LimitStoreUnavailable(LimitStoreError):
    """The store cannot answer right now (down, timing out, failing over)."""


class LimitStore(Protocol):
    async def admit(
        self,
        user_key: str,
        specs: LimitSpecs,
        costs: Costs,
        request_id: str,
        now_us: int | None = None,
    ) -> Decision: ...

    async def commit(
        self,
        user_key: str,
        specs: LimitSpecs,
        request_id: str,
        estimate: int,
        actual: int,
        now_us: int | None = None,
    ) -> None: ...

    async def peek(
        self, user_key: str, specs: LimitSpecs, now_us: int | None = None
    ) -> RateHeaders: ...

    async def aclose(self) -> None: ...


# ---- memory ------------------------------------------------------------------


class MemoryStore:
    """The embedded store: :class:`MemoryLimitStore` plus a clock."""

    def __init__(
        self, memory: MemoryLimitStore | None = None, *, clock: Callable[[], int] = wall_clock_us
    ) -> None:
        self.memory = memory if memory is not None else MemoryLimitStore()
        self._clock = clock

    async def admit(
        self,
        user_key: str,
        specs: LimitSpecs,
        costs: Costs,
        request_id: str,
        now_us: int | None = None,
    ) -> Decision:
        now = self._clock() if now_us is None else now_us
        return self.memory.admit(user_key, specs, now, costs, request_id)

    async def commit(
        self,
        user_key: str,
        specs: LimitSpecs,
        request_id: str,
        estimate: int,
        actual: int,
        now_us: int | None = None,
    ) -> None:
        now = self._clock() if now_us is None else now_us
        self.memory.commit(user_key, specs, now, request_id, estimate, actual)

    async def peek(
        self, user_key: str, specs: LimitSpecs, now_us: int | None = None
    ) -> RateHeaders:
        return self.memory.peek(user_key, specs, self._clock() if now_us is None else now_us)

    async def aclose(self) -> None:
        return None


# ---- redis -------------------------------------------------------------------

# Replies that mean "not now" rather than "wrongly deployed".
_TRANSIENT_MARKERS = ("BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS", "CLUSTERDOWN", "TRYAGAIN")


def _is_config_problem(message: str) -> bool:
    """Any other error reply (a script error, WRONGTYPE, CROSSSLOT, unknown
    command) is deterministic: retrying or falling back would hide it."""
    return not message.lstrip().startswith(_TRANSIENT_MARKERS)


@contextmanager
def map_redis_errors() -> Iterator[None]:
    """Turn redis-py's exceptions into the two kinds the gateway acts on."""
    from redis import exceptions as rex

    try:
        yield
    except (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError) as exc:
        raise LimitStoreConfigError(f"redis refused the limit store: {exc}") from exc
    except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
        raise LimitStoreUnavailable(f"redis unreachable: {exc!r}") from exc
    except (
        rex.ClusterDownError,
        rex.TryAgainError,
        rex.ReadOnlyError,
        rex.OutOfMemoryError,
        rex.NoScriptError,
    ) as exc:
        raise LimitStoreUnavailable(f"redis cannot serve the limit store: {exc}") from exc
    except (rex.ClusterCrossSlotError, rex.DataError) as exc:
        raise LimitStoreConfigError(f"limit store misconfigured: {exc}") from exc
    except rex.ResponseError as exc:
        if _is_config_problem(str(exc)):
            raise LimitStoreConfigError(f"limit store script failed: {exc}") from exc
        raise LimitStoreUnavailable(f"redis error: {exc}") from exc
    except rex.RedisClusterException as exc:
        if "same key slot" in str(exc) or "CROSSSLOT" in str(exc):
            raise LimitStoreConfigError(f"limit store keys misconfigured: {exc}") from exc
        raise LimitStoreUnavailable(f"redis cluster unavailable: {exc}") from exc
    except rex.RedisError as exc:
        raise LimitStoreUnavailable(f"redis error: {exc!r}") from exc


def _rate_args(specs: LimitSpecs) -> list[str | int]:
    out: list[str | int] = [len(specs.rates)]
    for rate in specs.rates:
        unit = "r" if rate.unit is Unit.REQUESTS else "t"
        scope = "u" if rate.model is None else "m"
        out += [rate.key, unit, scope, rate.limit, rate.period_us, rate.burst_us]
    return out


def _optional(value: int | None) -> int:
    return -1 if value is None else value


def _check(now_us: int | None, request_id: str) -> str:
    if now_us is not None and not 0 <= now_us <= MAX_NOW_US:
        raise ValueError(f"now_us out of range: {now_us}")
    if not 0 < len(request_id) <= 256:
        raise ValueError("request_id must be 1..256 characters")
    return "" if now_us is None else str(now_us)


def _readings(reply: Sequence[Any]) -> tuple[int, list[Reading]]:
    values = [int(v) for v in reply]
    out = []
    for i in range(1, len(values), 5):
        v, wait, used, remaining, reset = values[i : i + 5]
        out.append(
            Reading(
                verdict=Verdict(v), wait_us=wait, used=used, remaining=remaining, reset_us=reset
            )
        )
    return values[0], out


class RedisLimitStore:
    """The shared store: one Lua script per operation, one round trip each.

    All keys of one user share the hash tag ``{u:<user>}`` (the user name is
    percent-encoded, so no name can end the tag early or collide).
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "rl:v1",
        admit_lua: str = ADMIT_LUA,
        commit_lua: str = COMMIT_LUA,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._admit = client.register_script(admit_lua)
        self._commit = client.register_script(commit_lua)

    @classmethod
    def from_url(cls, url: str, **client_kwargs: Any) -> RedisLimitStore:
        """``redis://host:port/db``, ``rediss://...``, ``redis+cluster://host:port``.

        redis-py's default retries back off for seconds; here a failed call
        is retried once at once (a pooled connection may be stale after a
        restart) and then left to :class:`ResilientLimitStore`.  A standalone
        client does not retry timeouts: the script may have run.
        """
        from redis.asyncio import Redis, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        client_kwargs.setdefault("socket_connect_timeout", 1.0)
        client_kwargs.setdefault("socket_timeout", 1.0)
        for scheme in ("redis+cluster://", "rediss+cluster://"):
            if url.startswith(scheme):
                plain = scheme.replace("+cluster", "") + url[len(scheme) :]
                client_kwargs.setdefault("retry", Retry(NoBackoff(), 1))
                return cls(RedisCluster.from_url(plain, **client_kwargs))
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        client_kwargs.setdefault("retry", retry)
        return cls(Redis.from_url(url, **client_kwargs))

    def keys(self, user_key: str) -> tuple[str, str]:
        """The user's TAT hash and lease hash."""
        base = f"{self.prefix}:{{u:{quote(user_key, safe='')}}}"
        return f"{base}:g", f"{base}:inflight"

    def done_key(self, user_key: str, request_id: str) -> str:
        base = f"{self.prefix}:{{u:{quote(user_key, safe='')}}}"
        return f"{base}:done:{quote(request_id, safe='')}"

    async def _run_admit(
        self, mode: str, user_key: str, specs: LimitSpecs, costs: Costs, rid: str, now: str
    ) -> tuple[int, list[Reading]]:
        args: list[str | int] = [
            mode,
            now,
            rid,
            costs.tokens,
            costs.requests,
            specs.lease_ttl_us,
            _optional(specs.tokens_per_day),
            _optional(specs.concurrent_requests),
            *_rate_args(specs),
        ]
        with map_redis_errors():
            reply = await self._admit(keys=list(self.keys(user_key)), args=args)
        return _readings(reply)

    async def admit(
        self,
        user_key: str,
        specs: LimitSpecs,
        costs: Costs,
        request_id: str,
        now_us: int | None = None,
    ) -> Decision:
        now = _check(now_us, request_id)
        costs = costs.clamped()
        used_now, readings = await self._run_admit("admit", user_key, specs, costs, request_id, now)
        return decide(specs, used_now, costs, readings)

    async def peek(
        self, user_key: str, specs: LimitSpecs, now_us: int | None = None
    ) -> RateHeaders:
        now = _check(now_us, "peek")
        _, readings = await self._run_admit("peek", user_key, specs, Costs(tokens=0), "", now)
        return headers_from(specs, readings)

    async def commit(
        self,
        user_key: str,
        specs: LimitSpecs,
        request_id: str,
        estimate: int,
        actual: int,
        now_us: int | None = None,
    ) -> None:
        now = _check(now_us, request_id)
        args: list[str | int] = [
            now,
            request_id,
            clamp_cost(estimate),
            clamp_cost(actual),
            specs.lease_ttl_us,
            _optional(specs.tokens_per_day),
            *_rate_args(specs),
        ]
        keys = [*self.keys(user_key), self.done_key(user_key, request_id)]
        with map_redis_errors():
            await self._commit(keys=keys, args=args)

    async def aclose(self) -> None:
        with map_redis_errors():
            await self.client.aclose()


# ---- failure policy ----------------------------------------------------------

_MAX_OWNERS = 100_000


class ResilientLimitStore:
    """A shared store behind the ``on_error`` policy, a timeout and a breaker.

    On a store error or a call slower than ``decision_timeout`` seconds (and
    while the breaker is open, without trying the store at all):

    * ``closed``: a denied Decision with ``reason=STORE_UNAVAILABLE`` (503);
    * ``open``: an allowed Decision with ``fallback=Fallback.OPEN`` (log it);
    * ``local``: the memory store with every limit divided by ``instances``
      (``fallback=Fallback.LOCAL``).

    :class:`LimitStoreConfigError` is re-raised, never covered by a policy.
    A request is committed to the store that admitted it; a commit due to the
    shared store while its breaker is open is dropped (counted), its lease
    expires there.  ``store_errors``, ``config_errors``, ``commits_dropped``,
    ``fallback_decisions`` and ``fallback_mode`` are the metrics to export.
    """

    def __init__(
        self,
        primary: LimitStore,
        *,
        policy: Policy = "local",
        instances: int = 1,
        local: MemoryStore | None = None,
        decision_timeout: float = 0.05,
        commit_timeout: float = 0.5,
        breaker: Breaker | None = None,
        monotonic: Callable[[], int] = monotonic_us,
        clock: Callable[[], int] = wall_clock_us,
        label: str = "rate-limit store",
    ) -> None:
        self.primary = primary
        # Names the store in every log line ("rate-limit store redis://h:6379/0
        # (store.url)"), its password already redacted.
        self.label = label
        self.policy: Policy = policy
        self.instances = instances
        self.local = local if local is not None else MemoryStore(clock=clock)
        self.decision_timeout = decision_timeout
        self.commit_timeout = commit_timeout
        self.breaker = breaker if breaker is not None else Breaker()
        self._monotonic = monotonic
        self._clock = clock
        self._owners: OrderedDict[str, Fallback] = OrderedDict()
        # Admits that timed out: the store may still run them when it catches
        # up, leaving a lease no commit would release.  Their commits also
        # release that lease in the store (request id -> estimated tokens).
        self._orphans: OrderedDict[str, int] = OrderedDict()
        # Orphans of requests refused by the "closed" policy get no commit:
        # they are released on the store's next successful admit.
        self._unclaimed: OrderedDict[str, tuple[str, LimitSpecs, int]] = OrderedDict()
        self.store_errors = 0
        self.config_errors = 0
        self.commits_dropped = 0
        self.fallback_decisions = {mode: 0 for mode in Fallback}

    @property
    def fallback_mode(self) -> str | None:
        """None while the primary store serves; else the policy in force."""
        return None if self.breaker.state is BreakerState.CLOSED else self.policy

    def _failure(self, exc: BaseException) -> None:
        self.store_errors += 1
        before = self.breaker.state
        self.breaker = failed(self.breaker, self._monotonic())
        if self.breaker.state is BreakerState.OPEN and before is not BreakerState.OPEN:
            log.error("%s failing (%r); on_error=%s applies", self.label, exc, self.policy)
        else:
            log.warning("%s error: %r", self.label, exc)

    def _success(self) -> None:
        if self.breaker.state is not BreakerState.CLOSED:
            log.warning("%s recovered", self.label)
        self.breaker = succeeded(self.breaker, self._monotonic())

    def _config_error(self, exc: LimitStoreConfigError) -> None:
        self.config_errors += 1
        log.error("%s configuration error: %s", self.label, exc)

    async def admit(
        self,
        user_key: str,
        specs: LimitSpecs,
        costs: Costs,
        request_id: str,
        now_us: int | None = None,
    ) -> Decision:
        permit, self.breaker = attempt(self.breaker, self._monotonic())
        if permit:
            try:
                with anyio.fail_after(self.decision_timeout):
                    decision = await self.primary.admit(user_key, specs, costs, request_id, now_us)
            except LimitStoreConfigError as exc:
                self._config_error(exc)
                raise
            except (LimitStoreUnavailable, TimeoutError) as exc:
                self._failure(exc)
                self._orphans[request_id] = costs.tokens
                while len(self._orphans) > _MAX_OWNERS:
                    self._orphans.popitem(last=False)
            else:
                self._success()
                await self._release_unclaimed(now_us)
                return decision
        decision = await self._fallback_admit(user_key, specs, costs, request_id, now_us)
        tokens = self._orphans.get(request_id)
        if not decision.allowed and tokens is not None:
            del self._orphans[request_id]
            self._unclaimed[request_id] = (user_key, specs, tokens)
            while len(self._unclaimed) > _MAX_OWNERS:
                self._unclaimed.popitem(last=False)
        return decision

    async def _release_unclaimed(self, now_us: int | None, most: int = 8) -> None:
        for _ in range(min(most, len(self._unclaimed))):
            request_id, (user_key, specs, tokens) = self._unclaimed.popitem(last=False)
            await self._release_orphan(user_key, specs, request_id, tokens, now_us)

    async def _fallback_admit(
        self, user_key: str, specs: LimitSpecs, costs: Costs, request_id: str, now_us: int | None
    ) -> Decision:
        mode = Fallback(self.policy)
        self.fallback_decisions[mode] += 1
        now = self._clock() if now_us is None else now_us
        if mode is Fallback.CLOSED:
            return Decision(
                allowed=False,
                now_us=now,
                retry_after_us=1_000_000,
                reason=DenyReason.STORE_UNAVAILABLE,
                fallback=mode,
            )
        self._owners[request_id] = mode
        while len(self._owners) > _MAX_OWNERS:
            self._owners.popitem(last=False)
        if mode is Fallback.OPEN:
            return Decision(allowed=True, now_us=now, fallback=mode)
        local_specs = divide_specs(specs, self.instances)
        decision = await self.local.admit(user_key, local_specs, costs, request_id, now)
        return replace(decision, fallback=mode)

    async def commit(
        self,
        user_key: str,
        specs: LimitSpecs,
        request_id: str,
        estimate: int,
        actual: int,
        now_us: int | None = None,
    ) -> None:
        """Commit to the store that admitted the request.  Store failures are
        counted and logged, not raised (the lease expires on its own)."""
        owner = self._owners.pop(request_id, None)
        orphan = self._orphans.pop(request_id, None)
        if orphan is not None:
            await self._release_orphan(user_key, specs, request_id, orphan, now_us)
        if owner is Fallback.LOCAL:
            local_specs = divide_specs(specs, self.instances)
            await self.local.commit(user_key, local_specs, request_id, estimate, actual, now_us)
            return
        if owner is Fallback.OPEN or orphan is not None:
            return  # no lease of the store's own to settle (beyond the orphan's)
        if self.breaker.state is not BreakerState.CLOSED:
            self.commits_dropped += 1  # its lease and reservation expire on their own
            return
        try:
            with anyio.fail_after(self.commit_timeout):
                await self.primary.commit(user_key, specs, request_id, estimate, actual, now_us)
        except LimitStoreConfigError as exc:
            self._config_error(exc)
            raise
        except (LimitStoreUnavailable, TimeoutError) as exc:
            self._failure(exc)
        else:
            self._success()

    async def _release_orphan(
        self, user_key: str, specs: LimitSpecs, request_id: str, tokens: int, now_us: int | None
    ) -> None:
        """Best effort: settle, with nothing used, a lease the store may have
        granted after its admit timed out (commit is idempotent, and a commit
        for a lease it never granted changes nothing)."""
        if self.breaker.state is BreakerState.OPEN:
            self.commits_dropped += 1  # the lease, if any, expires on its own
            return
        try:
            with anyio.fail_after(self.commit_timeout):
                await self.primary.commit(user_key, specs, request_id, tokens, 0, now_us)
        except LimitStoreConfigError as exc:
            self._config_error(exc)
        except (LimitStoreUnavailable, TimeoutError) as exc:
            self._failure(exc)

    async def peek(
        self, user_key: str, specs: LimitSpecs, now_us: int | None = None
    ) -> RateHeaders:
        if self.breaker.state is BreakerState.CLOSED:
            try:
                with anyio.fail_after(self.decision_timeout):
                    return await self.primary.peek(user_key, specs, now_us)
            except LimitStoreConfigError as exc:
                self._config_error(exc)
                raise
            except (LimitStoreUnavailable, TimeoutError) as exc:
                self._failure(exc)
        if self.policy == "local":
            return await self.local.peek(user_key, divide_specs(specs, self.instances), now_us)
        return RateHeaders()

    async def aclose(self) -> None:
        await self.primary.aclose()


def open_limit_store(
    config: StoreConfig, *, instances: int = 1, decision_timeout: float = 0.05
) -> LimitStore:
    """The store ``[store] url`` names, behind ``on_error`` when shared.

    ``memory://`` gives the embedded store (with ``--workers N``, build the
    specs with ``divisor=N`` instead); ``redis://`` and ``redis+cluster://``
    give a :class:`ResilientLimitStore` whose ``local`` fallback divides by
    ``instances``.
    """
    url = config.url
    if url.startswith("memory:"):
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
        return ResilientLimitStore(
            RedisLimitStore.from_url(url),
            policy=config.on_error,
            instances=instances,
            decision_timeout=decision_timeout,
            label=f"rate-limit store {redact_url(url)} (store.url)",
        )
    raise ValueError(f"[store] url: unsupported scheme in {url!r}")
