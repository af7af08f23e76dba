"""The ASGI adapter under real ASGI servers: uvicorn, hypercorn (on trio), and
mounted at a sub-path of a Starlette app, against the emulated Ollama.

The openai SDK drives it exactly as it drives the bundled server.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import hypercorn.config
import hypercorn.trio
import openai
import pytest
import uvicorn
from anyio.from_thread import start_blocking_portal
from sansio_gateway.adapters.asgi import GatewayASGI, create_app, route_path
from sansio_gateway.adapters.ledger import MemoryLedger
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from tests.emulators.ollama import OllamaEmulator, ScriptedReply
from tests.helpers import make_config, wait_for

MODEL = "llama3.2:1b"
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]
HELLO = "Hello! How can I help you today?"


def _config_toml(emulator: OllamaEmulator, extra: str = "") -> str:
    return (
        f"[server]\nmax_body_bytes = 65536\nread_timeout = 5\n"
        f'[[backends]]\nname = "local"\nkind = "ollama"\nurl = "{emulator.url}"\n'
        f"first_byte_timeout = 10\nidle_timeout = 10\n"
        f'[[models]]\nname = "gpt-4o-mini"\nbackend = "local"\ntarget = "{MODEL}"\n' + extra
    )


@dataclass
class Served:
    url: str
    app: GatewayASGI
    ledger: MemoryLedger


@contextlib.contextmanager
def serve_uvicorn(asgi: Any) -> Iterator[str]:
    """Run ``asgi`` under uvicorn in a thread; yields its base URL."""
    config = uvicorn.Config(asgi, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive())
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not stop"


@contextlib.contextmanager
def serve_hypercorn_trio(asgi: Any) -> Iterator[str]:
    """Run ``asgi`` under hypercorn on trio in a thread; yields its base URL."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 5
    with start_blocking_portal(backend="trio") as portal:
        stop = portal.call(anyio.Event)
        serve = partial(hypercorn.trio.serve, asgi, config, shutdown_trigger=stop.wait)
        future, binds = portal.start_task(serve)
        try:
            yield binds[0]
        finally:
            portal.call(stop.set)
            future.result(timeout=15)


@pytest.fixture(scope="module")
def served(emulator: OllamaEmulator) -> Iterator[Served]:
    ledger = MemoryLedger()
    app = create_app(make_config(_config_toml(emulator)), ledger=ledger)
    with serve_uvicorn(app) as url:
        yield Served(url=url, app=app, ledger=ledger)


@pytest.fixture
def client(served: Served) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=served.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def default_reply(emulator: OllamaEmulator) -> Iterator[None]:
    emulator.set_reply(MODEL, ScriptedReply(content=HELLO))
    yield
    emulator.set_reply(MODEL, ScriptedReply(content=HELLO))


# ---- the openai SDK under uvicorn --------------------------------------


