"""Same-dialect passthrough of /v1/messages and /v1/responses, without sockets.

The flows (passthrough/anthropic.py, passthrough/responses.py), the registry
that picks them (backends/registry.py, over_chat/flows.py), the upstream
auth of the ``anthropic`` kind, where the charged output cap is written,
and ``count_tokens`` as a model-addressed route.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sansio_gateway.accounting.admission import write_output_cap
from sansio_gateway.accounting.usage import TokenUsage, read_anthropic_usage, read_responses_usage
from sansio_gateway.actions import (
    CatalogueRefreshed,
    CheckLimits,
    CountBackendAttempt,
    RecordUsage,
    RefreshCatalogue,
    SendUpstream,
    UpstreamChunkReceived,
    UpstreamClosed,
    UpstreamResponseStarted,
)
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.config import ConfigError
from sansio_gateway.errors import UpstreamError
from sansio_gateway.flows.base import LocalAnswer, UpstreamCall
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import IncomingRequest
from sansio_gateway.identity import ANONYMOUS
from sansio_gateway.limits import MemoryLimitStore
from sansio_gateway.limits.breaker import BreakerState
from sansio_gateway.limits.specs import Unit
from sansio_gateway.over_chat.flows import OpenAIResponsesFlow
from sansio_gateway.over_chat.requests import (
    parse_count_tokens_route,
    parse_messages_route,
    parse_responses_route,
)
from sansio_gateway.passthrough.anthropic import AnthropicPassthroughFlow

from ..helpers import NOW, ExchangeDriver, make_config

MESSAGES, COUNT, RESPONSES = "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"
HI = [{"role": "user", "content": "Say hello"}]
TOML = """
[[backends]]
name = "claude"
kind = "anthropic"
url = "http://claude.test/v1"
api_key_env = "ANTHROPIC_KEY"
[[backends]]
name = "oar"
kind = "openai"
url = "http://oa.test/v1"
responses = true
[[backends]]
name = "oa"
kind = "openai"
url = "http://plain.test/v1"
[[backends]]
name = "ol"
kind = "ollama"
url = "http://ol.test"
[[models]]
name = "sonnet"
backend = "claude"
target = "claude-sonnet-4-5"
[[models]]
name = "gpt"
backend = "oar"
target = "gpt-4o-mini"
[[models]]
name = "plain"
backend = "oa"
target = "gpt-4o-mini"
[[models]]
name = "llama"
backend = "ol"
target = "llama3.2:1b"
"""


def gateway(extra: str = "") -> Gateway:
    gw = Gateway(make_config(TOML + extra, ANTHROPIC_KEY="sk-ant-1"))
    for backend in ("claude", "oar", "oa", "ol"):  # discovered: an unknown name is unknown
        gw.record_discovery(backend, [], NOW - 100)
    return gw


def sent(d: ExchangeDriver) -> tuple[str, dict[bytes, bytes], dict[str, Any]]:
    [call] = d.seen.upstream
    return call.url, dict(call.headers), orjson.loads(call.body)


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )


def events_of(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in body.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            out.append((name[len(b"event: ") :].decode(), orjson.loads(data[len(b"data: ") :])))
    return out


# -- Anthropic's stream and usage ---------------------------------------------------------

START = {
    "type": "message_start",
    "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 6, "output_tokens": 1},
    },
}  # fmt: skip
TEXT_EVENTS = (
    START,
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
    {"type": "message_stop"},
)


def test_anthropic_usage_sums_the_input_side_and_keeps_the_start_on_a_delta() -> None:
    start = read_anthropic_usage(START["message"]["usage"])  # type: ignore[index]
    assert start == TokenUsage(prompt_tokens=26, completion_tokens=1)
    assert read_anthropic_usage({"output_tokens": 9}, prior=start) == TokenUsage(
        prompt_tokens=26, completion_tokens=9
    )
    assert read_anthropic_usage({"input_tokens": 30, "output_tokens": 9}, prior=start) == (
        TokenUsage(prompt_tokens=30, completion_tokens=9)
    )
    for malformed in (None, {}, {"input_tokens": -1}, {"output_tokens": "3"}, [1]):
        assert read_anthropic_usage(malformed) is None


def finish_whole(d: ExchangeDriver, body: bytes) -> None:
    """The backend's whole answer, as the adapter reports it."""
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=body))
    d.handle(UpstreamClosed())


