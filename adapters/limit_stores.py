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

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, assert_never
from urllib.parse import quote

import anyio

from sansio_gateway.config import StoreConfig, redact_url
from sansio_gateway.limits import (
    Breaker,
    BreakerState,
    Costs,
    Decision,
    Fallback,
    LimitSpecs,
    MemoryLimitStore,
    RateHeaders,
    Reading,
    Verdict,
    decide,
)
from sansio_gateway.limits.breaker import (
    Phase,
    StoreHealth,
    call_failed,
    call_succeeded,
    may_call,
    warmed,
)
from sansio_gateway.limits.decision import headers_from
from sansio_gateway.limits.fallback import (
    Route,
    claims_orphan,
    commit_plan,
    fallback_admit,
    leaves_orphan,
    local_decision,
    local_specs,
    peek_route,
)
from sansio_gateway.limits.specs import MAX_NOW_US, Unit, clamp_cost

from .limits_lua import ADMIT_LUA, COMMIT_LUA

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = [
    "LimitStore",
    "LimitStoreBusy",
    "LimitStoreConfigError",
    "LimitStoreError",
    "LimitStoreNotReady",
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


class LimitStoreBusy(LimitStoreUnavailable):
    """Every pooled connection stayed busy for ``connect_timeout``: this
    process is overloaded, the store is not failing.  The request gets the
    failure policy; neither the breaker nor readiness changes."""


class LimitStoreNotReady(LimitStoreUnavailable):
    """Failed before the decision's round trip: no free connection within
    ``connect_timeout``, a connection that could not be opened, scripts that
    could not be loaded, a slot map that could not be read.  Not a failed
    decision (:data:`Phase.CONNECT`): the store is warmed again instead."""


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

    # Its coroutines never suspend, so no cancellation can land midway: the
    # executor calls them without a shielding scope.
    never_waits = True

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
        pool_size: int = 16,
        connect_timeout: float = 0.5,
        decision_timeout: float | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._admit = client.register_script(admit_lua)
        self._commit = client.register_script(commit_lua)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        # Bounds the round trip alone (None: unbounded here, the caller bounds it).
        self.decision_timeout = decision_timeout
        self._gate: asyncio.Semaphore | None = None
        self.round_trips = 0  # EVALSHA replies read (measurements)

    @property
    def is_cluster(self) -> bool:
        return hasattr(self.client, "nodes_manager")

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        pool_size: int = 16,
        connect_timeout: float = 0.5,
        decision_timeout: float | None = None,
        **client_kwargs: Any,
    ) -> RedisLimitStore:
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

        client_kwargs.setdefault("socket_connect_timeout", connect_timeout)
        client_kwargs.setdefault("socket_timeout", 1.0)
        for scheme in ("redis+cluster://", "rediss+cluster://"):
            if url.startswith(scheme):
                plain = scheme.replace("+cluster", "") + url[len(scheme) :]
                client_kwargs.setdefault("retry", Retry(NoBackoff(), 1))
                client_kwargs.setdefault("max_connections", 4 * pool_size)
                cluster = RedisCluster.from_url(plain, **client_kwargs)
                return cls(
                    cluster,
                    pool_size=pool_size,
                    connect_timeout=connect_timeout,
                    decision_timeout=decision_timeout,
                )
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        client_kwargs.setdefault("retry", retry)
        client_kwargs.setdefault("max_connections", pool_size)
        return cls(
            Redis.from_url(url, **client_kwargs),
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            decision_timeout=decision_timeout,
        )

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
        reply = await self._evalsha(self._admit, list(self.keys(user_key)), args)
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
        await self._evalsha(self._commit, keys, args)

    async def aclose(self) -> None:
        with map_redis_errors():
            await self.client.aclose()

    # ---- connections: warm-up, the pool gate, the two phases of a call ----

    async def warm(self) -> None:
        """Connect, load both scripts, read the Cluster slot map, and open
        ``pool_size`` connections (per primary on Cluster), all within
        ``connect_timeout``; raises :class:`LimitStoreNotReady`."""
        with _connect_phase(self.connect_timeout, "warming the limit store"):
            if self.is_cluster:
                await self._warm_cluster()
            else:
                await self._warm_standalone()

    async def _warm_standalone(self) -> None:
        pool = self._standalone().connection_pool
        conns = []
        try:
            for _ in range(self.pool_size):
                conns.append(await pool.get_connection())  # type: ignore[no-untyped-call]
            for script in (self._admit, self._commit):
                await conns[0].send_command("SCRIPT", "LOAD", script.script)
                await conns[0].read_response()
        finally:
            for conn in conns:
                await pool.release(conn)

    async def _warm_cluster(self) -> None:
        from redis.asyncio import RedisCluster

        client = self.client
        assert isinstance(client, RedisCluster)
        await client.initialize()
        for script in (self._admit, self._commit):
            await client.script_load(script.script)  # on every primary
        for node in client.get_primaries():
            # A restarted primary answers CLUSTERDOWN until it has rejoined.
            info = await node.execute_command("CLUSTER INFO")
            state = info.get("cluster_state") if isinstance(info, dict) else str(info)
            if state is None or "ok" not in str(state):
                raise LimitStoreNotReady(f"Cluster node {node.name}: cluster_state not ok")
            conns = [node.acquire_connection() for _ in range(self.pool_size)]
            try:
                for conn in conns:
                    await _fresh(conn)
            finally:
                for conn in conns:
                    node.release(conn)

    def _standalone(self) -> Redis:
        from redis.asyncio import Redis

        assert isinstance(self.client, Redis)
        return self.client

    def _pool_gate(self) -> asyncio.Semaphore:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self.pool_size)
        return self._gate

    async def _evalsha(self, script: Any, keys: list[str], args: list[str | int]) -> Any:
        """One EVALSHA: wait for one of ``pool_size`` connections (CONNECT
        phase), then one round trip (bounded by ``decision_timeout``)."""
        gate = self._pool_gate()
        try:
            with anyio.fail_after(self.connect_timeout):
                await gate.acquire()
        except TimeoutError as exc:
            raise LimitStoreBusy(
                f"no free limit-store connection within {self.connect_timeout:g}s"
            ) from exc
        try:
            if self.is_cluster:
                return await self._evalsha_cluster(script, keys, args)
            return await self._evalsha_standalone(script, keys, args)
        finally:
            gate.release()

    def _decision_scope(self) -> AbstractContextManager[object]:
        if self.decision_timeout is None:
            return nullcontext()
        return anyio.fail_after(self.decision_timeout)

    async def _evalsha_standalone(self, script: Any, keys: list[str], args: list[str | int]) -> Any:
        from redis.exceptions import NoScriptError

        pool = self._standalone().connection_pool
        with _connect_phase(self.connect_timeout, "connecting to the limit store"):
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)
            for loaded in (False, True):
                reply = await self._round_trip(conn, [evalsha], (NoScriptError,))
                if not isinstance(reply, NoScriptError):
                    self.round_trips += 1
                    return reply
                if loaded:
                    with map_redis_errors():
                        raise reply
                # flushed or restarted behind our back: load it (not the decision)
                with _connect_phase(self.connect_timeout, "loading the limit-store script"):
                    await conn.send_command("SCRIPT", "LOAD", script.script)
                    await conn.read_response()
        finally:
            await pool.release(conn)

    async def _round_trip(
        self, conn: Any, commands: list[tuple[Any, ...]], answers: tuple[type[Exception], ...]
    ) -> Any:
        """Send ``commands`` in one write on ``conn`` and read their replies,
        within ``decision_timeout``: the last reply, or an error of
        ``answers`` (replies that say the script did not run; the connection
        is in step: every reply was read).  On any other failure a reply may
        still be on its way, so ``conn`` is never reused."""
        from redis.exceptions import ResponseError

        try:
            with self._decision_scope(), map_redis_errors():
                try:
                    await conn.send_packed_command(conn.pack_commands(commands))
                    replies = [await conn.read_response() for _ in commands]
                    return replies[-1]
                except answers as exc:
                    return exc
                except ResponseError:
                    raise
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await conn.disconnect()
                    raise
        except TimeoutError as exc:
            raise LimitStoreUnavailable("limit store decision timed out") from exc

    def _cluster(self) -> RedisCluster:
        from redis.asyncio import RedisCluster

        assert isinstance(self.client, RedisCluster)
        return self.client

    async def _evalsha_cluster(self, script: Any, keys: list[str], args: list[str | int]) -> Any:
        """One EVALSHA on the slot's node, redirections followed by hand.

        (A script declares keys that may not exist yet: while its slot
        migrates, Redis answers TRYAGAIN until the slot has moved, so a slot
        left half-migrated longer than ``connect_timeout`` is "not ready".)

        Each attempt is one round trip on one connection (``ASKING`` and the
        EVALSHA pipelined together: redis-py would send them on two pooled
        connections, losing the ASKING flag).  A MOVED, ASK or TRYAGAIN
        reply means the script did not run: following it is the CONNECT
        phase (slot map, migration), bounded by ``connect_timeout`` in all,
        and never a failed decision.
        """
        from redis.exceptions import (
            AskError,
            ClusterDownError,
            MovedError,
            NoScriptError,
            TryAgainError,
        )

        client = self._cluster()
        if client._initialize:  # never read, or dropped after a connection error
            with _connect_phase(self.connect_timeout, "reading the Cluster slot map"):
                await client.initialize()
        slot = client.keyslot(keys[0])
        deadline = time.monotonic() + self.connect_timeout
        ask: tuple[str, int] | None = None
        while time.monotonic() < deadline:
            if ask is not None:
                node = client.get_node(host=ask[0], port=ask[1])
            else:
                node = client.nodes_manager.get_node_from_slot(slot)
            if node is None:  # an ASK target not in the map yet
                with _connect_phase(self.connect_timeout, "reading the Cluster slot map"):
                    await client.initialize()
                ask = None
                continue
            commands: list[tuple[Any, ...]] = [("ASKING",)] if ask is not None else []
            commands.append(("EVALSHA", script.sha, len(keys), *keys, *args))
            reply = await self._on_node(node, commands)
            if not isinstance(reply, Exception):
                self.round_trips += 1
                return reply
            ask = None
            with _connect_phase(self.connect_timeout, "following a Cluster redirection"):
                if isinstance(reply, MovedError):
                    await client.nodes_manager.move_slot(reply)
                elif isinstance(reply, AskError):
                    ask = (reply.host, reply.port)
                elif isinstance(reply, TryAgainError):
                    await anyio.sleep(0.001)  # keys half migrated: MIGRATE takes microseconds
                elif isinstance(reply, ClusterDownError):
                    await anyio.sleep(0.01)  # a primary rejoining, or a failover
                elif isinstance(reply, NoScriptError):
                    await client.script_load(script.script)
        raise LimitStoreNotReady(
            f"Cluster redirections not settled within {self.connect_timeout:g}s"
        )

    async def _on_node(self, node: Any, commands: list[tuple[Any, ...]]) -> Any:
        """Send ``commands`` in one write on one connection of ``node``; the
        last reply, or the redirection error that says the script did not run."""
        from redis.exceptions import (
            AskError,
            ClusterDownError,
            MovedError,
            NoScriptError,
            TryAgainError,
        )

        with _connect_phase(self.connect_timeout, "connecting to the limit store"):
            conn = node.acquire_connection()
            await _fresh(conn)
        try:
            redirections = (AskError, MovedError, TryAgainError, NoScriptError, ClusterDownError)
            return await self._round_trip(conn, commands, redirections)
        finally:
            node.release(conn)


