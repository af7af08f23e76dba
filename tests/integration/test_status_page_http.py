"""The status page over HTTP, without a browser: /ui's files and headers and
/admin/overview's access rules and figures, on the bundled server (asyncio
and trio) and the ASGI app; and limit use read from a real Redis store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sansio_gateway.adapters.asgi import create_app
from sansio_gateway.adapters.ledger import MemoryLedger

from sansio_gateway.auth import hash_key
from sansio_gateway.local.ui import ASSETS, SECURITY_HEADERS
from tests.emulators.ollama import OllamaEmulator, run_ollama_emulator
from tests.helpers import make_config, running_gateway, wait_for
from tests.integration.test_asgi import serve_uvicorn
from tests.redis_servers import redis_server

ADMIN_KEY = "sk-ov-admin-0123456789abcdef"
BOB_KEY = "sk-ov-bob-0123456789abcdef"
BODY = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


def _toml(emulator: OllamaEmulator, store: str = "") -> str:
    return f"""
[[backends]]
name = "local"
kind = "ollama"
url = "{emulator.url}"
[[auth.keys]]
id = "ops"
user = "root"
sha256 = "{hash_key(ADMIN_KEY)}"
admin = true
[[auth.keys]]
id = "bob-laptop"
user = "bob"
sha256 = "{hash_key(BOB_KEY)}"
[limits]
requests_per_minute = 60
tokens_per_day = 1000000
concurrent_requests = 4
{store}
"""


@pytest.fixture(scope="module")
def emulator() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator(fast=True) as emu:
        yield emu


@contextlib.contextmanager
def _serve(emulator: OllamaEmulator, server: str, store: str = "") -> Iterator[str]:
    config = make_config(_toml(emulator, store))
    if server == "asgi":
        with serve_uvicorn(create_app(config, ledger=MemoryLedger())) as url:
            yield url
    else:
        with running_gateway(config, runtime=server) as gateway:
            yield gateway.url


def _overview(client: httpx.Client) -> Any:
    response = client.get("/admin/overview", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    return response.json()


@pytest.mark.parametrize("server", ["asyncio", "trio", "asgi"])
def test_ui_files_and_overview_over_http(emulator: OllamaEmulator, server: str) -> None:
    with _serve(emulator, server) as url, httpx.Client(base_url=url, timeout=30) as client:
        for path, (_, content_type) in ASSETS.items():
            response = client.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"] == content_type.decode()
            for name, value in SECURITY_HEADERS:
                assert response.headers[name.decode()] == value.decode()
        missing = client.get("/ui/secrets.txt")
        assert missing.status_code == 404
        assert missing.headers["x-frame-options"] == "DENY"
        head = client.head("/ui")
        assert head.status_code == 200 and head.content == b""

        assert client.get("/admin/overview").status_code == 401
        bob = {"Authorization": f"Bearer {BOB_KEY}"}
        assert client.get("/admin/overview", headers=bob).status_code == 403

        assert client.post("/v1/chat/completions", json=BODY, headers=bob).status_code == 200
        # The request is counted once its summary is recorded, which an ASGI
        # server may run after the client already has the whole response.
        wait_for(lambda: _overview(client)["backends"][0]["requests"] == 1)
        document = _overview(client)
        (backend,) = document["backends"]
        assert backend["name"] == "local" and backend["circuit"] == "closed"
        assert backend["last_probe"]["ok"] is True
        assert backend["requests"] == 1 and backend["latency_ms"]["p50"] > 0
        assert document["series"]["requests"][-1] == 1  # not the page's own requests
        assert document["series"]["tokens"][-1] > 0
        users = {u["user"]: u for u in document["users"]}
        assert list(users) == ["root", "bob"]
        limits = {entry["name"]: entry for entry in users["bob"]["limits"]}
        assert limits["requests_per_minute"]["used"] == 1
        assert users["bob"]["today"]["tokens"] == users["bob"]["tokens"] > 0
        assert document["in_flight"] == {"requests": 0, "streams": 0}


def test_limit_use_is_read_from_a_shared_redis_store(emulator: OllamaEmulator) -> None:
    with redis_server() as redis:
        store = f'[store]\nurl = "redis://127.0.0.1:{redis.port}/0"\non_error = "open"\n'
        with (
            _serve(emulator, "asyncio", store) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            bob = {"Authorization": f"Bearer {BOB_KEY}"}
            for _ in range(3):
                response = client.post("/v1/chat/completions", json=BODY, headers=bob)
                assert response.status_code == 200
            users = {u["user"]: u for u in _overview(client)["users"]}
            limits = {entry["name"]: entry for entry in users["bob"]["limits"]}
            assert limits["requests_per_minute"]["used"] == 3
            assert limits["tokens_per_day"]["used"] == users["bob"]["tokens"] > 0
            assert _overview(client)["limit_store"]["serving"] is True
