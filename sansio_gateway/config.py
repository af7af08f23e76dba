"""The operator's configuration: pydantic models for the TOML file.

Theory of operation: an adapter reads the file (I/O) and the environment and
hands both to :func:`parse_config`, which returns a validated, immutable
:class:`GatewayConfig` or raises :class:`ConfigError` whose message names the
file, the key (``backends[0].url``) and what was expected.  Nothing here
reads the environment itself: secrets referenced by ``*_env`` keys are
resolved from the mapping passed in.

The keys are the operator's contract (docs/configuration.md): extend them,
never rename them.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "AuthConfig",
    "AuthKey",
    "BackendConfig",
    "ConfigError",
    "GatewayConfig",
    "LimitValues",
    "LimitsConfig",
    "ModelConfig",
    "ServerConfig",
    "StoreConfig",
    "TracingConfig",
    "default_config",
    "parse_config",
    "redact_url",
    "sqlite_path",
    "store_url_problem",
    "usage_url_problem",
]

DEFAULT_OLLAMA_URL = "http://127.0.0.1:11434"


class ConfigError(ValueError):
    """A configuration problem, already phrased for the operator.

    ``problems`` holds each problem as (key, message), the key spelled as
    in the message (``limits.users.alice.requests_per_minute``), or None
    when no one key is at fault (TOML syntax): ``/admin/reload`` names them.
    """

    def __init__(self, message: str, *, problems: tuple[tuple[str | None, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or ((None, message),)


class _Strict(BaseModel):
    # Unknown keys are almost always typos ("max_body_byte"); say so.  Strict
    # types: TOML's own types must match ("6000" is not an integer, "yes" is
    # not a boolean -- `admin = "yes"` must never make an admin key).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _one_item_list(value: object) -> object:
    # `models = "*"` reads naturally; take a lone string as a one-item array.
    return [value] if isinstance(value, str) else value


# TOML arrays arrive as lists; strict mode would refuse them for a tuple, so
# the container alone is lax (its items stay strict: str refuses 1 either way).
_Names = Annotated[tuple[str, ...], Field(strict=False), BeforeValidator(_one_item_list)]


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: fit for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{hostport}").geturl()


def _url_problem(url: str, schemes: tuple[str, ...], *, needs_host: bool = True) -> str | None:
    """Why ``url`` is unusable, or None: a scheme from ``schemes`` and a sane form."""
    url = redact_url(url) if "://" in url else url
    expected = ", ".join(f"{s}://" for s in schemes)
    if "://" not in url:
        return f"{url!r} is not a URL; expected one starting with {expected}"
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        return f"{url!r}: unsupported scheme {parts.scheme!r}; expected {expected}"
    if needs_host and not parts.hostname:
        return f"{url!r}: no host"
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number in range
    except ValueError:
        return f"{url!r}: the port is not a number from 0 to 65535"
    return None


_REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")


def store_url_problem(url: str) -> str | None:
    """Why ``[store] url`` is unusable, or None."""
    if url.startswith("memory:"):
        return None if url in ("memory:", "memory://") else f"{url!r}: expected memory://"
    problem = _url_problem(url, ("memory", *_REDIS_SCHEMES))
    database = urlsplit(url).path.strip("/")
    if problem is None and database and not database.isdigit():
        return f"{redact_url(url)!r}: the database after the host must be a number (redis://HOST:PORT/DB)"
    return problem


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///PATH[?options]`` ledger URL."""
    return url[len("sqlite:///") :].partition("?")[0]


