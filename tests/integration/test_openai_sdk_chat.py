"""The official openai SDK against the real gateway and the emulated Ollama.

Every test runs on both runtimes (asyncio and trio), through the module
fixtures in conftest.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.emulators.ollama import OllamaEmulator, ScriptedReply
from tests.helpers import RunningGateway, wait_for

MODEL = "llama3.2:1b"
MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def gateway(any_server: RunningGateway) -> RunningGateway:
    """This suite runs against the bundled server and the ASGI app alike."""
    return any_server


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def default_reply(emulator: OllamaEmulator) -> Iterator[None]:
    emulator.set_reply(MODEL, ScriptedReply(content="Hello! How can I help you today?"))
    yield
    emulator.set_reply(MODEL, ScriptedReply(content="Hello! How can I help you today?"))


def test_non_stream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.content == "Hello! How can I help you today?"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 26
    assert (
        completion.usage.total_tokens
        == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! How can I help you today?"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_stream_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.prompt_tokens == 26
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_alias_is_rewritten_both_ways(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.model == "gpt-4o-mini"
    assert emulator.requests[-1].json["model"] == MODEL


def test_max_completion_tokens_reaches_ollama(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_completion_tokens=2,  # type: ignore[arg-type]
    )
    assert emulator.requests[-1].json["options"]["num_predict"] == 2
    assert completion.choices[0].finish_reason == "length"


def test_async_client_stream_and_non_stream(gateway: RunningGateway) -> None:
    async def go() -> None:
        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key="x", max_retries=0
        ) as c:
            completion = await c.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
            assert completion.choices[0].message.content
            stream = await c.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},  # type: ignore[arg-type]
            )
            texts = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
            assert "".join(texts) == completion.choices[0].message.content

    asyncio.run(go())


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids and "gpt-4o-mini" in ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_unknown_model_is_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope:1b", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"


def test_bad_param_is_bad_request_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=7)  # type: ignore[arg-type]
    assert info.value.param == "temperature"


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, openai.BadRequestError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_backend_errors_become_typed_exceptions(
    client: openai.OpenAI, emulator: OllamaEmulator, status: int, exc: type[Exception]
) -> None:
    emulator.set_reply(MODEL, ScriptedReply(error_status=status, error_message=f"boom {status}"))
    with pytest.raises(exc) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert f"boom {status}" in str(info.value) or status == 404
    with pytest.raises(exc):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]


def test_mid_stream_error_reaches_the_client(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    emulator.set_reply(MODEL, ScriptedReply(error_after_chunks=2, error_message="runner crashed"))
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError, match="runner crashed"):
        list(stream)


def test_backend_dying_mid_stream_reaches_the_client(
    client: openai.OpenAI, emulator: OllamaEmulator, gateway: RunningGateway
) -> None:
    emulator.set_reply(MODEL, ScriptedReply(die_after_chunks=2))
    before = len(gateway.ledger.records)
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError):
        list(stream)
    wait_for(lambda: len(gateway.ledger.records) > before)
    assert gateway.ledger.records[-1].outcome == "failed_mid_stream"
    # and the gateway keeps serving
    emulator.set_reply(MODEL, ScriptedReply())
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices  # type: ignore[arg-type]


def test_unreachable_backend_is_502(gateway: RunningGateway) -> None:
    from tests.helpers import make_config, running_gateway

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    config = make_config(
        f'[[backends]]\nname="dead"\nurl="http://127.0.0.1:{dead_port}"\nconnect_timeout=2\n'
    )
    with (
        running_gateway(config) as gw,
        openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0) as c,
    ):
        with pytest.raises(openai.APIStatusError) as info:
            c.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        assert info.value.status_code == 502
        assert c.models.list().data == []


def test_usage_is_recorded(client: openai.OpenAI, gateway: RunningGateway) -> None:
    before = len(gateway.ledger.records)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    wait_for(lambda: len(gateway.ledger.records) > before)
    record = gateway.ledger.records[-1]
    assert record.prompt_tokens == 26 and record.outcome == "ok" and record.backend == "local"


def test_client_disconnect_mid_stream_cancels_upstream(
    gateway: RunningGateway, emulator: OllamaEmulator
) -> None:
    emulator.set_reply(MODEL, ScriptedReply(chunks=["tick "] * 200, delay_between_chunks=0.02))
    disconnects = emulator.disconnects
    before = len(gateway.ledger.records)
    with (
        httpx.Client(base_url=gateway.url) as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "stream": True},
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # got a first chunk; now hang up
    wait_for(lambda: emulator.disconnects > disconnects)
    wait_for(lambda: len(gateway.ledger.records) > before)
    assert gateway.ledger.records[-1].outcome == "client_disconnected"


def test_503_twice_then_success_is_retried_invisibly(
    client: openai.OpenAI, emulator: OllamaEmulator, gateway: RunningGateway
) -> None:
    reply = ScriptedReply(error_status=503, error_message="server busy", error_times=2)
    emulator.set_reply(MODEL, reply)
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content
    assert reply.errors_sent == 2
    wait_for(lambda: gateway.ledger.records[-1].attempts == 3)
