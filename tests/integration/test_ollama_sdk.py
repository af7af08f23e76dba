"""The official ollama SDK against the real gateway's ``/api`` surface.

Three setups, each on both runtimes (asyncio and trio, the ``runtime`` fixture):

* translation: ollama SDK -> gateway ``/api`` -> emulated OpenAI-compatible backend;
* passthrough: ollama SDK -> gateway ``/api`` -> emulated Ollama (``kind = "ollama"``);
* chain: ollama SDK -> gateway A ``/api`` -> (``kind = "openai"``) gateway B ``/v1`` ->
  emulated Ollama.  Content, tool calls and token counts must arrive unchanged.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import ollama
import openai
import pytest

from tests.emulators.ollama import OllamaEmulator
from tests.emulators.ollama import ScriptedReply as NativeReply
from tests.emulators.openai_backend import (
    OpenAIEmulator,
    ScriptedReply,
    embedding_for,
    run_openai_emulator,
)
from tests.helpers import RunningGateway, make_config, running_gateway, wait_for

MODEL = "gpt-4o-mini"
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Say hello"}]
HELLO = "Hello! How can I help you today?"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
CALLS: list[dict[str, Any]] = [
    {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}},
    {"function": {"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}},
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} tool",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for name in ("get_weather", "get_time")
]
_TIMEOUTS = "first_byte_timeout = 10\nidle_timeout = 10\nmax_retries = 0\n"


@pytest.fixture(scope="module")
def backend() -> Iterator[OpenAIEmulator]:
    with run_openai_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def api(
    backend: OpenAIEmulator, emulator: OllamaEmulator, runtime: str
) -> Iterator[RunningGateway]:
    config = make_config(
        f'[[backends]]\nname = "oa"\nkind = "openai"\nurl = "{backend.url}"\n{_TIMEOUTS}'
        f'[[backends]]\nname = "ol"\nkind = "ollama"\nurl = "{emulator.url}"\n{_TIMEOUTS}'
        '[[models]]\nname = "local-llama"\nbackend = "ol"\ntarget = "llama3.2:1b"\n'
    )
    with running_gateway(config, runtime=runtime) as gw:
        yield gw


@pytest.fixture(scope="module")
def chain(gateway: RunningGateway, runtime: str) -> Iterator[RunningGateway]:
    """Gateway A, whose only backend is gateway B's OpenAI surface (B: conftest's ``gateway``)."""
    config = make_config(
        f'[[backends]]\nname = "b"\nkind = "openai"\nurl = "{gateway.url}/v1"\n{_TIMEOUTS}'
    )
    with running_gateway(config, runtime=runtime) as gw:
        yield gw


@pytest.fixture
def client(api: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=api.url) as c:
        yield c


@pytest.fixture(autouse=True)
def fresh_scripts(backend: OpenAIEmulator, emulator: OllamaEmulator) -> Iterator[None]:
    for model in backend.models.values():
        model.reply = ScriptedReply(
            reasoning=model.reply.reasoning if model.id == "o4-mini" else "",
            embedding_dim=model.reply.embedding_dim,
        )
    emulator.set_reply("llama3.2:1b", NativeReply(capabilities=["completion", "tools"]))
    backend.clear_requests()
    yield


def sent(backend: OpenAIEmulator, path: str = "/v1/chat/completions") -> dict[str, Any]:
    body = backend.last_request(path).json
    assert isinstance(body, dict)
    return body


def calls_of(message: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.function.name, dict(c.function.arguments)) for c in message.tool_calls or ()]


# -- translation: chat ------------------------------------------------------------------------


def test_list(client: ollama.Client) -> None:
    names = [m.model for m in client.list().models]
    assert {"gpt-4o-mini:latest", "text-embedding-3-small:latest", "llama3.2:1b"} <= set(names)
    assert "meta-llama/Llama-3.1-8B-Instruct:Q4" in names  # already tagged: no :latest


def test_chat(client: ollama.Client, backend: OpenAIEmulator, api: RunningGateway) -> None:
    response = client.chat(model=MODEL, messages=MESSAGES)
    assert response.model == MODEL and response.done and response.done_reason == "stop"
    assert response.message.role == "assistant" and response.message.content == HELLO
    assert (response.prompt_eval_count, response.eval_count) == (26, 7)
    assert response.created_at and response.created_at.endswith("Z")
    body = sent(backend)
    assert body["model"] == MODEL and body["stream"] is False and "stream_options" not in body
    wait_for(lambda: any(r.route == "ollama.chat" for r in api.ledger.records))
    record = next(r for r in api.ledger.records if r.route == "ollama.chat")
    assert (record.prompt_tokens, record.completion_tokens, record.backend) == (26, 7, "oa")


def test_chat_stream_with_synthetic_latest(client: ollama.Client, backend: OpenAIEmulator) -> None:
    parts = list(client.chat(model="gpt-4o-mini:latest", messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == HELLO
    assert all(p.model == "gpt-4o-mini:latest" for p in parts)
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (26, 7)
    body = sent(backend)
    assert body["model"] == MODEL and body["stream_options"] == {"include_usage": True}


def test_chat_stream_without_usage_from_the_backend(
    client: ollama.Client, backend: OpenAIEmulator
) -> None:
    backend.update_reply(MODEL, honour_include_usage=False)
    parts = list(client.chat(model=MODEL, messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == HELLO
    assert parts[-1].done and parts[-1].eval_count is None


def test_images_become_data_urls(client: ollama.Client, backend: OpenAIEmulator) -> None:
    client.chat(model=MODEL, messages=[{"role": "user", "content": "what?", "images": [PNG]}])
    parts = sent(backend)["messages"][0]["content"]
    b64 = base64.b64encode(PNG).decode()
    assert parts == [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
    ]


def test_options_format_and_think(client: ollama.Client, backend: OpenAIEmulator) -> None:
    client.chat(
        model=MODEL,
        messages=MESSAGES,
        format="json",
        think=False,
        options={"num_predict": 3, "temperature": 0.1, "top_k": 20, "repeat_penalty": 1.2},
    )
    body = sent(backend)
    assert body["max_tokens"] == 3 and body["temperature"] == 0.1 and body["top_k"] == 20
    assert "repeat_penalty" not in body and "frequency_penalty" not in body
    assert body["response_format"] == {"type": "json_object"}
    assert body["reasoning_effort"] == "none"


def test_thinking(client: ollama.Client) -> None:
    response = client.chat(model="o4-mini", messages=MESSAGES)
    assert response.message.thinking == "Let me think about the greeting."
    parts = list(client.chat(model="o4-mini", messages=MESSAGES, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == "Let me think about the greeting."
    assert client.chat(model="o4-mini", messages=MESSAGES, think=False).message.thinking is None


def test_length_limit(client: ollama.Client) -> None:
    response = client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 2})
    assert response.done_reason == "length" and response.message.content == "Hello! How"


def test_tool_calls(client: ollama.Client, backend: OpenAIEmulator) -> None:
    backend.update_reply(MODEL, tool_calls=CALLS)
    response = client.chat(model=MODEL, messages=MESSAGES, tools=TOOLS)
    assert calls_of(response.message) == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"timezone": "Europe/Paris"}),
    ]
    assert response.done_reason == "stop"
    assert sent(backend)["tools"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("same_index", [False, True])
def test_streamed_tool_calls_arrive_complete_in_one_line(
    client: ollama.Client, backend: OpenAIEmulator, same_index: bool
) -> None:
    backend.update_reply(
        MODEL, tool_calls=CALLS, argument_piece=3, same_index_for_all_calls=same_index
    )
    parts = list(client.chat(model=MODEL, messages=MESSAGES, tools=TOOLS, stream=True))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1
    assert calls_of(with_calls[0].message) == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"timezone": "Europe/Paris"}),
    ]
    assert parts[-1].done and parts[-1].done_reason == "stop"


def test_tool_results_are_paired_with_their_calls(
    client: ollama.Client, backend: OpenAIEmulator
) -> None:
    # ollama-python drops tool-call ids (docs/wire-notes.md, "Tool-call ids"); the backend
    # (like OpenAI) refuses a tool message that answers no call.
    history: list[dict[str, Any]] = [
        *MESSAGES,
        {"role": "assistant", "content": "", "tool_calls": CALLS},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "sunny"},
    ]
    assert client.chat(model=MODEL, messages=history).message.content == HELLO
    messages = sent(backend)["messages"]
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert [m["tool_call_id"] for m in messages[2:]] == [ids[1], ids[0]]


def test_load_and_unload(client: ollama.Client, backend: OpenAIEmulator) -> None:
    assert client.chat(model=MODEL, messages=[]).done_reason == "load"
    assert client.chat(model=MODEL, messages=[], keep_alive=0).done_reason == "unload"
    assert client.generate(model=MODEL, keep_alive=0).done_reason == "unload"
    assert backend.requests == []


# -- translation: generate, embeddings, local endpoints -----------------------------------------


def test_generate(client: ollama.Client, backend: OpenAIEmulator) -> None:
    response = client.generate(model=MODEL, prompt="hi", system="be nice")
    assert response.response == HELLO and response.done and response.eval_count == 7
    assert sent(backend)["messages"] == [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi"},
    ]
    parts = list(client.generate(model="o4-mini", prompt="hi", stream=True))
    assert "".join(p.response or "" for p in parts) == HELLO
    assert "".join(p.thinking or "" for p in parts) == "Let me think about the greeting."


def test_generate_raw_and_suffix_use_completions(
    client: ollama.Client, backend: OpenAIEmulator
) -> None:
    response = client.generate(model=MODEL, prompt="def add(", raw=True)
    assert response.response == HELLO and response.prompt_eval_count == 26
    assert sent(backend, "/v1/completions")["prompt"] == "def add("
    parts = list(client.generate(model=MODEL, prompt="def add(", suffix="\n", stream=True))
    assert "".join(p.response or "" for p in parts) == HELLO
    assert sent(backend, "/v1/completions")["suffix"] == "\n"


def test_embed(client: ollama.Client, backend: OpenAIEmulator) -> None:
    response = client.embed(model="text-embedding-3-small", input=["a", "b c"])
    assert response.embeddings == [embedding_for("a", 16), embedding_for("b c", 16)]
    assert response.prompt_eval_count == 3
    assert sent(backend, "/v1/embeddings")["encoding_format"] == "float"
    backend.update_reply(
        "text-embedding-3-small", shuffle_embeddings=True, embeddings_as_base64=True
    )
    again = client.embed(model="text-embedding-3-small", input=["a", "b c"], dimensions=4)
    assert again.embeddings == [embedding_for("a", 16, 4), embedding_for("b c", 16, 4)]


def test_legacy_embeddings(client: ollama.Client) -> None:
    assert client.embeddings(model="text-embedding-3-small", prompt="a").embedding == embedding_for(
        "a", 16
    )
    assert client.embeddings(model="text-embedding-3-small", prompt="").embedding == []


def test_show_ps_version_and_root(client: ollama.Client, api: RunningGateway) -> None:
    show = client.show("gpt-4o-mini:latest")
    assert show.modelinfo == {} and show.capabilities == ["completion", "tools"]
    assert show.modified_at is not None
    assert client.ps().models == []
    version = httpx.get(api.url + "/api/version").json()["version"]
    assert all(part.isdigit() for part in version.split("."))
    root = httpx.get(api.url + "/")
    assert root.text == "Ollama is running" and root.headers["content-type"].startswith(
        "text/plain"
    )
    head = httpx.head(api.url + "/")
    assert head.status_code == 200 and head.content == b""


def test_model_management(client: ollama.Client) -> None:
    assert client.pull(MODEL).status == "success"
    assert [p.status for p in client.pull(MODEL, stream=True)] == ["success"]
    calls: list[Callable[[], object]] = [
        lambda: client.push(MODEL),
        lambda: client.copy(MODEL, "copy"),
        lambda: client.delete(MODEL),
        lambda: client.create(model="new", from_=MODEL),
    ]
    for call in calls:
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 501 and "gateway" in info.value.error


# -- translation: errors ---------------------------------------------------------------------------


def test_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="no-such-model", messages=MESSAGES)
    assert info.value.status_code == 404 and "no-such-model" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.show("no-such-model")
    assert info.value.status_code == 404


def test_bad_request_is_400(client: ollama.Client, backend: OpenAIEmulator) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model=MODEL, messages=MESSAGES, think="ultra")
    assert info.value.status_code == 400 and "invalid think value" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        # The backend's own 400 (OpenAI allows 4 stop sequences), before any byte.
        stop = ["a", "b", "c", "d", "e"]
        list(client.chat(model=MODEL, messages=MESSAGES, stream=True, options={"stop": stop}))
    assert info.value.status_code == 400 and "stop" in info.value.error
    assert backend.last_request().path == "/v1/chat/completions"


def test_upstream_500(client: ollama.Client, backend: OpenAIEmulator) -> None:
    backend.update_reply(MODEL, error_status=500)
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as info:
            result = client.chat(model=MODEL, messages=MESSAGES, stream=stream)
            if stream:
                list(result)
        assert info.value.status_code == 500
        assert info.value.error == "The server had an error while processing your request."


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"error_after_chunks": 2, "error_message": "overloaded"}, "overloaded"),
        ({"die_after_chunks": 2}, "connection to backend 'oa' was lost"),
    ],
)
def test_mid_stream_failures_raise(
    client: ollama.Client, backend: OpenAIEmulator, fault: dict[str, Any], message: str
) -> None:
    backend.update_reply(MODEL, **fault)
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError) as info:
        for part in client.chat(model=MODEL, messages=MESSAGES, stream=True):
            seen.append(part.message.content or "")
    assert "".join(seen) == "Hello! How"
    assert message in info.value.error or "closed the stream" in info.value.error


def test_async_client(api: RunningGateway, runtime: str) -> None:
    async def main() -> tuple[str, str]:
        async with ollama.AsyncClient(host=api.url) as client:
            whole = await client.chat(model=MODEL, messages=MESSAGES)
            stream = await client.chat(model=MODEL, messages=MESSAGES, stream=True)
            parts = [p async for p in stream]
        return whole.message.content or "", "".join(p.message.content or "" for p in parts)

    assert anyio.run(main, backend=runtime) == (HELLO, HELLO)


# -- passthrough to an Ollama backend ----------------------------------------------------------------


def test_passthrough(client: ollama.Client, emulator: OllamaEmulator, api: RunningGateway) -> None:
    emulator.clear_requests()
    response = client.chat(model="local-llama", messages=MESSAGES, options={"num_ctx": 4096})
    assert response.model == "local-llama" and response.message.content == HELLO
    native = emulator.last_request("/api/chat").json
    assert native["model"] == "llama3.2:1b" and native["options"] == {"num_ctx": 4096}
    parts = list(client.chat(model="llama3.2:1b", messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == HELLO
    assert parts[-1].eval_count == 7 and parts[-1].prompt_eval_count == 26
    emulator.update_reply("llama3.2:1b", tool_calls=CALLS)
    streamed = list(client.chat(model="llama3.2:1b", messages=MESSAGES, tools=TOOLS, stream=True))
    assert [calls_of(p.message) for p in streamed if p.message.tool_calls] == [
        [
            ("get_weather", CALLS[0]["function"]["arguments"]),
            ("get_time", CALLS[1]["function"]["arguments"]),
        ]
    ]
    assert client.embed(model="nomic-embed-text", input="x").embeddings[0][:2] != []
    assert "completion" in (client.show("qwen3:0.6b").capabilities or [])
    wait_for(
        lambda: any(r.backend == "ol" and r.completion_tokens == 7 for r in api.ledger.records)
    )


def test_passthrough_errors(client: ollama.Client, emulator: OllamaEmulator) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nomic-embed-text", messages=MESSAGES)
    assert info.value.status_code == 400 and "does not support chat" in info.value.error
    emulator.update_reply("llama3.2:1b", error_after_chunks=1, error_message="oom")
    with pytest.raises(ollama.ResponseError, match="oom"):
        list(client.chat(model="llama3.2:1b", messages=MESSAGES, stream=True))


# -- the chain: A (/api over kind=openai) -> B (/v1 over kind=ollama) -> emulated Ollama -------------


@pytest.fixture
def via(chain: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=chain.url) as c:
        yield c


@pytest.fixture
def direct(emulator: OllamaEmulator) -> Iterator[ollama.Client]:
    with ollama.Client(host=emulator.url) as c:
        yield c


def test_chain_content_and_counts(via: ollama.Client, direct: ollama.Client) -> None:
    truth = direct.chat(model="llama3.2:1b", messages=MESSAGES)
    counts = (truth.prompt_eval_count, truth.eval_count)
    relayed = via.chat(model="llama3.2:1b", messages=MESSAGES)
    assert relayed.message.content == truth.message.content == HELLO
    assert (relayed.prompt_eval_count, relayed.eval_count) == counts
    assert relayed.done_reason == truth.done_reason == "stop"
    parts = list(via.chat(model="llama3.2:1b", messages=MESSAGES, stream=True))
    assert "".join(p.message.content or "" for p in parts) == HELLO
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == counts
    generated = via.generate(model="llama3.2:1b", prompt="hi")
    assert generated.response == HELLO and generated.eval_count == truth.eval_count


def test_chain_thinking(via: ollama.Client, direct: ollama.Client) -> None:
    truth = direct.chat(model="qwen3:0.6b", messages=MESSAGES)
    relayed = via.chat(model="qwen3:0.6b", messages=MESSAGES)
    assert truth.message.thinking and relayed.message.thinking == truth.message.thinking
    assert relayed.message.content == truth.message.content


@pytest.mark.parametrize("stream", [False, True])
def test_chain_tool_calls(
    via: ollama.Client, direct: ollama.Client, emulator: OllamaEmulator, stream: bool
) -> None:
    emulator.update_reply("llama3.2:1b", tool_calls=CALLS)
    truth = direct.chat(model="llama3.2:1b", messages=MESSAGES, tools=TOOLS)
    if stream:
        parts = list(via.chat(model="llama3.2:1b", messages=MESSAGES, tools=TOOLS, stream=True))
        [message] = [p.message for p in parts if p.message.tool_calls]
        counts = (parts[-1].prompt_eval_count, parts[-1].eval_count)
    else:
        relayed = via.chat(model="llama3.2:1b", messages=MESSAGES, tools=TOOLS)
        message, counts = relayed.message, (relayed.prompt_eval_count, relayed.eval_count)
    assert (
        calls_of(message)
        == calls_of(truth.message)
        == [(c["function"]["name"], c["function"]["arguments"]) for c in CALLS]
    )
    assert counts == (truth.prompt_eval_count, truth.eval_count)
    # ...and the answer to those calls goes back down the chain, paired.
    history: list[dict[str, Any]] = [
        *MESSAGES,
        {"role": "assistant", "content": "", "tool_calls": CALLS},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
    ]
    emulator.update_reply("llama3.2:1b", tool_calls=[])
    assert via.chat(model="llama3.2:1b", messages=history).message.content == HELLO
    native = emulator.last_request("/api/chat").json
    assert [m.get("tool_name") for m in native["messages"][2:]] == ["get_weather", "get_time"]


def test_chain_embed(via: ollama.Client, direct: ollama.Client) -> None:
    truth = direct.embed(model="nomic-embed-text", input=["a", "b"])
    relayed = via.embed(model="nomic-embed-text:latest", input=["a", "b"])
    assert len(relayed.embeddings) == 2
    for got, want in zip(relayed.embeddings, truth.embeddings, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


# -- the emulated backend itself speaks OpenAI (checked with the official openai SDK) ----------------


@pytest.fixture
def openai_client(backend: OpenAIEmulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=backend.url, api_key="x", max_retries=0) as c:
        yield c


def test_emulator_streams_tool_calls_and_usage_as_openai_does(
    openai_client: openai.OpenAI, backend: OpenAIEmulator
) -> None:
    backend.update_reply(MODEL, tool_calls=CALLS, argument_piece=4)
    stream = openai_client.chat.completions.create(  # type: ignore[call-overload]
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 33
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            calls.setdefault(call.index, []).append(call.function.arguments or "")
    assert ["".join(parts) for _, parts in sorted(calls.items())] == [
        '{"city":"Paris","unit":"celsius"}',
        '{"timezone":"Europe/Paris"}',
    ]


def test_emulator_embeddings_and_errors_as_openai_does(openai_client: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it.
    vector = openai_client.embeddings.create(model="text-embedding-3-small", input="a")
    assert vector.data[0].embedding == embedding_for("a", 16)
    with pytest.raises(openai.NotFoundError) as info:
        openai_client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(
            model=MODEL, messages=[{"role": "tool", "content": "x", "tool_call_id": "c"}]
        )


def test_emulator_mid_stream_error_is_an_openai_api_error(
    openai_client: openai.OpenAI, backend: OpenAIEmulator
) -> None:
    backend.update_reply(MODEL, error_after_chunks=1, error_message="overloaded")
    with pytest.raises(openai.APIError, match="overloaded"):
        list(openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))  # type: ignore[arg-type]
