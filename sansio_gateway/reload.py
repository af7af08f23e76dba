"""Reloading the config without a restart: what changed, what may change.

Theory of operation: on ``SIGHUP`` or ``POST /admin/reload`` the adapter
reads the config file again (I/O) and parses it (``parse_config``); a
config that does not parse is refused there, with the keys
:class:`~sansio_gateway.config.ConfigError` names.  A config that parses is
compared with the running one by :func:`plan_reload`, a pure function: the
returned :class:`ReloadPlan` says what changed (keys, models, backends,
limits, live server settings), which backends keep their health and
discovered models (``carried``), and why the new config must be refused
as a whole (``problems``): a setting only a restart can apply, or keys
removed from a gateway that listens beyond loopback.  The adapter then
builds a new Gateway, lets it take over the old one's state
(``Gateway.carry_over``) and swaps it in for new requests; requests in
flight keep the Gateway they started with.  :class:`ReloadOutcome` is what
the adapter reports back, for ``/admin/reload`` and the log.

Limit state lives in the limit store, which a reload never replaces (its
settings need a restart), so it carries over for every user: users whose
limits did not change see no difference at all, and users whose limits
changed are judged by the new limits against what they already used
(GCRA TATs, today's tokens, leases held by requests in flight) -- a reload
neither hands out fresh quota nor forgets a held slot.  ``limit_users``
names those users, so the operator sees whom a reload affects.

Restart-only settings (``RESTART_ONLY``: the listen address, the runtime
and transport, every ``[store]`` and ``[tracing]`` key) are refused rather
than half-applied: a reload that
said "OK" while still listening on the old port would leave a file that
no longer describes the running gateway (docs/operations.md, "Reloading").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel

from .auth import is_loopback
from .config import (
    AuthKey,
    BackendConfig,
    ConfigError,
    GatewayConfig,
    LimitValues,
    ModelConfig,
    redact_url,
)

__all__ = [
    "RESTART_ONLY",
    "BackendChanges",
    "ConfigProblem",
    "Names",
    "ReloadOutcome",
    "ReloadPlan",
    "effective_limits",
    "plan_reload",
]

# [server] settings the process is built around: the listener, the event
# loop and the transport.  Every other [server] setting is read per
# request or per connection and changes live.
_SERVER_RESTART = ("host", "port", "runtime", "uvloop", "transport")
# The sections a reload applies; every other one is set up once at start --
# [store] (the limit store and the usage ledger, whose state must outlive a
# reload), [tracing] (the exporter), and any section added later until a
# reload learns to apply it -- so each of its keys needs a restart.
_LIVE_SECTIONS = ("server", "backends", "models", "auth", "limits")


def _restart_keys() -> tuple[str, ...]:
    keys = [f"server.{name}" for name in _SERVER_RESTART]
    for section, field in GatewayConfig.model_fields.items():
        if section in _LIVE_SECTIONS:
            continue
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            keys += [f"{section}.{name}" for name in model.model_fields]
        else:
            keys.append(section)
    return tuple(keys)


RESTART_ONLY: tuple[str, ...] = _restart_keys()
# What makes a backend another server: its health and discovered models
# then start afresh.  Timeouts, retries and the like only tune it.
_BACKEND_IDENTITY = ("kind", "url", "api_key")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigProblem:
    """Why a new config is refused: the key at fault (None: no one key) and what is wrong."""

    key: str | None
    message: str

    def __str__(self) -> str:
        return self.message if self.key is None else f"{self.key}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Names:
    """Entries of one kind, by name, that the new config adds, removes or changes."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendChanges:
    """Backends by name.  ``replaced``: same name, another server (kind, URL
    or upstream key): fresh health.  ``retuned``: other settings only."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    retuned: tuple[str, ...] = ()
    carried: tuple[str, ...] = ()  # keep health, breaker and discovered models
    # The order changed (it decides which backend wins a model name both offer).
    reordered: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.replaced or self.retuned or self.reordered)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadPlan:
    """What replacing the running config by a new one changes (see the module docstring)."""

    keys: Names
    key_count: int  # keys in the new config
    models: Names
    backends: BackendChanges
    limit_defaults: bool  # the [limits] defaults changed
    limit_users: tuple[str, ...]  # users whose own limits (as applied) changed
    limit_models: Names  # [limits.models."X"] entries
    server: tuple[str, ...]  # live [server] settings that changed
    problems: tuple[ConfigProblem, ...]  # non-empty: refuse the whole config

    @property
    def changed(self) -> bool:
        return bool(
            self.keys
            or self.models
            or self.backends
            or self.limit_defaults
            or self.limit_users
            or self.limit_models
            or self.server
        )

    def summary(self) -> dict[str, object]:
        """What changed, for ``/admin/reload`` and the log: key counts, never
        key material (nor key ids)."""
        return {
            "changed": self.changed,
            "keys": {
                "added": len(self.keys.added),
                "removed": len(self.keys.removed),
                "changed": len(self.keys.changed),
                "total": self.key_count,
            },
            "models": _names(self.models),
            "backends": {
                "added": list(self.backends.added),
                "removed": list(self.backends.removed),
                "replaced": list(self.backends.replaced),
                "retuned": list(self.backends.retuned),
                "reordered": self.backends.reordered,
            },
            "limits": {
                "defaults_changed": self.limit_defaults,
                "users_changed": list(self.limit_users),
                "models": _names(self.limit_models),
            },
            "server": list(self.server),
        }

    def describe(self) -> str:
        """One log line."""
        if not self.changed:
            return "no change"
        keys, backends = self.keys, self.backends
        parts = [
            f"keys +{len(keys.added)} -{len(keys.removed)} ~{len(keys.changed)}"
            f" ({self.key_count} in all)"
        ]
        for label, names in (("models", self.models), ("limits.models", self.limit_models)):
            if names:
                parts.append(f"{label} {_signed(names.added, names.removed, names.changed)}")
        if backends:
            parts.append(
                f"backends {_signed(backends.added, backends.removed, backends.replaced)}"
                + (f" retuned {', '.join(backends.retuned)}" if backends.retuned else "")
                + (" reordered" if backends.reordered else "")
            )
        if self.limit_defaults:
            parts.append("limit defaults changed")
        if self.limit_users:
            parts.append(f"limits changed for {', '.join(self.limit_users)}")
        if self.server:
            parts.append(f"server: {', '.join(self.server)}")
        return "; ".join(parts)


def _names(names: Names) -> dict[str, list[str]]:
    return {
        "added": list(names.added),
        "removed": list(names.removed),
        "changed": list(names.changed),
    }


def _signed(added: Iterable[str], removed: Iterable[str], changed: Iterable[str]) -> str:
    out = [f"+{n}" for n in added] + [f"-{n}" for n in removed] + [f"~{n}" for n in changed]
    return " ".join(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadOutcome:
    """What one reload did, as the adapter reports it (``ConfigReloaded``).

    Applied when ``plan`` is set and ``problems`` empty; otherwise the
    running config stayed.  ``unavailable``: there is no file to read again
    (an ASGI app built from a config object).
    """

    source: str | None
    trigger: str  # "SIGHUP", "POST /admin/reload", ...
    plan: ReloadPlan | None = None
    problems: tuple[ConfigProblem, ...] = ()
    generation: int = 1  # the config in force after this reload (1: the one started with)
    workers_told: bool = False  # the other --workers processes were asked to reload too
    unavailable: bool = False

    @property
    def applied(self) -> bool:
        return self.plan is not None and not self.problems

    @classmethod
    def refused(
        cls, error: ConfigError, *, source: str | None, trigger: str, generation: int
    ) -> ReloadOutcome:
        """The new config did not parse: ``error``'s problems, by key."""
        problems = tuple(ConfigProblem(key=k, message=m) for k, m in error.problems)
        return cls(source=source, trigger=trigger, problems=problems, generation=generation)

    def describe(self) -> str:
        """One log line, naming the keys when refused."""
        origin = f"{self.source or '(no file)'} ({self.trigger})"
        if self.applied:
            assert self.plan is not None
            return f"config reloaded from {origin}: {self.plan.describe()}"
        reasons = "; ".join(str(p) for p in self.problems)
        return f"config reload from {origin} refused, the running config stays: {reasons}"


