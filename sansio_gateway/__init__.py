"""sansio-gateway: the pure core of an LLM API gateway.

Nothing in this package performs I/O, reads a clock, or draws random numbers:
bytes, results, times and ids are passed in, and events, actions and decisions
come out.  The ``adapters`` package executes them; you can write your own
(``docs/embedding.md``).

The public API, importable from this package:

The gateway and one request
    :class:`Gateway` holds the config, model catalogue, routes and backend
    health; ``gateway.exchange(request_id)`` makes an :class:`Exchange` per
    request: ``start(request, now) -> actions``, then
    ``handle(result, now) -> actions`` until it is done.  Requests come in as
    :class:`IncomingRequest`.

Actions and results
    What the Exchange asks for (``SendUpstream``, ``StartResponse``,
    ``SendBody``, ``EndResponse``, ``CancelUpstream``, ``RecordUsage``,
    ``CheckLimits``, ``CommitLimits``, ``QueryUsage``, ``CollectMetrics``,
    ``CollectOverview``, ``LoadAsset``, ``RefreshCatalogue``) and what the
    adapter reports back (``UpstreamResponseStarted``,
    ``UpstreamChunkReceived``, ``UpstreamClosed``, ``UpstreamFailed``,
    ``ClientDisconnected``, ``LimitsDecided``, ``UsageQueried``,
    ``MetricsCollected``, ``OverviewCollected``, ``AssetLoaded``,
    ``CatalogueRefreshed``).  For ``CollectOverview`` (the status page's
    data) an adapter keeps a :class:`LiveStats` and answers an
    :class:`OverviewSnapshot`.

Configuration
    :func:`parse_config` (TOML text -> :class:`GatewayConfig`, or a
    :class:`ConfigError` naming the file, key and problem) and
    :func:`default_config`; the section models.

Framing
    Incremental, bounded decoders (:class:`SSEDecoder`,
    :class:`NDJSONDecoder`: ``feed(data) -> records``, ``feed_eof()``) and
    encoders (:func:`encode_sse`, :func:`encode_sse_json`,
    :func:`encode_ndjson`, :data:`SSE_DONE`).

Translators
    OpenAI clients on Ollama backends: :func:`parse_chat_request` ->
    :func:`chat_request_to_ollama`; answers with
    :func:`ollama_chat_to_completion` or, streamed, :class:`OllamaChatStream`
    (``feed(line) -> chunks``, ``finish()``); likewise for completions and
    embeddings.  Ollama clients on OpenAI backends:
    :func:`parse_native_chat_request` (Ollama's ``/api/chat`` body) ->
    :func:`chat_to_openai`; answers with :func:`chat_completion_to_ollama`
    or, streamed, :class:`OpenAIChatToOllamaStream`.

Rate limits
    :func:`build_specs` from the config, then :func:`admit` / :func:`commit`
    / :func:`peek` on stored :class:`LimitState` (or let
    :class:`MemoryLimitStore` hold them), and :func:`rate_limit_headers` /
    :func:`render_denial` for the client.

Errors
    :class:`GatewayError` and its kinds carry their HTTP meaning;
    :func:`error_response` renders one in a surface's wire format.

Backend kinds
    A :class:`Registry` of :class:`BackendKind` (``builtin_registry()``
    holds ``ollama`` and ``openai``); pass your own to :class:`Gateway` to
    add a kind.
"""

from __future__ import annotations

