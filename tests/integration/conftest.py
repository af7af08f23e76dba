"""Integration fixtures: a real emulated Ollama and a real gateway on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulators.ollama import OllamaEmulator, run_ollama_emulator
from tests.helpers import RunningGateway, make_config, running_gateway


@pytest.fixture(scope="module")
def emulator() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator() as emu:
        yield emu


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def gateway(emulator: OllamaEmulator, runtime: str) -> Iterator[RunningGateway]:
    config = make_config(
        f"[server]\nmax_body_bytes = 65536\nread_timeout = 1\n"
        f'[[backends]]\nname = "local"\nkind = "ollama"\nurl = "{emulator.url}"\n'
        f"first_byte_timeout = 10\nidle_timeout = 10\n"
        f'[[models]]\nname = "gpt-4o-mini"\nbackend = "local"\ntarget = "llama3.2:1b"\n'
    )
    with running_gateway(config, runtime=runtime) as gw:
        yield gw