def effective_limits(limits: LimitValues, own: LimitValues | None) -> LimitValues:
    """A user's limits as applied: their ``[limits.users.X]`` keys over the defaults."""
    if own is None:
        return LimitValues(**{name: getattr(limits, name) for name in LimitValues.model_fields})
    return LimitValues(
        **{
            name: getattr(own, name) if getattr(own, name) is not None else getattr(limits, name)
            for name in LimitValues.model_fields
        }
    )


def plan_reload(
    old: GatewayConfig,
    new: GatewayConfig,
    *,
    bind_host: str | None,
    allow_anonymous: bool = False,
) -> ReloadPlan:
    """Compare the running config ``old`` with ``new`` (both with the
    command line's overrides applied).  ``bind_host``: where the gateway
    listens (None: not known, e.g. under ASGI, where each request's address
    is judged instead); ``allow_anonymous``: ``serve --allow-anonymous``."""
    problems = [*_restart_problems(old, new)]
    if (
        not allow_anonymous
        and bind_host is not None
        and not is_loopback(bind_host)
        and not new.auth.keys
    ):
        problems.append(
            ConfigProblem(
                key="auth.keys",
                message=f"no API keys left while listening on {bind_host}: anyone who can"
                " reach it could use every model (serve --allow-anonymous allows it)",
            )
        )
    return ReloadPlan(
        keys=_diff(_keys_by_id(old.auth.keys), _keys_by_id(new.auth.keys)),
        key_count=len(new.auth.keys),
        models=_diff(_models_by_name(old.models), _models_by_name(new.models)),
        backends=_backend_changes(old.backends, new.backends),
        limit_defaults=_defaults(old.limits) != _defaults(new.limits),
        limit_users=_limit_users(old, new),
        limit_models=_diff(old.limits.models, new.limits.models),
        server=tuple(
            name
            for name in type(old.server).model_fields
            if name not in _SERVER_RESTART
            and getattr(old.server, name) != getattr(new.server, name)
        ),
        problems=tuple(problems),
    )


