"""``serve --workers 2``: gauges combine as each metric means, counters are
summed, and the startup listing and clash warnings appear once (issue 16,
items 6 and 10)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.emulators.ollama import OllamaEmulator

CLI = [sys.executable, "-m", "sansio_gateway.adapters.cli"]


def _samples(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _poll(check, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.05)  # polling processes we started; there is no event to await
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_gauges_counters_and_one_listing(
    emulator: OllamaEmulator, tmp_path: Path
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[store]\nusage = "sqlite:///{tmp_path}/usage.db"\n'
        f'[[backends]]\nname = "a"\nurl = "{emulator.url}"\n'
        f'[[backends]]\nname = "b"\nurl = "{emulator.url}"\n'  # every model clashes
    )

    def launch() -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(cfg), "--port", "0", "--workers", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        return proc, lines, reader

    def stop(proc: subprocess.Popen[str], reader: threading.Thread) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too, or they hold stdout open
        proc.wait()
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    # In the full suite a worker twice failed to come up.  The likely cause,
    # since fixed: two workers switching the new SQLite ledger to WAL at once
    # ("database is locked", tests/adapters/test_ledger.py).  The one
    # relaunch stays, reported on stderr with what the processes printed.
    for attempt in (1, 2):
        proc, lines, reader = launch()
        try:
            first = _poll(
                lambda out=lines: [x for x in out if " workers on " in x], "the parent's line"
            )
            url = first[0].split(" on ")[1].split()[0]
            _poll(
                lambda out=lines: sum("listening on" in x for x in out) == 2, "both workers", 30.0
            )
            break
        except AssertionError:
            stop(proc, reader)
            if attempt == 2:
                raise AssertionError("workers did not start:\n" + "".join(lines)) from None
            print("workers did not start; relaunching. They printed:", *lines, file=sys.stderr)
    try:
        body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(8):  # new connections: the kernel spreads them over the workers
            assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200

        samples = _samples(url)
        up = {labels["backend"]: value for labels, value in samples["gateway_backend_up"]}
        assert up == {"a": 1.0, "b": 1.0}  # not 2.0: the workers' values are not added
        states = samples["gateway_backend_circuit_state"]
        assert {labels["pid"] for labels, _ in states} and all(v == 0 for _, v in states)
        assert len({labels["pid"] for labels, _ in states}) == 2  # one series per worker
        [(_, in_flight)] = samples["gateway_requests_in_flight"]
        assert in_flight == 1  # the scrape itself, counted once
        total = sum(
            value
            for labels, value in samples["gateway_requests_total"]
            if labels["route"] == "chat.completions"
        )
        assert total == 8  # counters: summed over both workers

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        reader.join(timeout=10)
    finally:
        stop(proc, reader)
    text = "".join(lines)
    assert text.count("backend a [ollama]") == 1  # the startup listing, once
    assert text.count("limits: store.url = memory://") == 1
    clash = [x for x in lines if "llama3.2:1b is offered by a, b; a wins" in x]
    assert len(clash) == 1, clash  # one worker, one discovery: once