def usage_url_problem(url: str) -> str | None:
    """Why ``[store] usage`` is unusable, or None."""
    if url == "memory://":
        return None
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///") or not sqlite_path(url):
            return f"{url!r}: expected sqlite:///PATH (three slashes, then the file)"
        options = parse_qs(url.partition("?")[2], keep_blank_values=True)
        for name, values in options.items():
            if name != "synchronous" or values[-1].lower() not in ("normal", "full"):
                return (
                    f"{url!r}: the only option is ?synchronous=normal or ?synchronous=full,"
                    f" not {name}={values[-1]!r}"
                )
        return None
    if url.startswith("memory:"):
        return f"{url!r}: expected memory://"
    if url.startswith(tuple(f"{scheme}://" for scheme in _REDIS_SCHEMES)):
        return store_url_problem(url)
    return _url_problem(url, ("sqlite", "memory", *_REDIS_SCHEMES))


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(default=64 * 1024, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    # A client that reads nothing of its response for this long is dropped.
    write_timeout: float = Field(default=60.0, gt=0)
    keepalive_timeout: float = Field(default=75.0, gt=0)
    # Open client connections per process (bundled server); past it a new one gets 503
    max_connections: int = Field(default=500, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    runtime: Literal["asyncio", "trio"] = "asyncio"
    uvloop: bool = True  # on asyncio, use uvloop when it is installed (the "fast" extra)
    # On asyncio: "fast" serves with asyncio.Protocol, "anyio" with the server
    # trio uses (docs/architecture.md, "The fast transport").  trio is always anyio.
    transport: Literal["fast", "anyio"] = "fast"
    # Field name for Ollama's `thinking` on /v1: most clients read
    # `reasoning_content` (docs/openai-compatibility.md); Ollama itself says `reasoning`.
    reasoning_field: str = "reasoning_content"
    # With token limits: written upstream as the output cap when a client sends
    # none (or an unbounded one), shrunk to fit the limits (docs/rate-limiting.md,
    # "What is charged").  4096 when token limits are set and this is not.
    default_max_tokens: int | None = Field(default=None, gt=0)
    # An unknown model triggers a fresh discovery at most this often.
    discovery_ttl: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=4, ge=1)  # upstream attempts per request, all targets
    health_interval: float = Field(default=15.0, gt=0)  # seconds between backend probes
    breaker_failures: int = Field(default=5, ge=1)  # consecutive failures that open a breaker
    breaker_cooldown: float = Field(default=10.0, gt=0)  # seconds before a half-open probe


class BackendConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[^:\s]+$")
    kind: str = "ollama"
    url: str
    api_key_env: str | None = None
    api_key: str | None = Field(default=None, exclude=True, repr=False)
    connect_timeout: float = Field(default=5.0, gt=0)
    first_byte_timeout: float = Field(default=300.0, gt=0)
    idle_timeout: float = Field(default=60.0, gt=0)
    total_timeout: float = Field(default=1800.0, gt=0)
    discover: bool = True
    max_retries: int = Field(default=2, ge=0)  # per request, before the first byte only
    retry_backoff: float = Field(default=0.25, ge=0)  # seconds; doubles per retry, jittered
    # forward non-data: image URLs to an openai-kind backend, which fetches them (SSRF)
    allow_image_urls: bool = False
    # openai kind only: the backend serves /responses itself, so /v1/responses passes through
    responses: bool = False

    @model_validator(mode="after")
    def _responses_on_openai(self) -> BackendConfig:
        if self.responses and self.kind != "openai":
            raise ValueError(f'responses = true needs kind = "openai", not {self.kind!r}')
        return self

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        problem = _url_problem(value, ("http", "https"))
        if problem:
            raise ValueError(problem)
        return value.rstrip("/")


class ModelConfig(_Strict):
    name: str = Field(min_length=1)
    backend: str
    target: str | None = None
    fallbacks: _Names = ()

    @property
    def upstream_name(self) -> str:
        return self.target or self.name


class AuthKey(_Strict):
    id: str
    user: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    key_env: str | None = None
    models: _Names = ("*",)
    admin: bool = False

    @model_validator(mode="after")
    def _one_secret(self) -> AuthKey:
        if (self.sha256 is None) == (self.key_env is None):
            raise ValueError("give exactly one of sha256 or key_env")
        return self


class AuthConfig(_Strict):
    keys: Annotated[tuple[AuthKey, ...], Field(strict=False)] = ()


class LimitValues(_Strict):
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_day: int | None = Field(default=None, gt=0)
    concurrent_requests: int | None = Field(default=None, gt=0)


class LimitsConfig(LimitValues):
    users: dict[str, LimitValues] = Field(default_factory=dict)
    models: dict[str, LimitValues] = Field(default_factory=dict)


class StoreConfig(_Strict):
    url: str = "memory://"
    on_error: Literal["open", "closed", "local"] = "local"
    usage: str = "sqlite:///./sansio-gateway-usage.db"
    # How many gateways share this store: the "local" failure policy then
    # enforces 1/instances of each limit per gateway (and per --workers).
    instances: int = Field(default=1, ge=1)
    # Seconds one rate-limit decision's round trip (on a warm connection) may
    # take before on_error applies to it; see docs/rate-limiting.md for the
    # measurement behind the default.
    decision_timeout: float = Field(default=0.25, gt=0)
    # Seconds to wait for a pooled connection, to open one, to load the
    # scripts or to refresh a Cluster slot map: never counted as a failed
    # decision; past it the store is "not ready" until it is warmed again.
    connect_timeout: float = Field(default=0.5, gt=0)
    # Connections to the limit store per process, opened before /ready;
    # concurrent decisions beyond it wait for a free one (within connect_timeout).
    pool_size: int = Field(default=16, ge=1, le=1024)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        problem = store_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("usage")
    @classmethod
    def _check_usage(cls, value: str) -> str:
        problem = usage_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class TracingConfig(_Strict):
    # Export OpenTelemetry spans (needs the `otel` extra); off, the gateway makes none.
    enabled: bool = False
    # `"otlp"` (OTLP over HTTP/protobuf, to a collector) or `"console"` (JSON on stdout).
    exporter: Literal["otlp", "console"] = "otlp"
    # The OTLP traces URL; one with no path (`"http://collector:4318"`) gets `/v1/traces`.
    # Empty: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`,
    # else `http://localhost:4318/v1/traces`.
    endpoint: str = ""
    # The `service.name` of the spans; empty: `OTEL_SERVICE_NAME`, else `"sansio-gateway"`.
    service_name: str = ""
    # Fraction of new traces recorded; a client's `traceparent` decides for its own
    # trace.  Unset: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, else all.
    sample_ratio: float | None = Field(default=None, ge=0, le=1)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        problem = value and _url_problem(value, ("http", "https"))
        if problem:
            raise ValueError(problem)
        return value


class GatewayConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    backends: Annotated[tuple[BackendConfig, ...], Field(strict=False)] = ()
    models: Annotated[tuple[ModelConfig, ...], Field(strict=False)] = ()
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @model_validator(mode="after")
    def _cross_check(self) -> GatewayConfig:
        names = [b.name for b in self.backends]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"backends: names must be unique; repeated: {', '.join(dupes)}")
        if self.server.runtime == "trio" and self.store.url.startswith("redis"):
            # redis-py's asyncio client needs an asyncio loop.
            raise ValueError(
                "server.runtime: 'trio' cannot use a Redis store (store.url); use asyncio"
            )
        known = ", ".join(names) or "none"
        for i, model in enumerate(self.models):
            if model.backend not in names:
                raise ValueError(
                    f"models[{i}].backend: {model.backend!r} names no backend (known: {known})"
                )
            for j, spec in enumerate(model.fallbacks):
                backend = spec.partition(":")[0]
                if backend not in names:
                    raise ValueError(
                        f"models[{i}].fallbacks[{j}]: {spec!r}: expected 'backend:model'"
                        f" with a configured backend (known: {known})"
                    )
        return self

    def backend(self, name: str) -> BackendConfig:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)