def anthropic_stream() -> Any:
    request = parse_messages_route(
        orjson.dumps({"model": "sonnet", "max_tokens": 9, "messages": HI, "stream": True})
    )
    gw = gateway()
    flow = AnthropicPassthroughFlow(gw.flow_context("r1", NOW, ANONYMOUS), request, "sonnet")
    route = gw.catalogue.resolve("sonnet")
    plan = flow.plan(route, gw.config.backend("claude"))
    assert isinstance(plan, UpstreamCall) and plan.stream is not None
    return plan.stream


@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_anthropic_passthrough_stream_is_chunking_invariant(cuts: list[int]) -> None:
    raw = sse(*TEXT_EVENTS)
    whole = anthropic_stream()
    expected = whole.feed(raw) + whole.finish()
    pieces, at = [], 0
    for cut in sorted(c % (len(raw) + 1) for c in cuts):
        pieces.append(raw[at:cut])
        at = cut
    pieces.append(raw[at:])
    chunked = anthropic_stream()
    assert b"".join(chunked.feed(p) for p in pieces) + chunked.finish() == expected
    assert chunked.done and not chunked.failed
    assert chunked.usage == TokenUsage(prompt_tokens=26, completion_tokens=3)


def test_anthropic_passthrough_stream_rewrites_the_model_and_passes_every_event() -> None:
    stream = anthropic_stream()
    out = events_of(stream.feed(sse(*TEXT_EVENTS)))
    assert [name for name, _ in out] == [e["type"] for e in TEXT_EVENTS]
    assert out[0][1]["message"]["model"] == "sonnet"
    assert all(name == payload["type"] for name, payload in out)
    assert stream.done and stream.finish() == b""


def test_anthropic_passthrough_stream_cut_short_ends_with_the_error_event() -> None:
    stream = anthropic_stream()
    stream.feed(sse(*TEXT_EVENTS[:4]))
    [(name, payload)] = events_of(stream.finish())
    assert name == "error" and payload["error"]["type"] == "api_error"
    assert stream.failed and stream.usage == TokenUsage(prompt_tokens=26, completion_tokens=1)


def test_anthropic_passthrough_stream_passes_the_backends_error_and_stops() -> None:
    stream = anthropic_stream()
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    out = events_of(stream.feed(sse(START, overloaded, *TEXT_EVENTS[1:])))
    assert [name for name, _ in out] == ["message_start", "error"]
    assert stream.failed and stream.feed(sse(*TEXT_EVENTS)) == b""


def test_anthropic_passthrough_stream_refuses_garbage() -> None:
    stream = anthropic_stream()
    [(name, _)] = events_of(stream.feed(b"event: x\ndata: not json\n\n"))
    assert name == "error" and stream.failed
    stream = anthropic_stream()
    [(name, _)] = events_of(stream.feed(b'data: {"no":"type"}\n\n'))
    assert name == "error"


# -- the Anthropic kind through the Exchange ----------------------------------------------


def test_messages_go_to_an_anthropic_backend_as_sent_with_its_auth() -> None:
    d = ExchangeDriver(gateway())
    body = {"model": "sonnet", "max_tokens": 50, "messages": HI, "top_k": 3}
    d.start("POST", MESSAGES, body)
    url, headers, upstream = sent(d)
    assert url == "http://claude.test/v1/messages"
    assert upstream == {**body, "model": "claude-sonnet-4-5"}
    assert headers[b"x-api-key"] == b"sk-ant-1" and headers[b"anthropic-version"] == b"2023-06-01"
    assert b"authorization" not in headers


def test_redacted_thinking_goes_back_to_the_anthropic_backend_that_issued_it() -> None:
    turn = [{"type": "redacted_thinking", "data": "Enc..."}, {"type": "text", "text": "a"}]
    messages = [*HI, {"role": "assistant", "content": turn}, {"role": "user", "content": "more"}]
    d = ExchangeDriver(gateway())
    d.start("POST", MESSAGES, {"model": "sonnet", "max_tokens": 50, "messages": messages})
    assert sent(d)[2]["messages"][1]["content"] == turn


