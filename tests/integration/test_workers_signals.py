"""``serve --workers N`` stops cleanly however early SIGTERM comes: a worker
that is still importing when the parent forwards it must not die of it
(workers.py starts the children with SIGTERM/SIGINT blocked; cli._serve
unblocks them once its handlers are in place)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.emulators.ollama import OllamaEmulator

CLI = [sys.executable, "-m", "sansio_gateway.adapters.cli"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_while_the_workers_start_is_a_clean_stop(
    emulator: OllamaEmulator, tmp_path: Path, signum: signal.Signals
) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[store]\nusage = "sqlite:///{tmp_path}/usage.db"\n'
        f'[[backends]]\nname = "a"\nurl = "{emulator.url}"\n'
    )
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(cfg), "--port", "0", "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        # The parent prints this right after starting the children, long
        # before they have imported the gateway.
        line = proc.stdout.readline()
        assert " workers on " in line, line
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, line + out
    assert "Traceback" not in out, out
    assert out.count("shutting down") == 2, out  # each worker stopped through its handler