def default_config(env: Mapping[str, str]) -> GatewayConfig:
    """The no-config setup: one Ollama at ``$OLLAMA_HOST`` or the default."""
    url = env.get("OLLAMA_HOST") or DEFAULT_OLLAMA_URL
    if "://" not in url:
        # Ollama accepts OLLAMA_HOST=host:port without a scheme.
        url = f"http://{url}"
    return GatewayConfig(backends=(BackendConfig(name="ollama", kind="ollama", url=url),))


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


# How a cross-check's message names its own key: "models[0].backend: ...".
_KEY_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]-]*): ")


def _explain(error: ValidationError, source: str) -> ConfigError:
    lines = []
    problems: list[tuple[str | None, str]] = []
    for item in error.errors():
        where = _location(tuple(item["loc"]))
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        if where == "(top level)":
            # Cross-checks name their own key ("models[0].backend: ...").
            lines.append(f"{source}: {msg}")
            named = _KEY_PREFIX.match(msg)
            key = named.group(1) if named else None
            problems.append((key, msg[named.end() :] if named else msg))
        else:
            lines.append(f"{source}: {where}: {msg}")
            problems.append((where, msg))
    return ConfigError("\n".join(lines), problems=tuple(problems))


def _keyed(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {message}", problems=((key, message),))


def _resolve_key_envs(data: dict[str, Any], env: Mapping[str, str], source: str) -> None:
    """``key_env`` keys are hashed now, so the key itself is never kept."""
    auth = data.get("auth")
    keys = auth.get("keys") if isinstance(auth, dict) else None
    for i, entry in enumerate(keys if isinstance(keys, list) else []):
        if isinstance(entry, dict) and isinstance(entry.get("key_env"), str):
            if "sha256" in entry:
                raise _keyed(source, f"auth.keys[{i}]", "give exactly one of sha256 or key_env")
            name = entry.pop("key_env")
            secret = env.get(name)
            if not secret:
                raise _keyed(
                    source, f"auth.keys[{i}].key_env", f"environment variable {name} is not set"
                )
            entry["sha256"] = hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _resolve_secrets(data: dict[str, Any], env: Mapping[str, str], source: str) -> None:
    _resolve_key_envs(data, env, source)
    for i, backend in enumerate(data.get("backends") or []):
        if isinstance(backend, dict) and backend.get("api_key_env"):
            name = backend["api_key_env"]
            if name not in env:
                raise _keyed(
                    source, f"backends[{i}].api_key_env", f"environment variable {name} is not set"
                )
            backend["api_key"] = env[name]


def parse_config(text: str, *, source: str, env: Mapping[str, str]) -> GatewayConfig:
    """Parse TOML text into a validated config; ``source`` names the file in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    _resolve_secrets(data, env, source)
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source) from None
    if not config.backends:
        config = config.model_copy(update={"backends": default_config(env).backends})
    return config