def test_a_whole_anthropic_answer_is_read_and_renamed() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", MESSAGES, {"model": "sonnet", "max_tokens": 50, "messages": HI})
    answer = {**START["message"], "content": [{"type": "text", "text": "Hi"}],  # type: ignore[dict-item]
              "usage": {"input_tokens": 20, "output_tokens": 2}}  # fmt: skip
    finish_whole(d, orjson.dumps(answer))
    assert d.seen.status == 200 and d.seen.json()["model"] == "sonnet"
    [record] = d.seen.usage
    assert record.usage_reported and (record.prompt_tokens, record.completion_tokens) == (20, 2)


def test_count_tokens_goes_to_an_anthropic_backend_and_is_recorded_without_tokens() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COUNT, {"model": "sonnet", "messages": HI})
    url, _, upstream = sent(d)
    assert url == "http://claude.test/v1/messages/count_tokens"
    assert upstream == {"model": "claude-sonnet-4-5", "messages": HI}
    finish_whole(d, b'{"input_tokens": 11}')
    assert d.seen.json() == {"input_tokens": 11}
    [record] = d.seen.usage
    assert (record.route, record.prompt_tokens, record.completion_tokens) == (
        "anthropic.count_tokens", 0, 0
    )  # fmt: skip


@pytest.mark.parametrize("model", ["llama", "plain", "gpt"])
def test_count_tokens_is_the_gateways_estimate_on_other_kinds(model: str) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COUNT, {"model": model, "messages": HI})
    assert d.seen.status == 200 and d.seen.json()["input_tokens"] > 0
    assert not d.seen.upstream and not d.seen.usage


def test_count_tokens_refreshes_the_catalogue_on_a_miss() -> None:
    gw = gateway()
    exchange = gw.exchange("r")
    body = orjson.dumps({"model": "qwen3:0.6b", "messages": HI})
    [refresh] = exchange.start(IncomingRequest(method="POST", path=COUNT, body=body), NOW)
    assert isinstance(refresh, RefreshCatalogue)
    gw.record_discovery("ol", [DiscoveredModel(name="qwen3:0.6b")], NOW)  # the adapter's refresh
    actions = exchange.handle(CatalogueRefreshed(), NOW)
    assert orjson.loads(b"".join(getattr(a, "data", b"") for a in actions))["input_tokens"] > 0
    # A name that is still unknown after the refresh is Anthropic's 404.
    d = ExchangeDriver(gateway())
    d.start("POST", COUNT, {"model": "nope", "messages": HI})
    assert d.seen.status == 404 and d.seen.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("path", "body", "route"),
    [
        ("/v1/chat/completions", {"model": "sonnet", "messages": HI}, "chat.completions"),
        (RESPONSES, {"model": "sonnet", "input": "hi"}, "responses"),
        ("/api/chat", {"model": "sonnet", "messages": HI}, "ollama.chat"),
        ("/v1/embeddings", {"model": "sonnet", "input": "hi"}, "embeddings"),
    ],
)
def test_what_an_anthropic_backend_cannot_serve_is_a_400_in_the_callers_format(
    path: str, body: dict[str, Any], route: str
) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", path, body)
    assert d.seen.status == 400 and not d.seen.upstream
    error = d.seen.json()["error"]
    message = error if isinstance(error, str) else error["message"]
    assert f"kind 'anthropic' cannot serve {route}" in message


def test_the_anthropic_kind_discovers_its_models_with_its_auth() -> None:
    gw = gateway()
    assert gw.discovery_path("claude") == "/models?limit=1000"
    headers = dict(gw.upstream_headers("claude", "discovery"))
    assert headers[b"x-api-key"] == b"sk-ant-1"
    page = b'{"data": [{"type": "model", "id": "claude-sonnet-4-5", "created_at": "2025"}],' \
        b' "has_more": false}'  # fmt: skip
    assert [m.name for m in gw.parse_discovery("claude", page)] == ["claude-sonnet-4-5"]
    without_key = Gateway(
        make_config('[[backends]]\nname = "c"\nkind = "anthropic"\nurl = "http://c/v1"\n')
    )
    assert dict(without_key.upstream_headers("c", "x")).get(b"x-api-key") is None
    assert dict(without_key.upstream_headers("c", "x"))[b"anthropic-version"] == b"2023-06-01"