async def _fresh(conn: Any) -> None:
    """Connect ``conn``, replacing it first if the server closed it (a
    restart): that is connection setup, not a decision."""
    if conn.is_connected:
        try:  # data waiting, or EOF (which raises): not a connection to reuse
            stale = await conn.can_read_destructive()
        except Exception:
            stale = True
        if stale:
            await conn.disconnect()
    await conn.connect()


@contextmanager
def _connect_phase(timeout: float, what: str) -> Iterator[None]:
    """Errors and timeouts here are :class:`LimitStoreNotReady` (CONNECT
    phase); configuration errors stay configuration errors."""
    try:
        with anyio.fail_after(timeout), map_redis_errors():
            yield
    except TimeoutError as exc:
        raise LimitStoreNotReady(f"{what}: no answer within {timeout:g}s") from exc
    except LimitStoreNotReady:
        raise
    except LimitStoreUnavailable as exc:
        raise LimitStoreNotReady(f"{what}: {exc}") from exc


# ---- failure policy ----------------------------------------------------------

_MAX_OWNERS = 100_000
_MAX_PENDING_COMMITS = 100_000
_REWARM_INTERVAL = 0.1  # seconds between warm-up attempts while the store is not ready


@dataclass(frozen=True, slots=True)
class _PendingCommit:
    user_key: str
    specs: LimitSpecs
    estimate: int
    actual: int
    now_us: int | None