def test_non_stream(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == HELLO
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 26


def test_stream(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HELLO
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


def test_stream_include_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 26
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_models_list(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids and "gpt-4o-mini" in ids


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope:1b", messages=MESSAGES)
    assert info.value.code == "model_not_found"


def test_bad_param_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=7)
    assert info.value.param == "temperature"


def test_usage_is_recorded(client: openai.OpenAI, served: Served) -> None:
    before = len(served.ledger.records)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    wait_for(lambda: len(served.ledger.records) > before)
    record = served.ledger.records[-1]
    assert (record.model, record.resolved_model, record.backend) == ("gpt-4o-mini", MODEL, "local")
    assert record.prompt_tokens == 26 and record.outcome == "ok"


def test_body_over_the_limit_is_413(served: Served) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = httpx.post(served.url + "/v1/chat/completions", json=body)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_client_disconnect_mid_stream_cancels_upstream(
    served: Served, emulator: OllamaEmulator
) -> None:
    emulator.set_reply(MODEL, ScriptedReply(chunks=["tick "] * 200, delay_between_chunks=0.02))
    disconnects = emulator.disconnects
    before = len(served.ledger.records)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    with (
        httpx.Client(base_url=served.url) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # got a first chunk; now hang up
    wait_for(lambda: emulator.disconnects > disconnects)
    wait_for(lambda: len(served.ledger.records) > before)
    record = served.ledger.records[-1]
    assert record.outcome == "client_disconnected" and record.status == 499


# ---- mounted at /llm in a Starlette app ---------------------------------


def _home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the host app")


def test_mounted_under_starlette(emulator: OllamaEmulator) -> None:
    ledger = MemoryLedger()
    gateway = create_app(make_config(_config_toml(emulator)), ledger=ledger)
    host = Starlette(
        routes=[Route("/", _home), Mount("/llm", app=gateway)], lifespan=gateway.lifespan
    )
    with (
        serve_uvicorn(host) as url,
        openai.OpenAI(base_url=url + "/llm/v1", api_key="x", max_retries=0) as client,
    ):
        assert httpx.get(url + "/").text == "the host app"
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == HELLO
        chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HELLO
        raw = httpx.post(url + "/llm/v1/chat/completions", json={"model": MODEL, "messages": []})
        assert raw.status_code == 400 and raw.json()["error"]["param"] == "messages"
        assert httpx.get(url + "/llm/v1/nothing-here").json()["error"]["code"] == "unknown_url"
    assert [r.outcome for r in ledger.records] == ["ok", "ok"]


def test_mounted_without_lifespan_discovers_on_first_use(emulator: OllamaEmulator) -> None:
    gateway = create_app(make_config(_config_toml(emulator)), ledger=MemoryLedger())
    host = Starlette(routes=[Mount("/llm", app=gateway)])  # the lifespan is not forwarded

    async def go() -> list[str]:
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            response = await c.get("/llm/v1/models")
        await gateway.aclose()
        return [m["id"] for m in response.json()["data"]]

    assert MODEL in anyio.run(go)


# ---- hypercorn on trio, with the SQLite ledger ---------------------------


def test_under_hypercorn_on_trio(emulator: OllamaEmulator, tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    config = make_config(_config_toml(emulator, f'[store]\nusage = "sqlite:///{db}"\n'))
    with (
        serve_hypercorn_trio(create_app(config)) as url,
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client,
    ):
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == HELLO
        stream = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 26
    # The lifespan shutdown flushed the ledger before the server returned.
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT outcome, prompt_tokens FROM usage").fetchall()
    assert rows == [("ok", 26), ("ok", 26)]


# ---- no sockets -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/v1/models", "", "/v1/models"),
        ("/llm/v1/models", "/llm", "/v1/models"),  # root_path inside path (ASGI today)
        ("/v1/models", "/llm", "/v1/models"),  # root_path outside path (older servers)
        ("/llm", "/llm", "/"),
        ("/llmx/v1/models", "/llm", "/llmx/v1/models"),  # a prefix of a segment is no match
        ("/llm/v1/models", "/llm/", "/v1/models"),
    ],
)
def test_route_path(path: str, root_path: str, expected: str) -> None:
    assert route_path({"path": path, "root_path": root_path}) == expected


def test_open_gateway_refuses_non_loopback_addresses() -> None:
    # No [auth] keys: like `serve`, only loopback is served unless allow_anonymous.
    app = create_app(make_config(), ledger=MemoryLedger())
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/models",
        "headers": [],
        "query_string": b"",
        "server": ("10.1.2.3", 8080),
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 503
    assert b"no API keys" in sent[1]["body"]


# ---- a server whose sends fail (hypercorn does this after a hang-up) -------


def _direct_call(app: GatewayASGI, body: dict[str, Any]) -> list[Any]:
    """One request straight into the app, with a ``send`` that fails as soon
    as body bytes are written; returns the messages it accepted."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
    }
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    accepted: list[Any] = []

    async def receive() -> Any:
        if messages:
            return messages.pop()
        await anyio.sleep_forever()  # the client stays, as far as receive can tell

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection reset by peer")
        accepted.append(message)

    async def go() -> None:
        async with app.lifespan():
            await app(scope, receive, send)

    anyio.run(go)
    return accepted


@pytest.mark.parametrize(("stream", "outcome"), [(False, "ok"), (True, "client_disconnected")])
def test_usage_survives_a_failing_send(
    emulator: OllamaEmulator, stream: bool, outcome: str
) -> None:
    emulator.set_reply(MODEL, ScriptedReply(chunks=["tick "] * 50, delay_between_chunks=0.01))
    ledger = MemoryLedger()
    app = create_app(make_config(_config_toml(emulator)), ledger=ledger)
    accepted = _direct_call(app, {"model": MODEL, "messages": MESSAGES, "stream": stream})
    assert [m["type"] for m in accepted] == ["http.response.start"]
    [record] = ledger.records
    assert record.outcome == outcome and record.backend == "local"


def test_usage_survives_the_server_cancelling_the_request(emulator: OllamaEmulator) -> None:
    # Servers cancel requests at the end of a graceful shutdown, and some
    # frameworks cancel the app when the client leaves.
    emulator.set_reply(MODEL, ScriptedReply(chunks=["tick "] * 200, delay_between_chunks=0.02))
    disconnects = emulator.disconnects
    ledger = MemoryLedger()
    app = create_app(make_config(_config_toml(emulator)), ledger=ledger)
    body = {"model": MODEL, "messages": MESSAGES, "stream": True}
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [],
        "query_string": b"",
        "server": ("127.0.0.1", 8080),
    }
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive() -> Any:
        if messages:
            return messages.pop()
        await anyio.sleep_forever()

    async def go() -> None:
        async with app.lifespan(), anyio.create_task_group() as tg:

            async def send(message: Any) -> None:
                if message["type"] == "http.response.body":
                    tg.cancel_scope.cancel()  # the first chunk is out: cancel the request

            tg.start_soon(app, scope, receive, send)

    anyio.run(go)
    [record] = ledger.records
    assert record.outcome == "client_disconnected" and record.status == 499
    wait_for(lambda: emulator.disconnects > disconnects)