# -- Responses to a Responses-capable backend ---------------------------------------------


def test_responses_go_as_sent_with_store_false_to_a_responses_backend_only() -> None:
    body = {"model": "gpt", "input": "hi", "instructions": "Be brief.", "metadata": {"a": "b"}}
    d = ExchangeDriver(gateway())
    d.start("POST", RESPONSES, body)
    url, _, upstream = sent(d)
    assert url == "http://oa.test/v1/responses"
    assert upstream == {**body, "model": "gpt-4o-mini", "store": False}
    d = ExchangeDriver(gateway())
    d.start("POST", RESPONSES, {**body, "model": "plain"})
    url, _, upstream = sent(d)
    assert url == "http://plain.test/v1/chat/completions" and "messages" in upstream


def test_the_responses_flag_is_read_per_attempt() -> None:
    gw = gateway()
    request = parse_responses_route(b'{"model": "gpt", "input": "hi"}')
    flow = OpenAIResponsesFlow(gw.flow_context("r", NOW, ANONYMOUS), request, "gpt")
    route = gw.catalogue.resolve("gpt")
    native = flow.plan(route, gw.config.backend("oar"))
    chat = flow.plan(route, gw.config.backend("oa"))
    assert isinstance(native, UpstreamCall) and isinstance(chat, UpstreamCall)
    assert (native.path, chat.path) == ("/responses", "/chat/completions")


RESPONSE = {"id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-4o-mini",
            "output": []}  # fmt: skip


def responses_events(final_status: str = "completed") -> list[dict[str, Any]]:
    item = {"type": "message", "id": "msg_1", "role": "assistant", "content": []}
    done = {**RESPONSE, "status": final_status,
            "usage": {"input_tokens": 12, "output_tokens": 4, "total_tokens": 16}}  # fmt: skip
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": RESPONSE},
        {"type": "response.in_progress", "response": RESPONSE},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.output_text.delta", "output_index": 0, "delta": "Hi"},
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": f"response.{final_status}", "response": done},
    ]
    return [{**e, "sequence_number": n} for n, e in enumerate(events)]


def responses_stream() -> Any:
    d = ExchangeDriver(gateway())
    d.start("POST", RESPONSES, {"model": "gpt", "input": "hi", "stream": True})
    call = d.seen.upstream[0]
    assert isinstance(call, SendUpstream)
    return d.exchange._answer.stream  # the attempt's stream translator


@pytest.mark.parametrize("final", ["completed", "incomplete"])
def test_a_responses_stream_passes_renamed_and_counted(final: str) -> None:
    stream = responses_stream()
    out = events_of(stream.feed(sse(*responses_events(final))))
    assert [p["sequence_number"] for _, p in out] == list(range(6))
    assert all(p["response"]["model"] == "gpt" for _, p in out if "response" in p)
    assert stream.done and not stream.failed
    assert stream.usage == TokenUsage(prompt_tokens=12, completion_tokens=4)


def test_a_responses_stream_cut_short_ends_with_response_failed_numbered_after_the_last() -> None:
    stream = responses_stream()
    stream.feed(sse(*responses_events()[:4]))
    [(name, payload)] = events_of(stream.fail(UpstreamError("gone")))
    assert name == "response.failed" and payload["sequence_number"] == 4
    response = payload["response"]
    assert (response["id"], response["status"], response["model"]) == ("resp_1", "failed", "gpt")
    assert response["error"] == {"code": "server_error", "message": "gone"}


def test_a_responses_stream_passes_the_backends_error_event_and_stops() -> None:
    stream = responses_stream()
    error = {"type": "error", "code": "server_error", "message": "boom", "sequence_number": 2}
    out = events_of(stream.feed(sse(*responses_events()[:2], error, *responses_events()[2:])))
    assert [name for name, _ in out] == ["response.created", "response.in_progress", "error"]
    assert stream.failed


