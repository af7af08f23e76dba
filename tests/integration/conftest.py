"""Integration fixtures: a real emulated Ollama and a real gateway on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sansio_gateway.config import GatewayConfig
from tests.emulators.ollama import OllamaEmulator, run_ollama_emulator
from tests.helpers import RunningGateway, make_config, running_gateway


@pytest.fixture(scope="module")
def emulator() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator() as emu:
        yield emu


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def runtime(request: pytest.FixtureRequest) -> str:
    """asyncio runs the fast transport (asyncio.Protocol), trio the anyio one:
    the suites on this fixture cover both transports.  The anyio transport
    on asyncio: SANSIO_GATEWAY_TEST_TRANSPORT=anyio (tests/helpers.py)."""
    return str(request.param)


def _config(emulator: OllamaEmulator) -> GatewayConfig:
    return make_config(
        f"[server]\nmax_body_bytes = 65536\nread_timeout = 1\n"
        f'[[backends]]\nname = "local"\nkind = "ollama"\nurl = "{emulator.url}"\n'
        f"first_byte_timeout = 10\nidle_timeout = 10\n"
        f'[[models]]\nname = "gpt-4o-mini"\nbackend = "local"\ntarget = "llama3.2:1b"\n'
    )


@pytest.fixture(scope="module")
def gateway(emulator: OllamaEmulator, runtime: str) -> Iterator[RunningGateway]:
    """The bundled h11 server, on asyncio and on trio."""
    with running_gateway(_config(emulator), runtime=runtime) as gw:
        yield gw


@pytest.fixture(scope="module", params=["asyncio", "trio", "asgi"])
def any_server(
    emulator: OllamaEmulator, request: pytest.FixtureRequest
) -> Iterator[RunningGateway]:
    """The bundled server on both runtimes, and the ASGI app under uvicorn:
    the SDK suites run against all three."""
    if request.param != "asgi":
        with running_gateway(_config(emulator), runtime=str(request.param)) as gw:
            yield gw
        return
    from sansio_gateway.adapters.asgi import create_app
    from sansio_gateway.adapters.ledger import MemoryLedger

    from tests.integration.test_asgi import serve_uvicorn

    ledger = MemoryLedger()
    asgi = create_app(_config(emulator), ledger=ledger)
    with serve_uvicorn(asgi) as url:
        yield RunningGateway(app=asgi.app, url=url, ledger=ledger)
