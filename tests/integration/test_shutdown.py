"""Graceful shutdown with 20 streams in flight: each one finishes or gets an
error event, and the usage ledger has all 20."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.emulators.ollama import OllamaEmulator, ScriptedReply, run_ollama_emulator
from tests.helpers import make_config, running_gateway, wait_for

STREAMS = 20


@pytest.fixture
def slow_emulator() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator() as emu:
        yield emu


def _stream(url: str, outcomes: list[str], first_chunk: threading.Semaphore) -> None:
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    try:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", url + "/v1/chat/completions", json=body) as response,
        ):
            released = False
            payloads = []
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if not released:
                    first_chunk.release()
                    released = True
                data = line[len("data: ") :]
                payloads.append(data if data == "[DONE]" else orjson.loads(data))
        if payloads and payloads[-1] == "[DONE]":
            outcomes.append("finished")
        elif payloads and isinstance(payloads[-1], dict) and "error" in payloads[-1]:
            outcomes.append("error_event:" + payloads[-1]["error"]["code"])
        else:
            outcomes.append(f"broken:{payloads[-2:]}")
    except Exception as exc:
        outcomes.append(f"exception:{exc!r}")


@pytest.mark.parametrize(
    ("chunk_delay", "grace", "expected"),
    [
        (0.01, 10.0, "finished"),  # streams end well within the grace period
        (0.2, 0.3, "error_event:shutdown"),  # streams outlive it and are cut with an error event
    ],
)
def test_shutdown_with_20_active_streams(
    slow_emulator: OllamaEmulator, chunk_delay: float, grace: float, expected: str
) -> None:
    slow_emulator.set_reply(
        "llama3.2:1b", ScriptedReply(chunks=["word "] * 40, delay_between_chunks=chunk_delay)
    )
    config = make_config(f'[[backends]]\nname = "local"\nurl = "{slow_emulator.url}"\n')
    outcomes: list[str] = []
    first_chunk = threading.Semaphore(0)
    with running_gateway(config) as gw:
        threads = [
            threading.Thread(target=_stream, args=(gw.url, outcomes, first_chunk))
            for _ in range(STREAMS)
        ]
        for t in threads:
            t.start()
        for _ in range(STREAMS):  # every stream has started answering
            assert first_chunk.acquire(timeout=20)
        cut = gw.portal.call(gw.app.shutdown, grace)
        for t in threads:
            t.join(timeout=30)
        assert outcomes == [expected] * STREAMS
        assert cut == (STREAMS if expected != "finished" else 0)
        wait_for(lambda: len(gw.ledger.records) == STREAMS)
        outcome = "ok" if expected == "finished" else "failed_mid_stream"
        assert {r.outcome for r in gw.ledger.records} == {outcome}
        # and nothing new is accepted
        with pytest.raises(httpx.ConnectError):
            httpx.get(gw.url + "/health")


def test_sigterm_to_the_real_process_drains_and_keeps_every_record(
    slow_emulator: OllamaEmulator, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import sys

    from sansio_gateway.adapters.ledger import SQLiteLedger

    from sansio_gateway.accounting.usage_query import UsageQuery

    slow_emulator.set_reply(
        "llama3.2:1b", ScriptedReply(chunks=["w "] * 40, delay_between_chunks=0.2)
    )
    db = tmp_path / "usage.db"
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[server]\nshutdown_grace = 0.5\n[store]\nusage = "sqlite:///{db}"\n'
        f'[[backends]]\nname = "local"\nurl = "{slow_emulator.url}"\n'
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sansio_gateway.adapters.cli",
            "serve",
            "--config",
            str(cfg),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            if "listening on " in line:
                url = line.split("listening on ")[1].split()[0]
                break
        outcomes: list[str] = []
        first_chunk = threading.Semaphore(0)
        threads = [
            threading.Thread(target=_stream, args=(url, outcomes, first_chunk))
            for _ in range(STREAMS)
        ]
        for t in threads:
            t.start()
        for _ in range(STREAMS):
            assert first_chunk.acquire(timeout=20)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert outcomes == ["error_event:shutdown"] * STREAMS
    [row] = SQLiteLedger(db).query_sync(UsageQuery())
    assert row.requests == STREAMS