def test_responses_usage_reads_input_and_output_tokens() -> None:
    assert read_responses_usage({"input_tokens": 3, "output_tokens": 5}) == TokenUsage(
        prompt_tokens=3, completion_tokens=5
    )
    for malformed in (None, {}, {"input_tokens": 3}, {"input_tokens": -1, "output_tokens": 1}):
        assert read_responses_usage(malformed) is None


# -- the charged output cap, and the config ----------------------------------------------


def test_the_output_cap_is_written_where_each_body_reads_it() -> None:
    responses = orjson.dumps({"model": "m", "input": "hi"})
    chat = orjson.dumps({"model": "m", "messages": HI})
    messages = orjson.dumps({"model": "m", "messages": HI, "max_tokens": 9})
    assert orjson.loads(write_output_cap("openai", responses, 77, route="responses")) == {
        "model": "m", "input": "hi", "max_output_tokens": 77
    }  # fmt: skip
    assert orjson.loads(write_output_cap("openai", chat, 77, route="responses"))["max_tokens"] == 77
    assert (
        orjson.loads(write_output_cap("anthropic", messages, 7, route="anthropic.messages"))[
            "max_tokens"
        ]
        == 7
    )


def test_a_responses_backend_is_charged_and_capped_through_the_exchange() -> None:
    gw = gateway("[limits]\ntokens_per_minute = 600000\n")
    d = ExchangeDriver(gw)
    d.start("POST", RESPONSES, {"model": "gpt", "input": "hi"})
    _, _, upstream = sent(d)
    assert upstream["max_output_tokens"] == 4096 and "max_tokens" not in upstream


def test_responses_true_needs_an_openai_backend() -> None:
    with pytest.raises(ConfigError, match="responses = true needs kind"):
        make_config(
            '[[backends]]\nname = "x"\nkind = "ollama"\nurl = "http://x"\nresponses = true\n'
        )


def test_count_tokens_parses_strictly_in_anthropics_terms() -> None:
    request = parse_count_tokens_route(
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}'
    )
    assert request.model == "m" and request.decoded == request.native
    d = ExchangeDriver(gateway())
    d.start("POST", COUNT, {"model": "sonnet", "messages": HI, "max_tokens": 5})
    assert d.seen.status == 400 and d.seen.json()["error"]["message"].startswith("max_tokens")


def test_local_count_flow_answers_locally() -> None:
    from sansio_gateway.local.anthropic import CountTokensEstimate

    request = parse_count_tokens_route(orjson.dumps({"model": "m", "messages": HI}))
    plan = CountTokensEstimate(None, request, "m").plan(None, None)  # type: ignore[arg-type]
    assert isinstance(plan, LocalAnswer) and orjson.loads(plan.body)["input_tokens"] > 0


# -- the client's anthropic-beta and anthropic-version (routes.py, RouteDecl.forwards) ----

BETA = b"interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
CLIENT_HEADERS = (
    (b"x-api-key", b"sk-client-gateway-key"),
    (b"anthropic-version", b"2023-01-01"),
    (b"anthropic-beta", BETA),
    (b"Anthropic-Beta", b"token-counting-2024-11-01"),
    (b"x-stainless-lang", b"python"),
)


def upstream_headers(d: ExchangeDriver) -> list[tuple[bytes, bytes]]:
    [call] = d.seen.upstream
    return list(call.headers)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (MESSAGES, {"model": "sonnet", "max_tokens": 50, "messages": HI}),
        (MESSAGES, {"model": "sonnet", "max_tokens": 50, "messages": HI, "stream": True}),
        (COUNT, {"model": "sonnet", "messages": HI}),
    ],
)
def test_the_clients_betas_and_version_reach_an_anthropic_backend(
    path: str, body: dict[str, Any]
) -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", path, body, headers=CLIENT_HEADERS)
    headers = upstream_headers(d)
    # Both beta headers, in the client's order; the client's version replaces
    # the kind's default (one header, never two).
    assert [v for n, v in headers if n == b"anthropic-beta"] == [BETA, b"token-counting-2024-11-01"]
    assert [v for n, v in headers if n == b"anthropic-version"] == [b"2023-01-01"]
    # Only what the route declares: the client's own key and other headers stay here.
    assert [v for n, v in headers if n == b"x-api-key"] == [b"sk-ant-1"]
    assert b"x-stainless-lang" not in dict(headers)


