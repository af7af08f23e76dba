"""A reload that removes every backend at a server closes the pooled
connections to it (``retire``), on both upstream clients; a server a later
request uses again is pooled again."""

from __future__ import annotations

import anyio
import h11
import pytest
from sansio_gateway.adapters.fast_upstream import FastUpstreamClient
from sansio_gateway.adapters.upstream import UpstreamClient
from sansio_gateway.adapters.upstream_pool import origin_of
from sansio_gateway.adapters.wiring import _gone_origins

from sansio_gateway.config import GatewayConfig
from tests.emulators.ollama import OllamaEmulator, run_ollama_emulator


def _idle(client: FastUpstreamClient | UpstreamClient) -> dict[object, list[object]]:
    pool = client if isinstance(client, FastUpstreamClient) else client.pool
    return {origin: list(conns) for origin, conns in pool._idle.items() if conns}


@pytest.mark.parametrize("kind", ["fast", "anyio"])
def test_retired_origins_lose_their_idle_connections_and_come_back_when_used(kind: str) -> None:
    with run_ollama_emulator() as emu:
        _idle_then_retired(kind, emu)


def _idle_then_retired(kind: str, emulator: OllamaEmulator) -> None:
    url = emulator.url + "/api/tags"
    origin = origin_of(url)[0]

    async def main() -> None:
        client = FastUpstreamClient() if kind == "fast" else UpstreamClient()
        try:
            assert (await client.get(url, [], within=10))[0] == 200
            assert origin in _idle(client)  # pooled after a whole answer
            await client.retire({origin})
            assert origin not in _idle(client)
            # Used again (a later reload added it back): pooled again.
            assert (await client.get(url, [], within=10))[0] == 200
            assert origin in _idle(client)
        finally:
            await client.aclose()

    anyio.run(main)


@pytest.mark.parametrize("kind", ["fast", "anyio"])
def test_a_connection_in_use_when_its_origin_retires_is_closed_on_release(kind: str) -> None:
    with run_ollama_emulator() as emu:
        url = emu.url + "/api/tags"
        origin = origin_of(url)[0]

        async def main() -> None:
            client = FastUpstreamClient() if kind == "fast" else UpstreamClient()
            pool = client if isinstance(client, FastUpstreamClient) else client.pool
            try:
                if isinstance(client, FastUpstreamClient):
                    got, conn, _, _ = await client._start(
                        "GET", url, [], b"", connect_timeout=10, first_byte_timeout=10
                    )
                    while not isinstance(await conn.next_event(), h11.EndOfMessage):
                        pass
                    await client.retire({origin})
                    client._release(got, conn, reusable=True)
                else:
                    response = await client.pool.start(
                        "GET", url, [], b"", connect_timeout=10, first_byte_timeout=10
                    )
                    _ = [chunk async for chunk in response.body()]
                    await client.retire({origin})
                    await response.release()
                assert origin not in {o for o, conns in pool._idle.items() if conns}
            finally:
                await client.aclose()

        anyio.run(main)


def test_gone_origins_are_the_servers_no_backend_is_left_at() -> None:
    before = GatewayConfig.model_validate(
        {
            "backends": [
                {"name": "a", "url": "http://10.0.0.1:11434"},
                {"name": "b", "url": "http://10.0.0.2:11434"},
                {"name": "c", "url": "http://10.0.0.3:8000", "kind": "openai"},
            ]
        }
    )
    after = GatewayConfig.model_validate(
        {
            "backends": [
                {"name": "a", "url": "http://10.0.0.1:11434"},
                # b renamed: same server, kept
                {"name": "b2", "url": "http://10.0.0.2:11434"},
            ]
        }
    )
    assert _gone_origins(before, after) == {origin_of("http://10.0.0.3:8000")[0]}
