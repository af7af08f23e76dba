"""What the operator reads at startup and on each probe (issue 16, items 5-6)."""

from __future__ import annotations

import logging

import anyio
import pytest
from sansio_gateway.adapters.app import GatewayApp
from sansio_gateway.adapters.ledger import MemoryLedger

from tests.emulators.ollama import OllamaEmulator
from tests.helpers import make_config


def _two_backends_one_ollama(emulator: OllamaEmulator, store: str = "") -> GatewayApp:
    config = make_config(
        f'[[backends]]\nname = "a"\nurl = "{emulator.url}"\n'
        f'[[backends]]\nname = "b"\nurl = "{emulator.url}"\n' + store
    )
    return GatewayApp(config, ledger=MemoryLedger())


def _clash_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is offered by" in r.getMessage()]


def test_a_standing_clash_is_logged_once_not_per_probe(
    emulator: OllamaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    app = _two_backends_one_ollama(emulator)

    async def probes() -> None:
        for _ in range(3):
            await app.discover_all()
        await app.upstream.aclose()

    with caplog.at_level(logging.WARNING):
        anyio.run(probes)
    lines = _clash_lines(caplog)
    assert lines and len(lines) == len(set(lines)) == len(emulator.models)
    assert all("a, b; a wins" in line for line in lines)


def test_only_the_first_worker_logs_clashes(
    emulator: OllamaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    config = _two_backends_one_ollama(emulator).config
    second = GatewayApp(config, ledger=MemoryLedger(), worker_index=1)

    async def probe() -> None:
        await second.discover_all()
        await second.upstream.aclose()

    with caplog.at_level(logging.WARNING):
        anyio.run(probe)
    assert _clash_lines(caplog) == [] and not second.announce


def test_the_startup_listing_names_the_store_without_its_password(
    emulator: OllamaEmulator,
) -> None:
    store = '[store]\nurl = "redis://:hunter2@127.0.0.1:1/0"\nusage = "memory://"\n'
    lines = _two_backends_one_ollama(emulator, store).describe()
    # One line names the store, its key and (issue 11) whether it is warm.
    store_lines = [line for line in lines if line.startswith("limits: store.url = ")]
    assert store_lines == [
        "limits: store.url = redis://:***@127.0.0.1:1/0: NOT READY (not yet connected);"
        " /ready is 503 until it is"
    ]
    assert "usage ledger: store.usage = memory://" in lines
    assert not any("hunter2" in line for line in lines)


def test_an_unreachable_usage_ledger_is_named_in_the_503(emulator: OllamaEmulator) -> None:
    import contextlib

    import httpx

    from tests.redis_servers import free_port

    port = free_port()
    config = make_config(
        f'[[backends]]\nname = "a"\nurl = "{emulator.url}"\n'
        f'[store]\nusage = "redis://:hunter2@127.0.0.1:{port}/0"\n'
    )
    app = GatewayApp(config)  # the ledger from store.usage
    with anyio.from_thread.start_blocking_portal() as portal:
        future, (host, bound) = portal.start_task(app.serve, "127.0.0.1", 0)
        try:
            answer = httpx.get(f"http://{host}:{bound}/admin/usage", timeout=30)
        finally:
            future.cancel()
            with contextlib.suppress(BaseException):
                future.result(timeout=10)
    assert answer.status_code == 503
    message = answer.json()["error"]["message"]
    assert f"redis://:***@127.0.0.1:{port}/0 (store.usage)" in message
    assert "hunter2" not in message


def test_an_unreachable_redis_store_is_one_line_at_startup(
    emulator: OllamaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    import contextlib
    import time

    from tests.redis_servers import free_port

    port = free_port()
    config = make_config(
        f'[[backends]]\nname = "a"\nurl = "{emulator.url}"\n'
        f'[store]\nurl = "redis://:hunter2@127.0.0.1:{port}/0"\nusage = "memory://"\n'
    )
    app = GatewayApp(config, ledger=MemoryLedger())

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "(store.url) not ready" in r.getMessage()]

    with caplog.at_level(logging.WARNING), anyio.from_thread.start_blocking_portal() as portal:
        future, _ = portal.start_task(app.serve, "127.0.0.1", 0)
        try:
            deadline = time.monotonic() + 30
            while not said() and time.monotonic() < deadline:
                time.sleep(0.02)  # polling a log another thread writes; no event to await
        finally:
            future.cancel()
            with contextlib.suppress(BaseException):
                future.result(timeout=10)
    # One line, although the warm-up keeps retrying every 0.1 s.
    [line] = said()
    assert line.startswith(
        f"rate-limit store redis://:***@127.0.0.1:{port}/0 (store.url) not ready"
    )
    assert "hunter2" not in line