def test_without_the_clients_version_the_backend_gets_the_kinds_default() -> None:
    d = ExchangeDriver(gateway())
    body = {"model": "sonnet", "max_tokens": 50, "messages": HI}
    d.start("POST", MESSAGES, body, headers=((b"anthropic-beta", BETA),))
    headers = upstream_headers(d)
    assert [v for n, v in headers if n == b"anthropic-version"] == [b"2023-06-01"]
    assert [v for n, v in headers if n == b"anthropic-beta"] == [BETA]


@pytest.mark.parametrize("model", ["llama", "plain"])
def test_a_chat_backend_ignores_the_betas(model: str) -> None:
    # Claude Code sends betas on every request: a translated model serves it
    # (what a beta unlocks in the body is refused by the strict parse anyway).
    d = ExchangeDriver(gateway())
    d.start(
        "POST", MESSAGES, {"model": model, "max_tokens": 50, "messages": HI}, headers=CLIENT_HEADERS
    )
    names = {n for n, _ in upstream_headers(d)}
    assert not names & {b"anthropic-beta", b"anthropic-version", b"x-api-key"}


def test_a_forwarded_value_must_be_short_visible_ascii() -> None:
    decl = gateway().routes.match("POST", MESSAGES)
    assert decl.forwards == (b"anthropic-beta", b"anthropic-version")
    sent_by_client = (
        (b"anthropic-beta", b"ok-1"),
        (b"anthropic-beta", "caf\u00e9".encode()),
        (b"anthropic-beta", b"x" * 4096),
        (b"anthropic-beta", b"a\tb"),
        (b"ANTHROPIC-VERSION", b"2023-06-01"),
    )
    assert decl.forwarded(sent_by_client) == (
        (b"anthropic-beta", b"ok-1"),
        (b"anthropic-version", b"2023-06-01"),
    )
    chat = gateway().routes.match("POST", "/v1/chat/completions")
    assert chat.forwarded(sent_by_client) == ()


# -- a token count is not a generation (docs/rate-limiting.md, "Token counts") --------------


def records(d: ExchangeDriver) -> list[RecordUsage]:
    return [a for a in d.seen.actions if isinstance(a, RecordUsage)]


def test_a_count_at_an_anthropic_backend_keeps_no_ledger_row_and_no_ttft() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", COUNT, {"model": "sonnet", "messages": HI})
    finish_whole(d, b'{"input_tokens": 11}')
    # Reported (for the trace and the access log), but not a ledger row.
    [record] = records(d)
    assert record.ledger is False and record.record.route == "anthropic.count_tokens"
    summary = d.exchange.summary(d.now)
    assert summary.route == "anthropic.count_tokens" and summary.backend == "claude"
    assert summary.ttft is None and summary.latency > 0
    assert (summary.prompt_tokens, summary.completion_tokens) == (0, 0)
    # A generation keeps both.
    g = ExchangeDriver(gateway())
    g.start("POST", MESSAGES, {"model": "sonnet", "max_tokens": 50, "messages": HI})
    finish_whole(g, orjson.dumps({**START["message"], "content": []}))  # type: ignore[dict]
    assert [r.ledger for r in records(g)] == [True]
    assert g.exchange.summary(g.now).ttft is not None


LIMITS = """
[limits]
requests_per_minute = 6
tokens_per_minute = 600
tokens_per_day = 1000
concurrent_requests = 2
"""


@pytest.mark.parametrize("model", ["sonnet", "llama"])
def test_a_count_costs_one_request_and_no_tokens_and_settles(model: str) -> None:
    store = MemoryLimitStore()
    d = ExchangeDriver(gateway(LIMITS), limits=store)
    d.start("POST", COUNT, {"model": model, "messages": HI * 50})
    [check] = [a for a in d.seen.actions if isinstance(a, CheckLimits)]
    assert (check.costs.tokens, check.costs.requests) == (0, 1)
    # Only the request limits: a user over a token budget may still count.
    assert {r.unit for r in check.specs.rates} == {Unit.REQUESTS}
    assert check.specs.tokens_per_day is None and check.specs.concurrent_requests == 2
    if model == "sonnet":
        finish_whole(d, b'{"input_tokens": 11}')
    # Answered by the backend or by the estimate, the lease is settled once, at 0.
    assert d.seen.status == 200
    [commit] = d.seen.commits
    assert (commit.estimate, commit.actual) == (0, 0)


