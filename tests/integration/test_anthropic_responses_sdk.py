"""The official anthropic and openai SDKs on /v1/messages and /v1/responses.

One gateway in front of both backend kinds: an emulated Ollama (the
translation to ``/api/chat``) and the emulated OpenAI-compatible server (the
chat body sent to ``/chat/completions``).  Every surface test runs over
both, on the bundled server (asyncio and trio) and on the ASGI app under
uvicorn; errors and limits are checked in each surface's own envelope.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sansio_gateway.adapters.emulator.openai import (
    OpenAIEmulator,
    run_openai_emulator,
)
from sansio_gateway.adapters.emulator.openai import ScriptedReply as ChatReply

from sansio_gateway.auth import hash_key
from tests.emulators.ollama import OllamaEmulator
from tests.emulators.ollama import ScriptedReply as NativeReply
from tests.helpers import RunningGateway, make_config, running_gateway, wait_for

HELLO = "Hello! How can I help you today?"
KEY = "sk-test-surfaces-0123456789abcdef"
TINY = "sk-test-tiny-0123456789abcdef"  # one request a minute
TINY2 = "sk-test-tiny2-0123456789abcdef"  # one request a minute, for /v1/responses
METERED = "sk-test-metered-0123456789abcdef"  # a token limit
ADMIN = "sk-test-admin-0123456789abcdef"  # reads /admin/usage
MODELS = {"ollama": "llama3.2:1b", "openai": "gpt-4o-mini"}
THINKERS = {"ollama": "qwen3:0.6b", "openai": "o4-mini"}  # the emulators' reasoning models
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
_TIMEOUTS = "first_byte_timeout = 10\nidle_timeout = 10\nmax_retries = 0\n"


def _config(ollama_url: str, openai_url: str) -> str:
    keys = (
        "".join(
            f'[[auth.keys]]\nid = "{user}-key"\nuser = "{user}"\nsha256 = "{hash_key(key)}"\n'
            for user, key in (("main", KEY), ("tiny", TINY), ("tiny2", TINY2), ("metered", METERED))
        )
        + f'[[auth.keys]]\nid = "admin-key"\nuser = "admin"\nsha256 = "{hash_key(ADMIN)}"\nadmin = true\n'
    )
    return (
        f'[[backends]]\nname = "ol"\nkind = "ollama"\nurl = "{ollama_url}"\n{_TIMEOUTS}'
        f'[[backends]]\nname = "oa"\nkind = "openai"\nurl = "{openai_url}"\n{_TIMEOUTS}'
        f"{keys}[limits.users.tiny]\nrequests_per_minute = 1\n"
        "[limits.users.tiny2]\nrequests_per_minute = 1\n"
        "[limits.users.metered]\ntokens_per_minute = 6000000\n"
        '[store]\nurl = "memory://"\nusage = "memory://"\n'
    )


@pytest.fixture(scope="module")
def backend() -> Iterator[OpenAIEmulator]:
    with run_openai_emulator() as emu:
        yield emu


@pytest.fixture(scope="module", params=["asyncio", "trio", "asgi"])
def gateway(
    request: pytest.FixtureRequest, emulator: OllamaEmulator, backend: OpenAIEmulator
) -> Iterator[RunningGateway]:
    """The bundled server on both runtimes, and the ASGI app under uvicorn:
    every scenario runs against all three."""
    config = make_config(_config(emulator.url, backend.url))
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


@pytest.fixture(params=["ollama", "openai"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def model(kind: str) -> str:
    return MODELS[kind]


Script = Callable[..., None]


@pytest.fixture
def script(kind: str, emulator: OllamaEmulator, backend: OpenAIEmulator) -> Iterator[Script]:
    """Set what the backend of ``kind`` answers next: text, or tool calls."""

    def set_reply(
        content: str = HELLO, calls: list[dict[str, Any]] | None = None, **more: Any
    ) -> None:
        if kind == "ollama":
            capabilities = ["completion", "tools"]
            native = NativeReply(content=content, tool_calls=list(calls or []),
                                 capabilities=capabilities, **more)  # fmt: skip
            emulator.set_reply(MODELS[kind], native)
        else:
            reply = ChatReply(content=content, tool_calls=list(calls or []), **more)
            backend.set_reply(MODELS[kind], reply)

    set_reply()
    backend.clear_requests()
    yield set_reply
    set_reply()


@pytest.fixture
def claude(gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0) as c:
        yield c


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


def sent_chat(backend: OpenAIEmulator) -> dict[str, Any]:
    body = backend.last_request("/v1/chat/completions").json
    assert isinstance(body, dict)
    return body


WEATHER_CALL = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]


# -- Anthropic Messages -------------------------------------------------------------------


def test_messages_create_with_system_blocks(
    claude: anthropic.Anthropic, model: str, kind: str, script: Script, backend: OpenAIEmulator
) -> None:
    message = claude.messages.create(
        model=model,
        max_tokens=200,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[{"role": "user", "content": "Say hello"}],
    )
    assert message.id.startswith("msg_") and message.model == model
    assert message.role == "assistant" and message.type == "message"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == HELLO  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 26 and message.usage.output_tokens > 0
    if kind == "openai":
        sent = sent_chat(backend)
        assert sent["messages"][0] == {"role": "system", "content": "Be brief.\nBe kind."}
        assert sent["max_tokens"] == 200 and sent["model"] == model


def test_claude_codes_betas_are_ignored_by_a_chat_backend(
    claude: anthropic.Anthropic, model: str, kind: str, script: Script, backend: OpenAIEmulator
) -> None:
    # Claude Code sends betas on every request; a translated model serves it
    # (docs/anthropic-compatibility.md, "Headers"), and nothing Anthropic's
    # reaches a chat backend.
    betas: Any = ["claude-code-20250219", "interleaved-thinking-2025-05-14"]
    message = claude.beta.messages.create(
        model=model, max_tokens=50, messages=[{"role": "user", "content": "Say hello"}], betas=betas
    )
    assert message.content[0].text == HELLO  # type: ignore[union-attr]
    counted = claude.beta.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "Say hello"}], betas=betas
    )
    assert counted.input_tokens > 0
    if kind == "openai":
        sent = backend.last_request("/v1/chat/completions").headers
        assert not {"anthropic-beta", "anthropic-version", "x-api-key"} & set(sent)


def test_messages_stream_text(claude: anthropic.Anthropic, model: str, script: Script) -> None:
    with claude.messages.stream(
        model=model, max_tokens=200, messages=[{"role": "user", "content": "Say hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == HELLO
    assert final.content[0].text == HELLO  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 26 and final.usage.output_tokens > 0


@pytest.mark.parametrize("streamed", [False, True])
def test_messages_tool_use_round_trip(
    claude: anthropic.Anthropic,
    model: str,
    kind: str,
    script: Script,
    backend: OpenAIEmulator,
    streamed: bool,
) -> None:
    tools: list[Any] = [
        {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}
    ]
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    script(content="", calls=WEATHER_CALL)
    if streamed:
        with claude.messages.stream(
            model=model, max_tokens=200, messages=[question], tools=tools
        ) as stream:
            first = stream.get_final_message()
    else:
        first = claude.messages.create(
            model=model, max_tokens=200, messages=[question], tools=tools
        )
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 1
    use = uses[0]
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id

    script(content="It is sunny in Paris.")
    answer = claude.messages.create(
        model=model,
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
    if kind == "openai":
        messages = sent_chat(backend)["messages"]
        assert messages[1]["tool_calls"][0]["id"] == use.id
        assert messages[2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


def test_messages_thinking(claude: anthropic.Anthropic, kind: str) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    hello: Any = [{"role": "user", "content": "Say hello"}]
    message = claude.messages.create(
        model=THINKERS[kind], max_tokens=2048, thinking=thinking, messages=hello
    )
    with claude.messages.stream(
        model=THINKERS[kind], max_tokens=2048, thinking=thinking, messages=hello
    ) as stream:
        streamed = stream.get_final_message()
    for answer in (message, streamed):
        assert [b.type for b in answer.content] == ["thinking", "text"]
        assert answer.content[0].thinking  # type: ignore[union-attr]
        assert answer.content[1].text == HELLO  # type: ignore[union-attr]


def test_messages_stream_cut_short_is_an_error_event(
    claude: anthropic.Anthropic, gateway: RunningGateway, model: str, script: Script
) -> None:
    script(die_after_chunks=2)
    before = len(gateway.ledger.records)
    with (
        pytest.raises(anthropic.APIStatusError) as failed,
        claude.messages.stream(
            model=model, max_tokens=200, messages=[{"role": "user", "content": "Say hello"}]
        ) as stream,
    ):
        stream.until_done()
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    wait_for(lambda: len(gateway.ledger.records) > before)
    assert gateway.ledger.records[-1].outcome == "failed_mid_stream"


def test_usage_is_recorded_under_each_route(
    claude: anthropic.Anthropic,
    client: openai.OpenAI,
    gateway: RunningGateway,
    model: str,
    kind: str,
    script: Script,
) -> None:
    hello: Any = [{"role": "user", "content": "Say hello"}]
    before = len(gateway.ledger.records)
    claude.messages.create(model=model, max_tokens=200, messages=hello)
    with claude.messages.stream(model=model, max_tokens=200, messages=hello) as stream:
        stream.until_done()
    client.responses.create(model=model, input="Say hello")
    with client.responses.stream(model=model, input="Say hello") as events:
        events.until_done()
    wait_for(lambda: len(gateway.ledger.records) >= before + 4)
    records = list(gateway.ledger.records)[before:]
    assert [(r.route, r.surface) for r in records] == [
        ("anthropic.messages", "anthropic"),
        ("anthropic.messages", "anthropic"),
        ("responses", "openai"),
        ("responses", "openai"),
    ]
    assert all(r.outcome == "ok" and r.usage_reported for r in records)
    assert all(r.prompt_tokens == 26 and r.completion_tokens > 0 for r in records)
    assert {r.backend for r in records} == {"ol" if kind == "ollama" else "oa"}


def test_overloaded_backend_is_529(
    claude: anthropic.Anthropic, model: str, kind: str, script: Script
) -> None:
    script(error_status=503)
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        claude.messages.create(
            model=model, max_tokens=200, messages=[{"role": "user", "content": "Say hello"}]
        )
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_messages_images_base64_and_url_refused(
    claude: anthropic.Anthropic, model: str, kind: str, script: Script, backend: OpenAIEmulator
) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
    inline: Any = {"type": "base64", "media_type": "image/png", "data": png}
    looked = claude.messages.create(
        model=model,
        max_tokens=200,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": inline},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    assert looked.content[0].text == HELLO  # type: ignore[union-attr]
    if kind == "openai":
        parts = sent_chat(backend)["messages"][0]["content"]
        assert parts[0]["image_url"]["url"] == f"data:image/png;base64,{png}"
    remote: Any = {"type": "url", "url": "https://example.com/cat.png"}
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(
            model=model,
            max_tokens=200,
            messages=[{"role": "user", "content": [{"type": "image", "source": remote}]}],
        )


def test_count_tokens(claude: anthropic.Anthropic, model: str) -> None:
    counted = claude.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "Say hello"}]
    )
    longer = claude.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "Say hello " * 50}]
    )
    assert 0 < counted.input_tokens < longer.input_tokens
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(
            model="no-such-model", messages=[{"role": "user", "content": "Say hello"}]
        )


def test_messages_errors_are_typed(gateway: RunningGateway, claude: anthropic.Anthropic) -> None:
    hello: Any = [{"role": "user", "content": "Say hello"}]
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=MODELS["ollama"],
            max_tokens=10,
            messages=hello,
            extra_body={"temperature": 2.0},
        )
    assert bad.value.status_code == 400
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=10, messages=hello)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key="sk-wrong", max_retries=0) as stranger,
        pytest.raises(anthropic.AuthenticationError) as denied,
    ):
        stranger.messages.create(model=MODELS["ollama"], max_tokens=10, messages=hello)
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_messages_rate_limit_is_typed_with_retry_after(gateway: RunningGateway) -> None:
    hello: Any = [{"role": "user", "content": "Say hello"}]
    with anthropic.Anthropic(base_url=gateway.url, api_key=TINY, max_retries=0) as tiny:
        tiny.messages.create(model=MODELS["ollama"], max_tokens=10, messages=hello)
        with pytest.raises(anthropic.RateLimitError) as limited:
            tiny.messages.create(model=MODELS["ollama"], max_tokens=10, messages=hello)
    assert limited.value.status_code == 429
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_unknown_paths_and_methods_use_anthropics_envelope(gateway: RunningGateway) -> None:
    headers = {"x-api-key": KEY}
    missing = httpx.post(gateway.url + "/v1/messages/nope", headers=headers, json={})
    wrong = httpx.get(gateway.url + "/v1/messages", headers=headers)
    assert (missing.status_code, wrong.status_code) == (404, 405)
    assert missing.json()["type"] == wrong.json()["type"] == "error"
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    assert wrong.headers["allow"] == "POST"


def _labels(line: str) -> dict[str, str]:
    inside = line[line.index("{") + 1 : line.rindex("}")]
    return dict(re.findall(r'(\w+)="([^"]*)"', inside))


def test_metrics_and_admin_usage_show_both_surfaces_over_each_kind(
    gateway: RunningGateway,
    claude: anthropic.Anthropic,
    client: openai.OpenAI,
    model: str,
    kind: str,
    script: Script,
) -> None:
    hello: Any = [{"role": "user", "content": "Say hello"}]
    claude.messages.create(model=model, max_tokens=10, messages=hello)
    client.responses.create(model=model, input="Say hello")
    text = httpx.get(gateway.url + "/metrics").text
    counted = [
        _labels(line) for line in text.splitlines() if line.startswith("gateway_requests_total{")
    ]
    seen = {(c["surface"], c["route"], c["model"], c["backend"], c["status"]) for c in counted}
    backend = "ol" if kind == "ollama" else "oa"
    assert ("anthropic", "anthropic.messages", model, backend, "200") in seen
    assert ("openai", "responses", model, backend, "200") in seen
    rows = httpx.get(
        gateway.url + "/admin/usage",
        params={"user": "main", "model": model},
        headers={"authorization": f"Bearer {ADMIN}"},
    ).json()["data"]
    assert len(rows) == 1 and rows[0]["requests"] >= 2
    assert rows[0]["prompt_tokens"] >= 2 * 26 and rows[0]["completion_tokens"] > 0


# -- OpenAI Responses ---------------------------------------------------------------------


def test_responses_create(client: openai.OpenAI, model: str, script: Script) -> None:
    response = client.responses.create(model=model, input="Say hello", instructions="Be brief.")
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == HELLO
    assert response.usage is not None and response.usage.input_tokens == 26


def test_responses_stream(client: openai.OpenAI, model: str, script: Script) -> None:
    with client.responses.stream(model=model, input="Say hello") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text == HELLO


@pytest.mark.parametrize("streamed", [False, True])
def test_responses_function_call_round_trip(
    client: openai.OpenAI,
    model: str,
    kind: str,
    script: Script,
    backend: OpenAIEmulator,
    streamed: bool,
) -> None:
    tools: list[Any] = [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}]
    script(content="", calls=WEATHER_CALL)
    if streamed:
        with client.responses.stream(model=model, input="Weather in Paris?", tools=tools) as stream:
            first = stream.get_final_response()
    else:
        first = client.responses.create(model=model, input="Weather in Paris?", tools=tools)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]

    script(content="It is sunny in Paris.")
    answer = client.responses.create(
        model=model,
        tools=tools,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            call.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},  # type: ignore[union-attr]
        ],
    )
    assert answer.output_text == "It is sunny in Paris."
    if kind == "openai":
        messages = sent_chat(backend)["messages"]
        assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}  # type: ignore[union-attr]


def test_the_charged_output_cap_is_the_one_the_backend_reads(
    gateway: RunningGateway, backend: OpenAIEmulator
) -> None:
    # A Responses request without max_output_tokens is charged the gateway's
    # cap, which is then written into the chat body the backend reads.
    model = MODELS["openai"]
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=METERED, max_retries=0) as metered,
        anthropic.Anthropic(base_url=gateway.url, api_key=METERED, max_retries=0) as claude,
    ):
        metered.responses.create(model=model, input="Say hello")
        assert sent_chat(backend)["max_tokens"] == 4096
        metered.responses.create(model=model, input="Say hello", max_output_tokens=33)
        assert sent_chat(backend)["max_tokens"] == 33
        hello: Any = [{"role": "user", "content": "Say hello"}]
        claude.messages.create(model=model, max_tokens=77, messages=hello)
        assert sent_chat(backend)["max_tokens"] == 77


def test_responses_json_schema_output(
    client: openai.OpenAI, model: str, kind: str, script: Script, backend: OpenAIEmulator
) -> None:
    schema = {"type": "object", "properties": {"greeting": {"type": "string"}}}
    script(content='{"greeting":"hello"}')
    response = client.responses.create(
        model=model,
        input="Greet me in JSON",
        text={"format": {"type": "json_schema", "name": "greeting", "schema": schema}},
    )
    assert json.loads(response.output_text) == {"greeting": "hello"}
    if kind == "openai":
        sent = sent_chat(backend)["response_format"]
        assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == schema


def test_responses_errors_are_typed(gateway: RunningGateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=MODELS["ollama"], input="Say hello", temperature=5)
    assert bad.value.param == "temperature" and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="no-such-model", input="Say hello")
    assert missing.value.code == "model_not_found"
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError) as denied,
    ):
        stranger.responses.create(model=MODELS["ollama"], input="Say hello")
    assert denied.value.code == "invalid_api_key"


def test_responses_rate_limit_is_typed_with_openais_headers(gateway: RunningGateway) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=TINY2, max_retries=0) as tiny:
        tiny.responses.create(model=MODELS["ollama"], input="Say hello")
        with pytest.raises(openai.RateLimitError) as limited:
            tiny.responses.create(model=MODELS["ollama"], input="Say hello")
    assert limited.value.status_code == 429
    assert limited.value.type == "requests" and limited.value.code == "rate_limit_exceeded"
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1 and float(headers["retry-after-ms"]) > 0
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"


def test_responses_store_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODELS["ollama"], input="Say hello", store=True)
    assert refused.value.param == "store"
    assert "state" in refused.value.message