def _restart_problems(old: GatewayConfig, new: GatewayConfig) -> Iterable[ConfigProblem]:
    for key in RESTART_ONLY:
        before: object = old
        after: object = new
        for part in key.split("."):
            before, after = getattr(before, part), getattr(after, part)
        if before != after:
            yield ConfigProblem(
                key=key,
                message=f"{_shown(before)} -> {_shown(after)} takes effect only on a restart;"
                " put it back to reload, or restart the gateway",
            )


def _shown(value: object) -> str:
    # Store URLs may hold a password.
    return repr(redact_url(value)) if isinstance(value, str) and "://" in value else repr(value)


def _diff(old: Mapping[str, object], new: Mapping[str, object]) -> Names:
    return Names(
        added=tuple(sorted(n for n in new if n not in old)),
        removed=tuple(sorted(n for n in old if n not in new)),
        changed=tuple(sorted(n for n in new if n in old and old[n] != new[n])),
    )


def _keys_by_id(keys: tuple[AuthKey, ...]) -> dict[str, AuthKey]:
    # Ids need not be unique; a repeated id counts once per entry.
    out: dict[str, AuthKey] = {}
    for key in keys:
        name = key.id
        n = 1
        while name in out:
            n += 1
            name = f"{key.id}#{n}"
        out[name] = key
    return out


def _models_by_name(models: tuple[ModelConfig, ...]) -> dict[str, ModelConfig]:
    # The first entry of a name is the one the catalogue uses.
    out: dict[str, ModelConfig] = {}
    for model in models:
        out.setdefault(model.name, model)
    return out


def _backend_changes(
    old: tuple[BackendConfig, ...], new: tuple[BackendConfig, ...]
) -> BackendChanges:
    before = {b.name: b for b in old}
    after = {b.name: b for b in new}
    replaced, retuned, carried = [], [], []
    for name, backend in after.items():
        previous = before.get(name)
        if previous is None:
            continue
        if any(getattr(previous, f) != getattr(backend, f) for f in _BACKEND_IDENTITY):
            replaced.append(name)
            continue
        carried.append(name)
        if previous != backend:
            retuned.append(name)
    kept = [n for n in before if n in after]
    return BackendChanges(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        replaced=tuple(replaced),
        retuned=tuple(retuned),
        carried=tuple(carried),
        reordered=kept != [n for n in after if n in before],
    )


def _defaults(limits: LimitValues) -> LimitValues:
    return effective_limits(limits, None)


def _limit_users(old: GatewayConfig, new: GatewayConfig) -> tuple[str, ...]:
    """Users whose limits as applied differ: everyone named by a key or a
    ``[limits.users]`` table, in either config."""
    users = {k.user for k in (*old.auth.keys, *new.auth.keys)}
    users |= set(old.limits.users) | set(new.limits.users)
    return tuple(
        sorted(
            user
            for user in users
            if effective_limits(old.limits, old.limits.users.get(user))
            != effective_limits(new.limits, new.limits.users.get(user))
        )
    )
