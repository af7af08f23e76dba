"""Same-dialect passthrough, with the real anthropic and openai SDKs.

One gateway in front of an emulated Anthropic Messages API (``kind =
"anthropic"``) and an emulated OpenAI server that serves ``/responses``
(``kind = "openai"``, ``responses = true``), on the bundled server (asyncio
and trio) and the ASGI app under uvicorn.  The client asks for aliases, so
every test also sees the model rewritten on the way up and back; the
emulators check what Anthropic and OpenAI check (``x-api-key``,
``anthropic-version``, tool results that answer a tool call).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sansio_gateway.adapters.emulator.anthropic import AnthropicEmulator, run_anthropic_emulator
from sansio_gateway.adapters.emulator.openai import (
    OpenAIEmulator,
    ScriptedReply,
    run_openai_emulator,
)

from sansio_gateway.auth import hash_key
from tests.helpers import RunningGateway, make_config, running_gateway, wait_for

HELLO = "Hello! How can I help you today?"
KEY = "sk-test-passthrough-0123456789abcdef"
TINY = "sk-test-passthrough-tiny-0123456789"  # one request a minute
TINY2 = "sk-test-passthrough-tiny2-012345678"  # one request a minute, for the other surface
METERED = "sk-test-passthrough-metered-012345"  # a token limit
ADMIN = "sk-test-passthrough-admin-0123456789"
UPSTREAM_KEY = "sk-ant-upstream-0123456789"
CLAUDE, CLAUDE_TARGET = "sonnet", "claude-sonnet-4-5"
THINKER = "claude-opus-4-1"
GPT, GPT_TARGET = "gpt-responses", "gpt-4o-mini"
HI: Any = [{"role": "user", "content": "Say hello"}]
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER_CALL = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
_TIMEOUTS = "first_byte_timeout = 10\nidle_timeout = 10\nmax_retries = 0\n"


def _config(anthropic_url: str, openai_url: str) -> str:
    keys = "".join(
        f'[[auth.keys]]\nid = "{user}-key"\nuser = "{user}"\nsha256 = "{hash_key(key)}"\n'
        f"admin = {'true' if user == 'admin' else 'false'}\n"
        for user, key in (
            ("main", KEY),
            ("tiny", TINY),
            ("tiny2", TINY2),
            ("metered", METERED),
            ("admin", ADMIN),
        )
    )
    return (
        f'[[backends]]\nname = "claude"\nkind = "anthropic"\nurl = "{anthropic_url}"\n'
        f'api_key_env = "ANTHROPIC_KEY"\n{_TIMEOUTS}'
        f'[[backends]]\nname = "oar"\nkind = "openai"\nurl = "{openai_url}"\n'
        f"responses = true\n{_TIMEOUTS}"
        f'[[models]]\nname = "{CLAUDE}"\nbackend = "claude"\ntarget = "{CLAUDE_TARGET}"\n'
        f'[[models]]\nname = "{GPT}"\nbackend = "oar"\ntarget = "{GPT_TARGET}"\n'
        f"{keys}[limits.users.tiny]\nrequests_per_minute = 1\n"
        "[limits.users.tiny2]\nrequests_per_minute = 1\n"
        "[limits.users.metered]\ntokens_per_minute = 6000000\n"
        '[store]\nurl = "memory://"\nusage = "memory://"\n'
    )


@pytest.fixture(scope="module")
def claude_backend() -> Iterator[AnthropicEmulator]:
    with run_anthropic_emulator(api_key=UPSTREAM_KEY) as emu:
        yield emu


@pytest.fixture(scope="module")
def openai_backend() -> Iterator[OpenAIEmulator]:
    with run_openai_emulator(strict_params=True) as emu:
        yield emu


@pytest.fixture(scope="module", params=["asyncio", "trio", "asgi"])
def gateway(
    request: pytest.FixtureRequest,
    claude_backend: AnthropicEmulator,
    openai_backend: OpenAIEmulator,
) -> Iterator[RunningGateway]:
    config = make_config(
        _config(claude_backend.url, openai_backend.url), ANTHROPIC_KEY=UPSTREAM_KEY
    )
    if request.param != "asgi":
        with running_gateway(config, runtime=str(request.param)) as gw:
            yield gw
        return
    from sansio_gateway.adapters.asgi import create_app
    from sansio_gateway.adapters.ledger import MemoryLedger

    from tests.integration.test_asgi import serve_uvicorn

    ledger = MemoryLedger()
    asgi = create_app(config, ledger=ledger)
    with serve_uvicorn(asgi) as url:
        yield RunningGateway(app=asgi.app, url=url, ledger=ledger)


@pytest.fixture
def replies(
    claude_backend: AnthropicEmulator, openai_backend: OpenAIEmulator
) -> Iterator[dict[str, Any]]:
    """Set what each emulator answers next (reset after the test)."""

    def for_claude(**more: Any) -> None:
        claude_backend.set_reply(CLAUDE_TARGET, ScriptedReply(**more))

    def for_gpt(**more: Any) -> None:
        openai_backend.set_reply(GPT_TARGET, ScriptedReply(**more))

    claude_backend.clear_requests()
    openai_backend.clear_requests()
    yield {"claude": for_claude, "gpt": for_gpt}
    for_claude()
    for_gpt()


@pytest.fixture
def claude(gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


def _labels(line: str) -> dict[str, str]:
    inside = line[line.index("{") + 1 : line.rindex("}")]
    return dict(re.findall(r'(\w+)="([^"]*)"', inside))


def _last_record(gateway: RunningGateway, before: int) -> Any:
    wait_for(lambda: len(gateway.ledger.records) > before)
    return gateway.ledger.records[-1]


# -- Anthropic Messages to an Anthropic backend ----------------------------------------------


def test_messages_pass_through_with_the_model_rewritten(
    gateway: RunningGateway,
    claude: anthropic.Anthropic,
    claude_backend: AnthropicEmulator,
    replies: dict[str, Any],
) -> None:
    before = len(gateway.ledger.records)
    message = claude.messages.create(
        model=CLAUDE,
        max_tokens=200,
        system=[{"type": "text", "text": "Be brief."}],
        messages=HI,
        metadata={"user_id": "u-1"},
        extra_body={"top_k": 5},
    )
    assert message.model == CLAUDE and message.content[0].text == HELLO  # type: ignore[union-attr]
    assert message.usage.input_tokens == 26 and message.stop_reason == "end_turn"
    sent = claude_backend.last_request("/v1/messages")
    assert sent.headers["x-api-key"] == UPSTREAM_KEY
    # The version the SDK speaks, forwarded (the kind's default only when none).
    assert sent.headers["anthropic-version"] == claude.default_headers["anthropic-version"]
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": CLAUDE_TARGET,
        "max_tokens": 200,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": HI,
        "metadata": {"user_id": "u-1"},
        "top_k": 5,
    }
    record = _last_record(gateway, before)
    assert (record.route, record.surface, record.backend) == (
        "anthropic.messages",
        "anthropic",
        "claude",
    )
    assert record.usage_reported and record.prompt_tokens == 26
    assert record.completion_tokens == message.usage.output_tokens > 0


def test_messages_stream_passes_through_and_is_counted(
    gateway: RunningGateway, claude: anthropic.Anthropic, replies: dict[str, Any]
) -> None:
    before = len(gateway.ledger.records)
    with claude.messages.stream(model=CLAUDE, max_tokens=200, messages=HI) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.model == CLAUDE and final.content[0].text == HELLO  # type: ignore[union-attr]
    record = _last_record(gateway, before)
    assert record.outcome == "ok" and record.usage_reported
    assert (record.prompt_tokens, record.completion_tokens) == (26, final.usage.output_tokens)


def test_the_stream_carries_anthropics_pings(
    gateway: RunningGateway, replies: dict[str, Any]
) -> None:
    body = {"model": CLAUDE, "max_tokens": 50, "messages": HI, "stream": True}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    answer = httpx.post(gateway.url + "/v1/messages", json=body, headers=headers, timeout=10)
    names = [
        line[len("event: ") :] for line in answer.text.splitlines() if line.startswith("event: ")
    ]
    assert names[:3] == ["message_start", "content_block_start", "ping"]


@pytest.mark.parametrize("streamed", [False, True])
def test_messages_tool_use_round_trip(
    claude: anthropic.Anthropic, replies: dict[str, Any], streamed: bool
) -> None:
    tools: Any = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    replies["claude"](content="", tool_calls=WEATHER_CALL)
    if streamed:
        with claude.messages.stream(
            model=CLAUDE, max_tokens=200, messages=[question], tools=tools
        ) as stream:
            first = stream.get_final_message()
    else:
        first = claude.messages.create(
            model=CLAUDE, max_tokens=200, messages=[question], tools=tools
        )
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"}
    replies["claude"](content="It is sunny in Paris.")
    answer = claude.messages.create(
        model=CLAUDE,
        max_tokens=200,
        tools=tools,
        messages=[
            question,
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    )
    assert answer.content[0].text == "It is sunny in Paris."  # type: ignore[union-attr]


def test_messages_thinking_passes_through(gateway: RunningGateway) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as claude:
        thinking: Any = {"type": "enabled", "budget_tokens": 1024}
        message = claude.messages.create(
            model=THINKER, max_tokens=2048, thinking=thinking, messages=HI
        )
        with claude.messages.stream(
            model=THINKER, max_tokens=2048, thinking=thinking, messages=HI
        ) as stream:
            streamed = stream.get_final_message()
    for answer in (message, streamed):
        assert [b.type for b in answer.content] == ["thinking", "text"]
        assert answer.content[0].thinking and answer.content[0].signature  # type: ignore[union-attr]


def test_count_tokens_is_the_backends_count(
    claude: anthropic.Anthropic, claude_backend: AnthropicEmulator
) -> None:
    counted = claude.messages.count_tokens(model=CLAUDE, messages=HI)
    # The emulator's count (its overhead, the role and two words), not the gateway's estimate.
    assert counted.input_tokens == 3 + 3
    assert claude_backend.last_request("/v1/messages/count_tokens").json["model"] == CLAUDE_TARGET


def test_the_clients_betas_and_version_reach_the_backend(
    gateway: RunningGateway,
    claude: anthropic.Anthropic,
    claude_backend: AnthropicEmulator,
    replies: dict[str, Any],
) -> None:
    # The SDK's beta namespace, as Claude Code uses it: ``?beta=true`` and
    # an anthropic-beta header, on messages and on count_tokens.
    betas: Any = ["interleaved-thinking-2025-05-14", "token-efficient-tools-2025-02-19"]
    message = claude.beta.messages.create(model=CLAUDE, max_tokens=10, messages=HI, betas=betas)
    assert message.model == CLAUDE
    sent = claude_backend.last_request("/v1/messages")
    assert sent.headers["anthropic-beta"] == ",".join(betas)
    assert sent.headers["anthropic-version"] == claude.default_headers["anthropic-version"]
    assert sent.headers["x-api-key"] == UPSTREAM_KEY  # never the client's key
    claude.beta.messages.count_tokens(model=CLAUDE, messages=HI, betas=betas)
    counted = claude_backend.last_request("/v1/messages/count_tokens")
    assert set(betas) <= set(counted.headers["anthropic-beta"].split(","))  # the SDK adds its own
    # A client naming no version: the backend gets the kind's default.
    raw = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": KEY},
        json={"model": CLAUDE, "max_tokens": 10, "messages": HI},
    )
    assert raw.status_code == 200
    assert claude_backend.last_request("/v1/messages").headers["anthropic-version"] == "2023-06-01"


def test_a_count_is_no_generation_in_the_ledger_or_the_metrics(
    gateway: RunningGateway, claude: anthropic.Anthropic, replies: dict[str, Any]
) -> None:
    before = len(gateway.ledger.records)
    claude.messages.count_tokens(model=CLAUDE, messages=HI)
    claude.messages.create(model=CLAUDE, max_tokens=10, messages=HI)
    # Records are written in order: the generation's is there, and the count left none.
    record = _last_record(gateway, before)
    assert record.route == "anthropic.messages"
    assert [r.route for r in list(gateway.ledger.records)[before:]] == ["anthropic.messages"]
    text = httpx.get(gateway.url + "/metrics").text
    requests = [
        _labels(line) for line in text.splitlines() if line.startswith("gateway_requests_total{")
    ]
    counts = {(c["route"], c["backend"], c["status"]) for c in requests}
    assert ("anthropic.count_tokens", "claude", "200") in counts
    ttft_routes = {
        _labels(line)["route"]
        for line in text.splitlines()
        if line.startswith("gateway_time_to_first_token_seconds_count{")
    }
    assert "anthropic.messages" in ttft_routes and "anthropic.count_tokens" not in ttft_routes


def test_backend_errors_arrive_typed_in_anthropics_envelope(
    claude: anthropic.Anthropic, replies: dict[str, Any]
) -> None:
    replies["claude"](error_status=529, error_message="Overloaded")
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        claude.messages.create(model=CLAUDE, max_tokens=10, messages=HI)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    replies["claude"](error_status=429, error_message="Number of request tokens has exceeded")
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model=CLAUDE, max_tokens=10, messages=HI)
    assert "exceeded" in limited.value.message
    # The backend's own wait, passed on (the emulator says 7 s).
    assert limited.value.response.headers["retry-after"] == "7"
    replies["claude"]()
    orphan: Any = [
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}],
        }
    ]
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model=CLAUDE, max_tokens=10, messages=orphan)
    assert "tool_use_id" in bad.value.message
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_a_wrong_upstream_key_is_the_gateways_fault_not_the_clients(
    claude_backend: AnthropicEmulator, claude: anthropic.Anthropic
) -> None:
    claude_backend.api_key = "sk-ant-rotated"
    try:
        with pytest.raises(anthropic.APIStatusError) as failed:
            claude.messages.create(model=CLAUDE, max_tokens=10, messages=HI)
    finally:
        claude_backend.api_key = UPSTREAM_KEY
    assert failed.value.status_code == 502
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_a_stream_cut_short_ends_with_anthropics_error_event(
    gateway: RunningGateway, claude: anthropic.Anthropic, replies: dict[str, Any]
) -> None:
    replies["claude"](die_after_chunks=3)
    before = len(gateway.ledger.records)
    with (
        pytest.raises(anthropic.APIStatusError) as failed,
        claude.messages.stream(model=CLAUDE, max_tokens=200, messages=HI) as stream,
    ):
        stream.until_done()
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    record = _last_record(gateway, before)
    assert record.outcome == "failed_mid_stream" and record.prompt_tokens == 26


def test_limits_apply_to_the_passthrough(gateway: RunningGateway) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key=TINY, max_retries=0) as tiny:
        tiny.messages.create(model=CLAUDE, max_tokens=10, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as limited:
            tiny.messages.create(model=CLAUDE, max_tokens=10, messages=HI)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_what_an_anthropic_backend_cannot_serve_is_refused_in_the_callers_format(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model=CLAUDE, messages=HI)
    assert "cannot serve chat.completions" in chat.value.message
    with pytest.raises(openai.BadRequestError) as responses:
        client.responses.create(model=CLAUDE, input="Say hello")
    assert "cannot serve responses" in responses.value.message
    native = httpx.post(
        gateway.url + "/api/chat",
        json={"model": CLAUDE, "messages": HI, "stream": False},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert native.status_code == 400 and "cannot serve ollama.chat" in native.json()["error"]


# -- OpenAI Responses to a Responses-capable backend ----------------------------------------


def test_responses_pass_through_statelessly(
    gateway: RunningGateway,
    client: openai.OpenAI,
    openai_backend: OpenAIEmulator,
    replies: dict[str, Any],
) -> None:
    before = len(gateway.ledger.records)
    response = client.responses.create(model=GPT, input="Say hello", instructions="Be brief.")
    assert response.model == GPT and response.output_text == HELLO
    assert response.store is False
    sent = openai_backend.last_request("/v1/responses").json
    assert sent == {
        "model": GPT_TARGET,
        "input": "Say hello",
        "instructions": "Be brief.",
        "store": False,
    }
    record = _last_record(gateway, before)
    assert (record.route, record.surface, record.backend) == ("responses", "openai", "oar")
    assert record.usage_reported and record.prompt_tokens == 26
    assert record.completion_tokens == response.usage.output_tokens  # type: ignore[union-attr]


def test_responses_stream_passes_through_and_is_counted(
    gateway: RunningGateway, client: openai.OpenAI, replies: dict[str, Any]
) -> None:
    before = len(gateway.ledger.records)
    with client.responses.stream(model=GPT, input="Say hello") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.model == GPT and final.output_text == HELLO
    record = _last_record(gateway, before)
    assert record.outcome == "ok" and record.usage_reported
    assert record.completion_tokens == final.usage.output_tokens  # type: ignore[union-attr]


@pytest.mark.parametrize("streamed", [False, True])
def test_responses_function_call_round_trip(
    client: openai.OpenAI, openai_backend: OpenAIEmulator, replies: dict[str, Any], streamed: bool
) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}]
    replies["gpt"](content="", tool_calls=WEATHER_CALL)
    if streamed:
        with client.responses.stream(model=GPT, input="Weather in Paris?", tools=tools) as stream:
            first = stream.get_final_response()
    else:
        first = client.responses.create(model=GPT, input="Weather in Paris?", tools=tools)
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and call.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]
    replies["gpt"](content="It is sunny in Paris.")
    answer = client.responses.create(
        model=GPT,
        tools=tools,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            call.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},  # type: ignore[union-attr]
        ],
    )
    assert answer.output_text == "It is sunny in Paris."
    sent = openai_backend.last_request("/v1/responses").json
    assert sent["input"][-1]["type"] == "function_call_output"


def test_responses_json_schema_passes_through(
    client: openai.OpenAI, openai_backend: OpenAIEmulator, replies: dict[str, Any]
) -> None:
    schema = {"type": "object", "properties": {"greeting": {"type": "string"}}}
    replies["gpt"](content='{"greeting":"hello"}')
    fmt: Any = {"format": {"type": "json_schema", "name": "greeting", "schema": schema}}
    response = client.responses.create(model=GPT, input="Greet me in JSON", text=fmt)
    assert response.output_text == '{"greeting":"hello"}'
    assert openai_backend.last_request("/v1/responses").json["text"] == fmt


def test_the_charged_cap_is_written_where_the_responses_api_reads_it(
    gateway: RunningGateway, openai_backend: OpenAIEmulator
) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=METERED, max_retries=0) as metered:
        metered.responses.create(model=GPT, input="Say hello")
        sent = openai_backend.last_request("/v1/responses").json
        assert sent["max_output_tokens"] == 4096 and "max_tokens" not in sent
        metered.responses.create(model=GPT, input="Say hello", max_output_tokens=33)
        assert openai_backend.last_request("/v1/responses").json["max_output_tokens"] == 33


def test_a_responses_stream_cut_short_ends_with_response_failed(
    gateway: RunningGateway, replies: dict[str, Any]
) -> None:
    replies["gpt"](die_after_chunks=4)
    before = len(gateway.ledger.records)
    body = {"model": GPT, "input": "Say hello", "stream": True}
    answer = httpx.post(
        gateway.url + "/v1/responses", json=body, headers={"authorization": f"Bearer {KEY}"}
    )
    events = [line for line in answer.text.splitlines() if line.startswith("event: ")]
    assert events[-1] == "event: response.failed"
    assert _last_record(gateway, before).outcome == "failed_mid_stream"


def test_responses_limits_are_typed_through_the_openai_sdk(gateway: RunningGateway) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=TINY2, max_retries=0) as tiny:
        tiny.responses.create(model=GPT, input="Say hello")
        with pytest.raises(openai.RateLimitError) as limited:
            tiny.responses.create(model=GPT, input="Say hello")
    assert limited.value.code == "rate_limit_exceeded"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.response.headers["x-ratelimit-limit-requests"] == "1"


# -- both, in /metrics and /admin/usage --------------------------------------------------


def test_a_backends_429_wait_reaches_the_openai_sdk(
    client: openai.OpenAI, replies: dict[str, Any]
) -> None:
    replies["gpt"](error_status=429, error_message="Rate limit reached", error_retry_after=11)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=GPT, messages=HI)
    assert limited.value.response.headers["retry-after"] == "11"
    assert limited.value.code == "upstream_rate_limited"
    with pytest.raises(openai.RateLimitError) as again:
        client.responses.create(model=GPT, input="Say hello")
    assert again.value.response.headers["retry-after"] == "11"


def test_metrics_and_admin_usage_show_both_passthroughs(
    gateway: RunningGateway,
    claude: anthropic.Anthropic,
    client: openai.OpenAI,
    replies: dict[str, Any],
) -> None:
    claude.messages.create(model=CLAUDE, max_tokens=10, messages=HI)
    client.responses.create(model=GPT, input="Say hello")
    text = httpx.get(gateway.url + "/metrics").text
    counted = [
        _labels(line) for line in text.splitlines() if line.startswith("gateway_requests_total{")
    ]
    labels = {(c["surface"], c["route"], c["model"], c["backend"], c["status"]) for c in counted}
    assert ("anthropic", "anthropic.messages", CLAUDE, "claude", "200") in labels
    assert ("openai", "responses", GPT, "oar", "200") in labels
    rows = httpx.get(
        gateway.url + "/admin/usage",
        params={"user": "main"},
        headers={"authorization": f"Bearer {ADMIN}"},
    ).json()["data"]
    models = {row["model"] for row in rows}
    assert {CLAUDE, GPT} <= models
    assert all(row["prompt_tokens"] > 0 for row in rows if row["model"] in (CLAUDE, GPT))