from .accounting.usage import TokenUsage
from .actions import (
    Action,
    AssetLoaded,
    CancelUpstream,
    CatalogueRefreshed,
    CheckLimits,
    ClientDisconnected,
    CollectMetrics,
    CollectOverview,
    CommitLimits,
    EndResponse,
    LimitsDecided,
    LoadAsset,
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
from .backends.registry import BackendKind, Registry, builtin_registry
from .config import (
    AuthConfig,
    AuthKey,
    BackendConfig,
    ConfigError,
    GatewayConfig,
    LimitsConfig,
    LimitValues,
    ModelConfig,
    ServerConfig,
    StoreConfig,
    default_config,
    parse_config,
)
from .errors import (
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
    render_ollama_error,
    render_openai_error,
)
from .exchange import Exchange, ExchangeState, ExchangeStateError, RequestSummary
from .framing import (
    SSE_DONE,
    FramingError,
    NDJSONDecoder,
    SSEDecoder,
    SSEEvent,
    encode_ndjson,
    encode_sse,
    encode_sse_json,
)
from .gateway import BackendStatus, Gateway, default_router
from .http import Headers, IncomingRequest, Surface, header_value
from .limits import (
    Costs,
    Decision,
    LimitSpecs,
    LimitState,
    MemoryLimitStore,
    admit,
    build_specs,
    commit,
    peek,
    rate_limit_headers,
    render_denial,
)
from .local.live_stats import LiveStats
from .local.overview_data import OverviewSnapshot
from .ollama_over_openai.requests import chat_to_openai
from .ollama_over_openai.responses import chat_completion_to_ollama
from .ollama_over_openai.stream import OpenAIChatToOllamaStream
from .openai_over_ollama.chat_request import chat_request_to_ollama
from .openai_over_ollama.chat_response import ollama_chat_to_completion, usage_from_ollama
from .openai_over_ollama.chat_stream import OllamaChatStream
from .openai_over_ollama.completions import (
    OllamaCompletionStream,
    completion_request_to_ollama,
    ollama_generate_to_completion,
)
from .openai_over_ollama.embeddings import (
    embeddings_request_to_ollama,
    ollama_embed_to_openai,
)
from .rendering import error_response
from .routing import Router
from .wire.ollama import NativeChatRequest
from .wire.ollama import parse_chat_request as parse_native_chat_request
from .wire.openai_chat import ChatRequest, parse_chat_request
from .wire.openai_completions import (
    parse_completion_request,
)
from .wire.openai_embeddings import (
    parse_embeddings_request,
)

__version__ = "0.1.0"

__all__ = [
    "SSE_DONE",
    "Action",
    "AssetLoaded",
    "AuthConfig",
    "AuthKey",
    "BackendConfig",
    "BackendKind",
    "BackendStatus",
    "CancelUpstream",
    "CatalogueRefreshed",
    "ChatRequest",
    "CheckLimits",
    "ClientDisconnected",
    "CollectMetrics",
    "CollectOverview",
    "CommitLimits",
    "ConfigError",
    "Costs",
    "Decision",
    "EndResponse",
    "Exchange",
    "ExchangeState",
    "ExchangeStateError",
    "FramingError",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "Headers",
    "IncomingRequest",
    "InternalError",
    "InvalidRequest",
    "LimitSpecs",
    "LimitState",
    "LimitValues",
    "LimitsConfig",
    "LimitsDecided",
    "LiveStats",
    "LoadAsset",
    "MemoryLimitStore",
    "MethodNotAllowed",
    "MetricsCollected",
    "ModelConfig",
    "NDJSONDecoder",
    "NativeChatRequest",
    "NotFound",
    "OllamaChatStream",
    "OllamaCompletionStream",
    "OpenAIChatToOllamaStream",
    "OverviewCollected",
    "OverviewSnapshot",
    "PayloadTooLarge",
    "QueryUsage",
    "RecordUsage",
    "RefreshCatalogue",
    "Registry",
    "RequestSummary",
    "Result",
    "Router",
    "SSEDecoder",
    "SSEEvent",
    "SendBody",
    "SendUpstream",
    "ServerConfig",
    "ServiceUnavailable",
    "StartResponse",
    "StoreConfig",
    "Surface",
    "TokenUsage",
    "Unauthorized",
    "UpstreamChunkReceived",
    "UpstreamClosed",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamResponseStarted",
    "UpstreamTimeout",
    "UsageQueried",
    "UsageRecord",
    "__version__",
    "admit",
    "build_specs",
    "builtin_registry",
    "chat_completion_to_ollama",
    "chat_request_to_ollama",
    "chat_to_openai",
    "commit",
    "completion_request_to_ollama",
    "default_config",
    "default_router",
    "embeddings_request_to_ollama",
    "encode_ndjson",
    "encode_sse",
    "encode_sse_json",
    "error_response",
    "header_value",
    "ollama_chat_to_completion",
    "ollama_embed_to_openai",
    "ollama_generate_to_completion",
    "parse_chat_request",
    "parse_completion_request",
    "parse_config",
    "parse_embeddings_request",
    "parse_native_chat_request",
    "peek",
    "rate_limit_headers",
    "render_denial",
    "render_ollama_error",
    "render_openai_error",
    "usage_from_ollama",
]
