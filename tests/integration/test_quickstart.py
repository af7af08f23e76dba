"""The quickstart as a newcomer runs it, with no Ollama: the repo's emulators
from their command lines, the gateway in front, a first chat (issue 16,
item 11)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def started(*args: str, marker: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``python -m ...``; yield it and the first line containing ``marker``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # blocks until the process says where it listens
            if marker in line:
                yield proc, line.strip()
                break
        else:
            raise AssertionError(f"{args} exited without printing {marker!r}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_first_chat_through_both_emulators(tmp_path: Path) -> None:
    with (
        started("tests.emulators.ollama", "--port", "0", marker="listening on") as (_, o),
        started("tests.emulators.openai_backend", "--port", "0", marker="listening on") as (_, a),
    ):
        ollama_url, openai_url = o.split()[-1], a.split()[-1]
        assert openai_url.endswith("/v1")
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'[store]\nusage = "sqlite:///{tmp_path}/usage.db"\n'
            f'[[backends]]\nname = "local"\nkind = "ollama"\nurl = "{ollama_url}"\n'
            f'[[backends]]\nname = "cloud"\nkind = "openai"\nurl = "{openai_url}"\n'
        )
        serve = ("sansio_gateway.adapters.cli", "serve", "--config", str(config), "--port", "0")
        with started(*serve, marker="sansio-gateway listening on") as (_, line):
            url = line.split(" on ")[1].split()[0]
            for model in ("llama3.2:1b", "gpt-4o-mini"):
                reply = httpx.post(
                    url + "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
                    timeout=30,
                )
                assert reply.status_code == 200, reply.text
                assert reply.json()["choices"][0]["message"]["content"]