def test_counts_share_requests_per_minute_with_generations() -> None:
    gw = gateway("[limits]\nrequests_per_minute = 6\n")  # a burst of one request
    store = MemoryLimitStore()
    first = ExchangeDriver(gw, limits=store)
    first.start("POST", COUNT, {"model": "llama", "messages": HI})
    assert first.seen.status == 200
    second = ExchangeDriver(gw, request_id="req2", limits=store)
    second.start("POST", MESSAGES, {"model": "llama", "max_tokens": 5, "messages": HI})
    assert second.seen.status == 429 and not second.seen.upstream
    assert second.seen.json()["error"]["type"] == "rate_limit_error"


def test_a_user_past_its_token_budget_may_still_count() -> None:
    gw = gateway("[limits]\ntokens_per_day = 100\n")
    store = MemoryLimitStore()
    big = ExchangeDriver(gw, limits=store)
    big.start("POST", MESSAGES, {"model": "llama", "max_tokens": 5000, "messages": HI})
    assert big.seen.status == 429  # too large for the day
    d = ExchangeDriver(gw, request_id="req2", limits=store)
    d.start("POST", COUNT, {"model": "llama", "messages": HI})
    assert d.seen.status == 200 and not d.seen.decisions  # no request limit: no check at all


# -- the estimate needs no backend (so no breaker) -------------------------------------------


def open_breaker(gw: Gateway, backend: str) -> None:
    for _ in range(gw.config.server.breaker_failures):
        gw.health.record(backend, False, NOW)
    assert gw.health.state(backend) is not BreakerState.CLOSED


def test_the_estimate_answers_while_every_breaker_is_open() -> None:
    gw = gateway()
    open_breaker(gw, "ol")
    d = ExchangeDriver(gw)
    d.start("POST", COUNT, {"model": "llama", "messages": HI}, now=NOW + 1)
    assert d.seen.status == 200 and d.seen.json()["input_tokens"] > 0
    assert not [a for a in d.seen.actions if isinstance(a, CountBackendAttempt)]
    # A generation on the same model still gets Anthropic's overloaded answer.
    g = ExchangeDriver(gw)
    g.start("POST", MESSAGES, {"model": "llama", "max_tokens": 5, "messages": HI}, now=NOW + 1)
    assert g.seen.status == 529 and g.seen.json()["error"]["type"] == "overloaded_error"
    # So does a count an Anthropic backend would make.
    open_breaker(gw, "claude")
    c = ExchangeDriver(gw)
    c.start("POST", COUNT, {"model": "sonnet", "messages": HI}, now=NOW + 1)
    assert c.seen.status == 529 and not c.seen.upstream


def test_the_estimate_does_not_take_a_half_open_breakers_probe() -> None:
    gw = gateway()
    open_breaker(gw, "ol")
    later = NOW + gw.config.server.breaker_cooldown + 1  # half-open: one probe may go
    ExchangeDriver(gw).start("POST", COUNT, {"model": "llama", "messages": HI}, now=later)
    g = ExchangeDriver(gw)
    g.start("POST", MESSAGES, {"model": "llama", "max_tokens": 5, "messages": HI}, now=later)
    assert len(g.seen.upstream) == 1  # the probe is still there for a real request


def test_the_estimate_is_still_a_404_for_a_model_the_key_may_not_use() -> None:
    keys = '[[auth.keys]]\nid = "k"\nuser = "u"\nkey_env = "K"\nmodels = ["sonnet"]\n'
    gw = Gateway(make_config(TOML + keys, ANTHROPIC_KEY="sk-ant-1", K="sk-test-key-0123456789"))
    open_breaker(gw, "ol")
    d = ExchangeDriver(gw)
    auth = ((b"x-api-key", b"sk-test-key-0123456789"),)
    d.start("POST", COUNT, {"model": "llama", "messages": HI}, now=NOW + 1, headers=auth)
    assert d.seen.status == 404 and d.seen.json()["error"]["type"] == "not_found_error"
