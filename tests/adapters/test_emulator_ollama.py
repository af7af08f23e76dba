"""The Ollama emulator must be faithful to the native wire (docs/wire-notes.md).

Every test runs a fresh emulator over loopback and talks to it with httpx or the official
``ollama`` SDK. No test sleeps: slow scripts are observed through ``emu.wait_for``.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import ollama
import pytest
from sansio_gateway.adapters.emulator.ollama import (
    OLLAMA_VERSION,
    EmulatorModel,
    OllamaEmulator,
    ScriptedReply,
    embedding_for,
    model_key,
    run_ollama_emulator,
    serve_ollama_emulator,
    token_chunks,
)

CHAT = "llama3.2:1b"
THINKER = "qwen3:0.6b"
HELLO = "Hello! How can I help you today?"
USER = [{"role": "user", "content": "hi"}]
RFC3339_NANO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
TOOL_CALLS = [
    {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}},
    {"function": {"name": "get_time", "arguments": {"tz": "Europe/Paris"}}},
]


@pytest.fixture
def emu() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator() as emulator:
        yield emulator
        assert emulator.errors == []


@pytest.fixture
def http(emu: OllamaEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=5.0) as client:
        yield client


@pytest.fixture
def client(emu: OllamaEmulator) -> Iterator[ollama.Client]:
    with ollama.Client(host=emu.url, timeout=5.0) as sdk:
        yield sdk


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


def chat(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post("/api/chat", json={"model": CHAT, "messages": USER, **fields})


# --------------------------------------------------------------------------- simple endpoints


def test_root_and_version(http: httpx.Client) -> None:
    root = http.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"].startswith("text/plain")
    head = http.head("/")
    assert (head.status_code, head.content) == (200, b"")
    assert http.get("/api/version").json() == {"version": OLLAMA_VERSION}


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/api/nope"), ("POST", "/api/pull"), ("GET", "/api/chat")]
)
def test_unknown_routes_get_gins_plain_404(http: httpx.Client, method: str, path: str) -> None:
    response = http.request(method, path)
    assert (response.status_code, response.text) == (404, "404 page not found")
    assert response.headers["content-type"] == "text/plain"


def test_tags_list_names_with_slashes_and_tags(client: ollama.Client) -> None:
    names = [model.model for model in client.list().models]
    assert "hf.co/someuser/some-model:Q4_K_M" in names
    assert "nomic-embed-text:latest" in names  # Ollama shows the implicit tag
    assert all(model.details and model.details.family for model in client.list().models)


def test_show_by_model_or_legacy_name(client: ollama.Client, http: httpx.Client) -> None:
    shown = client.show(THINKER)
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.modelinfo is not None and shown.modelinfo["qwen3.context_length"] == 40_960
    assert shown.details is not None and shown.details.family == "qwen3"
    legacy = http.post("/api/show", json={"name": "hf.co/someuser/some-model:Q4_K_M"})
    assert legacy.status_code == 200 and "model_info" in legacy.json()
    missing = http.post("/api/show", json={"model": "nope:1b"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nope:1b' not found"})


def test_ps_lists_models_loaded_by_requests(client: ollama.Client, http: httpx.Client) -> None:
    assert client.ps().models == []
    client.chat(model=CHAT, messages=USER)
    assert [model.model for model in client.ps().models] == [CHAT]
    unload = http.post("/api/generate", json={"model": CHAT, "prompt": "", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    assert client.ps().models == []


def test_model_names_match_like_ollamas() -> None:
    assert model_key("Library/Nomic-Embed-Text") == "nomic-embed-text:latest"
    assert model_key("registry.ollama.ai/library/llama3.2:1b") == "llama3.2:1b"
    assert model_key("hf.co/u/m:Q4_K_M") == "hf.co/u/m:q4_k_m"


# --------------------------------------------------------------------------- chat


def test_chat_streams_by_default_as_ndjson(http: httpx.Client) -> None:
    response = chat(http)  # no "stream" key: the native default is true
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["transfer-encoding"] == "chunked"
    lines = ndjson(response)
    *pieces, final = lines
    assert "".join(line["message"]["content"] for line in pieces) == HELLO
    assert all(
        line["done"] is False and RFC3339_NANO_UTC.match(line["created_at"]) for line in pieces
    )
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["eval_count"] == len(pieces) and final["prompt_eval_count"] == 26
    assert {
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    } <= final.keys()


def test_chat_stream_through_the_sdk(client: ollama.Client) -> None:
    parts = list(client.chat(model=CHAT, messages=USER, stream=True))
    assert "".join(part.message.content or "" for part in parts) == HELLO
    assert parts[-1].done and parts[-1].eval_count == len(parts) - 1


def test_chat_without_stream(client: ollama.Client) -> None:
    response = client.chat(model=CHAT, messages=USER, stream=False)
    assert response.message.content == HELLO and response.done_reason == "stop"
    assert response.eval_count == 7 and response.prompt_eval_count == 26


def test_explicit_chunks_and_counts(emu: OllamaEmulator, client: ollama.Client) -> None:
    emu.set_reply(CHAT, ScriptedReply(chunks=["a", "b", " c"], eval_count=42, prompt_eval_count=3))
    parts = list(client.chat(model=CHAT, messages=USER, stream=True))
    assert [part.message.content for part in parts] == ["a", "b", " c", ""]
    assert (parts[-1].eval_count, parts[-1].prompt_eval_count) == (42, 3)


def test_thinking_models_think_unless_told_not_to(
    client: ollama.Client, http: httpx.Client
) -> None:
    parts = list(client.chat(model=THINKER, messages=USER, stream=True))
    thinking = "".join(part.message.thinking or "" for part in parts)
    assert thinking.startswith("The user says hello")
    assert "".join(part.message.content or "" for part in parts) == HELLO
    quiet = client.chat(model=THINKER, messages=USER, think=False)
    assert quiet.message.thinking is None and quiet.message.content == HELLO
    refused = chat(http, think=True)
    assert (refused.status_code, refused.json()) == (
        400,
        {"error": f'"{CHAT}" does not support thinking'},
    )


def test_num_predict_caps_the_pieces(client: ollama.Client) -> None:
    parts = list(client.chat(model=CHAT, messages=USER, stream=True, options={"num_predict": 3}))
    assert [part.message.content for part in parts[:-1]] == ["Hello!", " How", " can"]
    assert (parts[-1].done_reason, parts[-1].eval_count) == ("length", 3)


def test_tool_calls_stream_in_one_line_after_the_content(
    emu: OllamaEmulator, http: httpx.Client
) -> None:
    emu.set_reply(
        CHAT,
        ScriptedReply(
            content="Checking.", tool_calls=TOOL_CALLS, capabilities=["completion", "tools"]
        ),
    )
    *pieces, calls_line, final = ndjson(chat(http))
    assert [line["message"]["content"] for line in pieces] == ["Checking."]
    calls = calls_line["message"]["tool_calls"]
    assert [call["function"]["index"] for call in calls] == [0, 1]
    assert calls[0]["function"] == {
        "index": 0,
        "name": "get_weather",
        "arguments": {"city": "Paris", "unit": "C"},
    }
    assert (
        all(re.fullmatch(r"call_\w+", call["id"]) for call in calls)
        and calls[0]["id"] != calls[1]["id"]
    )
    assert final["done_reason"] == "stop" and final["message"] == {
        "role": "assistant",
        "content": "",
    }


def test_tool_calls_without_stream_and_without_ids(
    emu: OllamaEmulator, client: ollama.Client
) -> None:
    emu.update_reply(CHAT, content="", tool_calls=TOOL_CALLS, tool_call_ids=False)
    response = client.chat(model=CHAT, messages=USER, tools=[], stream=False)
    assert response.message.content == ""
    assert [call.function.name for call in response.message.tool_calls or []] == [
        "get_weather",
        "get_time",
    ]
    raw = emu.requests[-1]
    assert raw.json["stream"] is False
    body = httpx.post(
        f"{emu.url}/api/chat", json={"model": CHAT, "messages": USER, "stream": False}
    ).json()
    assert all("id" not in call for call in body["message"]["tool_calls"])  # like Ollama < 0.12.10


def test_load_and_format(http: httpx.Client) -> None:
    loaded = chat(http, messages=[])
    assert loaded.headers["content-type"].startswith("application/json")
    assert loaded.json()["done_reason"] == "load"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert chat(http, format=schema, stream=False).status_code == 200
    assert chat(http, format="json", stream=False).status_code == 200
    assert chat(http, format="xml").status_code == 400


# --------------------------------------------------------------------------- generate and embeddings


def test_generate_stream_and_whole(client: ollama.Client, http: httpx.Client) -> None:
    parts = list(client.generate(model=CHAT, prompt="hi", system="be brief", stream=True))
    assert "".join(part.response or "" for part in parts) == HELLO
    assert parts[-1].done and parts[-1].context and parts[-1].eval_count == len(parts) - 1
    whole = client.generate(model=THINKER, prompt="hi")
    assert whole.response == HELLO and whole.thinking and whole.done_reason == "stop"
    raw = http.post(
        "/api/generate", json={"model": CHAT, "prompt": "hi", "raw": True, "stream": False}
    )
    assert "context" not in raw.json()  # raw skips the template and the context


def test_generate_suffix_needs_the_insert_capability(http: httpx.Client) -> None:
    fim = {"prompt": "def add(a, b):\n    ", "suffix": "\n", "stream": False}
    refused = http.post("/api/generate", json={"model": CHAT, **fim})
    assert (refused.status_code, refused.json()) == (
        400,
        {"error": f'"{CHAT}" does not support insert'},
    )
    accepted = http.post("/api/generate", json={"model": "qwen2.5-coder:0.5b", **fim})
    assert accepted.json()["response"] == "return a + b"


def test_embed_is_deterministic_and_normalised(client: ollama.Client) -> None:
    response = client.embed(model="nomic-embed-text", input=["alpha", "beta gamma"])
    assert [len(vector) for vector in response.embeddings] == [768, 768]
    assert list(response.embeddings[0]) == embedding_for("alpha", 768)
    assert math.isclose(math.fsum(v * v for v in response.embeddings[1]), 1.0)
    assert response.prompt_eval_count == 3
    short = client.embed(model="nomic-embed-text", input="alpha", dimensions=4).embeddings[0]
    assert len(short) == 4 and math.isclose(math.fsum(v * v for v in short), 1.0)
    assert list(short) == embedding_for("alpha", 768, 4)


def test_legacy_embeddings(client: ollama.Client, http: httpx.Client) -> None:
    assert list(client.embeddings(model=CHAT, prompt="alpha").embedding) == embedding_for(
        "alpha", 8
    )
    assert http.post("/api/embeddings", json={"model": CHAT, "prompt": ""}).json() == {
        "embedding": []
    }
    bad = http.post("/api/embed", json={"model": CHAT, "input": [1, 2]})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid input type"})


# --------------------------------------------------------------------------- errors


def test_unknown_model_is_a_404_for_the_sdk(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="nope:1b", messages=USER)
    assert raised.value.status_code == 404
    assert raised.value.error == 'model "nope:1b" not found, try pulling it first'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"x", "invalid character 'x' looking for beginning of value"),
        (b'{"model":"m",}', "invalid character '}' looking for beginning of object key string"),
        (b'{"model":"m"}}', "invalid character '}' after top-level value"),
        (b'{"model":"m"', "unexpected EOF"),
        (b"[]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (b"{}", "model is required"),
        (
            b'{"model":"llama3.2:1b","messages":"hi"}',
            "json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message",
        ),
        (
            b'{"model":"llama3.2:1b","messages":[{"role":"user","content":1}]}',
            "json: cannot unmarshal number into Go struct field ChatRequest.messages.content of type string",
        ),
        (
            b'{"model":"llama3.2:1b","stream":"yes"}',
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            b'{"model":"llama3.2:1b","messages":[{"role":"user","images":["%%%"]}]}',
            "illegal base64 data at input byte 0",
        ),
    ],
)
def test_bad_requests_get_gos_messages(http: httpx.Client, body: bytes, message: str) -> None:
    response = http.post("/api/chat", content=body)
    assert (response.status_code, response.json()) == (400, {"error": message})
    assert response.headers["content-type"].startswith("application/json")


def test_scripted_error_status(emu: OllamaEmulator, http: httpx.Client) -> None:
    emu.update_reply(CHAT, error_status=503, error_message="model is overloaded")
    response = chat(http)
    assert (response.status_code, response.json()) == (503, {"error": "model is overloaded"})


def test_error_after_chunks_is_an_error_line(
    emu: OllamaEmulator, http: httpx.Client, client: ollama.Client
) -> None:
    emu.update_reply(CHAT, error_after_chunks=2, error_message="boom")
    response = chat(http)
    assert response.status_code == 200
    lines = ndjson(response)
    assert len(lines) == 3 and lines[-1] == {"error": "boom"}
    with pytest.raises(ollama.ResponseError, match="boom"):
        list(client.chat(model=CHAT, messages=USER, stream=True))
    assert chat(http, stream=False).status_code == 500


def test_die_after_chunks_breaks_the_connection(emu: OllamaEmulator, http: httpx.Client) -> None:
    emu.update_reply(CHAT, die_after_chunks=2)
    received: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/api/chat", json={"model": CHAT, "messages": USER}) as response,
    ):
        received.extend(response.iter_lines())
    assert [json.loads(line)["message"]["content"] for line in received] == ["Hello!", " How"]
    assert emu.disconnects == 0  # the server hung up, not the client


# --------------------------------------------------------------------------- connections


def test_keep_alive_reuses_one_connection(emu: OllamaEmulator, http: httpx.Client) -> None:
    for _ in range(3):
        assert chat(http, stream=False).status_code == 200
    assert http.get("/api/tags").status_code == 200
    assert {request.connection for request in emu.requests} == {1}
    assert emu.total_connections == 1


def test_chunked_request_bodies_are_reassembled(emu: OllamaEmulator, http: httpx.Client) -> None:
    body = json.dumps({"model": CHAT, "messages": USER, "stream": False}).encode()
    response = http.post("/api/chat", content=iter([body[:10], body[10:]]))
    assert response.json()["message"]["content"] == HELLO
    recorded = emu.last_request("/api/chat")
    assert recorded.headers["transfer-encoding"] == "chunked" and recorded.body == body


def test_client_disconnect_mid_stream_is_observed(emu: OllamaEmulator, http: httpx.Client) -> None:
    emu.update_reply(CHAT, delay_between_chunks=30.0)  # only the emulator waits, on anyio.sleep
    with http.stream("POST", "/api/chat", json={"model": CHAT, "messages": USER}) as response:
        # Keep the iterator: a dropped one is finalised, and that closes the response early.
        lines = response.iter_lines()
        assert json.loads(next(lines))["message"]["content"] == "Hello!"
        assert emu.active_streams == 1
    # Leaving the block closes the unfinished response, and with it the connection.
    assert emu.wait_for(lambda: emu.disconnects == 1 and emu.active_streams == 0)
    assert emu.disconnected.is_set()


def test_a_slow_first_byte_blocks_nobody_and_a_hang_up_is_seen(
    emu: OllamaEmulator, http: httpx.Client
) -> None:
    emu.update_reply(CHAT, delay_first_byte=30.0)
    body = json.dumps({"model": CHAT, "messages": USER}).encode()
    with socket.create_connection(("127.0.0.1", emu.port)) as raw:
        raw.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        assert emu.wait_for(lambda: emu.active_requests == 1)
        assert http.get("/api/version").status_code == 200  # served while the other one waits
    assert emu.wait_for(lambda: emu.disconnects == 1 and emu.active_requests == 0)


def test_broken_http_gets_a_plain_400(emu: OllamaEmulator) -> None:
    with socket.create_connection(("127.0.0.1", emu.port)) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        reply = b""
        while chunk := raw.recv(65536):  # the emulator closes after answering
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.endswith(b"400 Bad Request")


def test_expect_100_continue_is_honoured(emu: OllamaEmulator) -> None:
    body = json.dumps({"model": CHAT, "messages": USER, "stream": False}).encode()
    with socket.create_connection(("127.0.0.1", emu.port)) as raw:
        head = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        raw.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body))
        assert raw.recv(65536).startswith(b"HTTP/1.1 100 ")
        raw.sendall(body)
        reply = b""
        while HELLO.encode() not in reply:
            reply += raw.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 ")


def test_run_helper_stops_cleanly_with_streams_pending() -> None:
    before = threading.active_count()
    with run_ollama_emulator() as emulator:
        emulator.update_reply(CHAT, delay_between_chunks=30.0)
        client = httpx.Client(base_url=emulator.url)
        stream = client.stream("POST", "/api/chat", json={"model": CHAT, "messages": USER})
        lines = stream.__enter__().iter_lines()
        next(lines)
        url = emulator.url
    assert threading.active_count() == before
    with pytest.raises(httpx.RemoteProtocolError):
        list(lines)  # the pending stream was cancelled, not completed
    stream.__exit__(None, None, None)
    client.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


def test_fast_mode_serves_cached_bytes_in_one_write() -> None:
    with (
        run_ollama_emulator(fast=True, record_requests=False) as emulator,
        httpx.Client(base_url=emulator.url) as http,
    ):
        first, second = chat(http).content, chat(http).content
        assert first == second and emulator.requests == []
        assert "".join(line["message"]["content"] for line in ndjson(chat(http))[:-1]) == HELLO


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serves_inside_the_callers_event_loop(backend: str) -> None:
    async def scenario() -> list[str]:
        models = [EmulatorModel("tiny:1b", ScriptedReply(chunks=token_chunks(3)))]
        async with (
            serve_ollama_emulator(models) as emulator,
            httpx.AsyncClient(base_url=emulator.url) as http,
        ):
            response = await http.post("/api/chat", json={"model": "tiny:1b", "messages": USER})
            assert await emulator.wait_for_async(lambda: emulator.active_requests == 0)
            return [json.loads(line)["message"]["content"] for line in response.text.splitlines()]

    assert anyio.run(scenario, backend=backend) == [*token_chunks(3), ""]