class ResilientLimitStore:
    """A shared store behind the ``on_error`` policy, warm-up, a timeout and a breaker.

    The store is *ready* once :meth:`warm` has connected, loaded the scripts
    and opened the pool (``/ready`` reports it, with the reason while not).
    :meth:`run` keeps it warm: it warms it at once and again whenever a
    connection-phase error (:class:`LimitStoreNotReady`) marks it not ready,
    and replays queued commits once it serves again.  Which errors count is
    the core's :mod:`sansio_gateway.limits.breaker` (``StoreHealth``).

    On a failed decision (an error, or a round trip slower than
    ``decision_timeout`` seconds), while the breaker is open, and while the
    store is not ready (without trying it at all):

    * ``closed``: a denied Decision with ``reason=STORE_UNAVAILABLE`` (503);
    * ``open``: an allowed Decision with ``fallback=Fallback.OPEN`` (log it);
    * ``local``: the memory store with every limit divided by ``instances``
      (``fallback=Fallback.LOCAL``).

    :class:`LimitStoreConfigError` is re-raised, never covered by a policy.
    A request is committed to the store that admitted it.  A commit due to
    the shared store that cannot reach it is queued (at most
    ``max_pending_commits``, oldest dropped first) and replayed when the store
    serves again -- commits are idempotent by request id, so a replay that
    races a late original changes nothing.  ``store_errors``,
    ``config_errors``, ``commits_queued``, ``commits_replayed``,
    ``commits_dropped``, ``fallback_decisions``, ``fallback_seconds`` and
    ``fallback_mode`` are the metrics to export.
    """

    def __init__(
        self,
        primary: LimitStore,
        *,
        policy: Policy = "local",
        instances: int = 1,
        local: MemoryStore | None = None,
        decision_timeout: float = 0.25,
        connect_timeout: float = 0.5,
        commit_timeout: float = 0.5,
        breaker: Breaker | None = None,
        max_pending_commits: int = _MAX_PENDING_COMMITS,
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
        self.connect_timeout = connect_timeout
        self.commit_timeout = commit_timeout
        if isinstance(primary, RedisLimitStore):
            # the round trip alone is the decision; connecting has its own bound
            primary.decision_timeout = decision_timeout
            primary.connect_timeout = connect_timeout
        # A store without warm-up (a test double) is ready from the start.
        self.health = StoreHealth(
            ready=not hasattr(primary, "warm"),
            reason="not yet connected" if hasattr(primary, "warm") else None,
            breaker=breaker if breaker is not None else Breaker(),
        )
        self.max_pending_commits = max_pending_commits
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
        # Commits that could not reach the store, by request id, oldest first.
        self._pending: OrderedDict[str, _PendingCommit] = OrderedDict()
        self._wake = asyncio.Event()
        self._running = False
        self._service: asyncio.Task[None] | None = None
        self._last_service_us = -(10**12)
        # Fallback time counts from the first time the store served (not the start-up).
        self._not_serving_since: int | None = None
        self._fallback_us = 0
        self.warm_seconds: float | None = None  # how long the last warm-up took
        # Told of every change of readiness (the app mirrors it into /ready).
        self.on_health: Callable[[StoreHealth], None] | None = None
        self.store_errors = 0
        self.store_busy = 0  # admits that found every pooled connection busy
        self.connect_errors = 0
        self.config_errors = 0
        self.commits_queued = 0
        self.commits_replayed = 0
        self.commits_dropped = 0
        self.fallback_decisions = {mode: 0 for mode in Fallback}

    # ---- state ----------------------------------------------------------

    @property
    def breaker(self) -> Breaker:
        return self.health.breaker

    @breaker.setter
    def breaker(self, value: Breaker) -> None:
        self._set_health(replace(self.health, breaker=value))

    @property
    def ready(self) -> bool:
        return self.health.ready

    @property
    def not_ready_reason(self) -> str | None:
        return self.health.reason

    @property
    def fallback_mode(self) -> str | None:
        """None while the primary store serves; else the policy in force."""
        return None if self.health.serving else self.policy

    @property
    def fallback_seconds(self) -> float:
        """Seconds so far during which the failure policy was in force."""
        ongoing = 0
        if self._not_serving_since is not None:
            ongoing = self._monotonic() - self._not_serving_since
        return (self._fallback_us + ongoing) / 1e6

    @property
    def pending_commits(self) -> int:
        return len(self._pending)

    def _set_health(self, health: StoreHealth) -> None:
        before = self.health
        was, self.health = before.serving, health
        seen = (before.ready, before.serving, before.reason)
        if self.on_health is not None and seen != (health.ready, health.serving, health.reason):
            self.on_health(health)
        if was and not health.serving:
            self._not_serving_since = self._monotonic()
        elif not was and health.serving:
            if self._not_serving_since is not None:
                self._fallback_us += self._monotonic() - self._not_serving_since
            self._not_serving_since = None
            if self._pending:
                self._kick()
        if not health.serving:
            self._kick()

    def _failure(self, exc: BaseException) -> Phase:
        """Count a failed call; returns the phase it failed in."""
        self.store_errors += 1
        phase = Phase.CONNECT if isinstance(exc, LimitStoreNotReady) else Phase.DECISION
        before = self.health
        self._set_health(call_failed(self.health, phase, self._monotonic(), str(exc)))
        if phase is Phase.CONNECT:
            self.connect_errors += 1
            if before.ready:
                log.error("%s not ready (%s); on_error=%s applies", self.label, exc, self.policy)
        elif (
            self.breaker.state is BreakerState.OPEN
            and before.breaker.state is not BreakerState.OPEN
        ):
            log.error("%s failing (%r); on_error=%s applies", self.label, exc, self.policy)
        else:
            log.warning("%s error: %r", self.label, exc)
        return phase

    def _success(self) -> None:
        if self.breaker.state is not BreakerState.CLOSED:
            log.warning("%s recovered", self.label)
        self._set_health(call_succeeded(self.health, self._monotonic()))
        if self._pending:
            self._kick()

    def _config_error(self, exc: LimitStoreConfigError) -> None:
        self.config_errors += 1
        log.error("%s configuration error: %s", self.label, exc)

    # ---- warm-up and the service loop ----------------------------------

    async def warm(self) -> bool:
        """Warm the store once (see :meth:`RedisLimitStore.warm`); True if it
        is ready now.  Configuration errors are raised."""
        warm = getattr(self.primary, "warm", None)
        if warm is None:
            return True
        started = time.perf_counter()
        try:
            await warm()
        except LimitStoreConfigError as exc:
            self._config_error(exc)
            raise
        except LimitStoreUnavailable as exc:
            self.store_errors += 1
            self.connect_errors += 1
            # Warm-up retries every 0.1 s while the store is away: say so
            # once per distinct reason, not once per try.
            if self.health.reason != str(exc):
                log.warning(
                    "%s not ready (%s); on_error=%s applies until it answers",
                    self.label,
                    exc,
                    self.policy,
                )
            self._set_health(replace(self.health, ready=False, reason=str(exc)))
            return False
        self.warm_seconds = time.perf_counter() - started
        was_ready = self.health.ready
        self._set_health(warmed(self.health, self._monotonic()))
        if not was_ready:
            log.info("%s ready in %.1f ms", self.label, self.warm_seconds * 1000)
        return True

    async def run(self) -> None:
        """Keep the store warm and replay queued commits; runs until cancelled."""
        self._running = True
        try:
            while True:
                self._wake.clear()
                await self._service_once()
                if self.health.serving:
                    await self._wake.wait()
                else:  # the interval between warm-up attempts
                    await anyio.sleep(_REWARM_INTERVAL)
        finally:
            self._running = False

    async def _service_once(self) -> None:
        # Not serving: not warm, or decisions failing (breaker open).  A
        # warm-up is the probe: it closes the breaker when the store answers,
        # so recovery does not wait for traffic.
        if not self.health.serving:
            try:
                await self.warm()
            except LimitStoreConfigError:
                return
        if self.health.serving and self._pending:
            await self.replay()

    def _kick(self) -> None:
        """Have the service loop look again (or, when no :meth:`run` is
        active -- the store used as a library -- one pass in the background)."""
        if self._running:
            self._wake.set()
            return
        if self._service is not None and not self._service.done():
            return
        now = self._monotonic()
        if now - self._last_service_us < _REWARM_INTERVAL * 1e6:
            return
        self._last_service_us = now
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._service = loop.create_task(self._service_once())

    async def replay(self) -> None:
        """Send the queued commits, oldest first, while the store takes them."""
        while self._pending and self.health.serving:
            request_id, item = next(iter(self._pending.items()))
            try:
                with anyio.fail_after(self.commit_timeout):
                    await self.primary.commit(
                        item.user_key, item.specs, request_id, item.estimate, item.actual,
                        item.now_us,
                    )  # fmt: skip
            except LimitStoreConfigError as exc:
                self._config_error(exc)
                self._pending.pop(request_id, None)
                self._dropped(1, f"refused by the store: {exc}")
                continue
            except (LimitStoreUnavailable, TimeoutError) as exc:
                self._failure(exc)
                return
            self._pending.pop(request_id, None)
            self.commits_replayed += 1
        if not self._pending and self.commits_replayed:
            log.info("%s: %d queued commits replayed", self.label, self.commits_replayed)

    def _queue_commit(self, request_id: str, item: _PendingCommit) -> None:
        self._pending[request_id] = item
        self._pending.move_to_end(request_id)
        self.commits_queued += 1
        excess = len(self._pending) - self.max_pending_commits
        for _ in range(max(0, excess)):
            self._pending.popitem(last=False)
        if excess > 0:
            self._dropped(excess, "the queue of pending commits is full")

    def _dropped(self, count: int, why: str) -> None:
        before = self.commits_dropped
        self.commits_dropped += count
        if before == 0 or before // 1000 != self.commits_dropped // 1000:
            log.error(
                "%s: %d commits could not be replayed so far (%s); their leases"
                " and reservations expire on their own",
                self.label,
                self.commits_dropped,
                why,
            )

    # ---- the LimitStore interface ----------------------------------------

    async def admit(
        self,
        user_key: str,
        specs: LimitSpecs,
        costs: Costs,
        request_id: str,
        now_us: int | None = None,
    ) -> Decision:
        permit, health = may_call(self.health, self._monotonic())
        self._set_health(health)
        if permit:
            try:
                with anyio.fail_after(self.connect_timeout + self.decision_timeout):
                    decision = await self.primary.admit(user_key, specs, costs, request_id, now_us)
            except LimitStoreConfigError as exc:
                self._config_error(exc)
                raise
            except LimitStoreBusy as exc:
                self.store_busy += 1
                log.warning("%s: %s; on_error=%s applies", self.label, exc, self.policy)
            except (LimitStoreUnavailable, TimeoutError) as exc:
                if leaves_orphan(self._failure(exc)):
                    self._orphans[request_id] = costs.tokens
                    while len(self._orphans) > _MAX_OWNERS:
                        self._orphans.popitem(last=False)
            else:
                self._success()
                await self._release_unclaimed(now_us)
                return decision
        decision = await self._fallback_admit(user_key, specs, costs, request_id, now_us)
        tokens = self._orphans.get(request_id)
        if tokens is not None and claims_orphan(decision):
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
        plan = fallback_admit(mode, specs, self.instances, now)
        if plan.owner is not None:
            self._owners[request_id] = plan.owner
            while len(self._owners) > _MAX_OWNERS:
                self._owners.popitem(last=False)
        if plan.decision is not None:
            return plan.decision
        assert plan.specs is not None
        decision = await self.local.admit(user_key, plan.specs, costs, request_id, now)
        return local_decision(decision)

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
        counted and logged, not raised: the commit is queued for replay."""
        owner = self._owners.pop(request_id, None)
        orphan = self._orphans.pop(request_id, None)
        plan = commit_plan(owner, orphaned=orphan is not None)
        if orphan is not None:
            await self._release_orphan(user_key, specs, request_id, orphan, now_us)
        match plan.route:
            case Route.LOCAL:
                local = local_specs(specs, self.instances)
                await self.local.commit(user_key, local, request_id, estimate, actual, now_us)
            case Route.SHARED:
                await self._commit_or_queue(
                    request_id, _PendingCommit(user_key, specs, estimate, actual, now_us)
                )
            case Route.NOWHERE:
                pass
            case _:
                assert_never(plan.route)

    async def _commit_or_queue(self, request_id: str, item: _PendingCommit) -> None:
        if not self.health.serving:
            self._queue_commit(request_id, item)
            return
        try:
            with anyio.fail_after(self.connect_timeout + self.commit_timeout):
                await self.primary.commit(
                    item.user_key, item.specs, request_id, item.estimate, item.actual, item.now_us
                )
        except LimitStoreConfigError as exc:
            self._config_error(exc)
            raise
        except (LimitStoreUnavailable, TimeoutError) as exc:
            self._failure(exc)
            self._queue_commit(request_id, item)
        else:
            self._success()

    async def _release_orphan(
        self, user_key: str, specs: LimitSpecs, request_id: str, tokens: int, now_us: int | None
    ) -> None:
        """Settle, with nothing used, a lease the store may have granted after
        its admit timed out (commit is idempotent, and a commit for a lease it
        never granted changes nothing); queued while the store is away."""
        item = _PendingCommit(user_key, specs, tokens, 0, now_us)
        with suppress(LimitStoreConfigError):
            await self._commit_or_queue(request_id, item)

    async def peek(
        self, user_key: str, specs: LimitSpecs, now_us: int | None = None
    ) -> RateHeaders:
        policy = Fallback(self.policy)
        route = peek_route(self.health.serving, policy)
        if route is Route.SHARED:
            try:
                with anyio.fail_after(self.connect_timeout + self.decision_timeout):
                    return await self.primary.peek(user_key, specs, now_us)
            except LimitStoreConfigError as exc:
                self._config_error(exc)
                raise
            except (LimitStoreUnavailable, TimeoutError) as exc:
                self._failure(exc)
                route = peek_route(False, policy)
        if route is Route.LOCAL:
            return await self.local.peek(user_key, local_specs(specs, self.instances), now_us)
        return RateHeaders()

    async def aclose(self) -> None:
        if self._service is not None and not self._service.done():
            self._service.cancel()
        await self.primary.aclose()


def open_limit_store(
    config: StoreConfig, *, instances: int = 1, decision_timeout: float | None = None
) -> LimitStore:
    """The store ``[store] url`` names, behind ``on_error`` when shared.

    ``memory://`` gives the embedded store (with ``--workers N``, build the
    specs with ``divisor=N`` instead); ``redis://`` and ``redis+cluster://``
    give a :class:`ResilientLimitStore` whose ``local`` fallback divides by
    ``instances``, with ``[store]`` ``decision_timeout``, ``connect_timeout``
    and ``pool_size``.
    """
    url = config.url
    if url.startswith("memory:"):
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")):
        timeout = config.decision_timeout if decision_timeout is None else decision_timeout
        primary = RedisLimitStore.from_url(
            url, pool_size=config.pool_size, connect_timeout=config.connect_timeout
        )
        return ResilientLimitStore(
            primary,
            policy=config.on_error,
            instances=instances,
            decision_timeout=timeout,
            connect_timeout=config.connect_timeout,
            label=f"rate-limit store {redact_url(url)} (store.url)",
        )
    raise ValueError(f"[store] url: unsupported scheme in {url!r}")
