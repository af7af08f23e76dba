"""The quickstart as a newcomer runs it, with no Ollama: ``sansio-gateway emulate``
in one process, ``sansio-gateway serve`` in another, and the quickstart's own
``openai`` snippet, run as written (issue 16 item 11, issue 15 item 4)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
from sansio_gateway.adapters.emulator.ollama import token_chunks

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def started(
    *args: str, marker: str, cwd: Path = ROOT, env: Mapping[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start ``python -m ...``; yield it and the first line containing ``marker``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd, env=None if env is None else {**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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


EMULATE = ("sansio_gateway.adapters.cli", "emulate", "--port", "0")


def openai_snippet() -> str:
    """The quickstart's first ``openai`` example, verbatim."""
    text = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return next(block for block in blocks if "from openai import OpenAI" in block)


def test_emulate_then_serve_then_the_openai_snippet(tmp_path: Path) -> None:
    """Terminal 1: ``emulate``; terminal 2: ``serve`` with no config, finding the emulator
    through ``$OLLAMA_HOST`` (docs/quickstart.md); then the snippet, non-stream and stream."""
    snippet = openai_snippet()
    assert 'base_url="http://127.0.0.1:8080/v1"' in snippet and "stream=True" in snippet
    with started(*EMULATE, "--tokens", "5", marker=" listening on ") as (_, line):
        ollama_url = line.split()[-1]
        serve = ("sansio_gateway.adapters.cli", "serve", "--port", "0")
        with started(
            *serve, marker="sansio-gateway listening on", cwd=tmp_path,
            env={"OLLAMA_HOST": ollama_url},
        ) as (_, line):  # fmt: skip
            url = line.split(" on ")[1].split()[0]
            script = snippet.replace("http://127.0.0.1:8080", url)
            done = subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
            )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = "".join(token_chunks(5))
    # The non-stream answer, then the streamed one and its usage line.
    assert done.stdout.splitlines() == [answer, answer, "31 tokens"], done.stdout
    assert (tmp_path / "sansio-gateway-usage.db").exists()  # the defaults, as documented


def test_a_first_chat_through_both_emulators(tmp_path: Path) -> None:
    with (
        started(*EMULATE, marker=" listening on ") as (_, o),
        started(*EMULATE, "--kind", "openai", marker=" listening on ") as (_, a),
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
