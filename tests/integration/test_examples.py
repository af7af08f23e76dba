"""The programs in docs/examples/ run, and say what the docs say they say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai

from sansio_gateway.framing import SSEDecoder
from tests.emulators.ollama import OllamaEmulator, ScriptedReply

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _run(*args: str) -> bytes:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def _payloads(sse: bytes) -> list[Any]:
    decoder = SSEDecoder()
    events = decoder.feed(sse) + decoder.feed_eof()
    return [e.data if e.data == "[DONE]" else json.loads(e.data) for e in events]


def test_translate_recorded_stream() -> None:
    out = _run("translate_recorded_stream.py", "--include-usage")
    payloads = _payloads(out)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert {c["id"] for c in chunks} == {"chatcmpl-example"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Let me check the weather in Paris for you."
    calls = [
        call
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert len(calls) == 1
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 187,
        "completion_tokens": 31,
        "total_tokens": 218,
    }


def test_translation_does_not_depend_on_how_the_stream_is_cut() -> None:
    one_byte = _run("translate_recorded_stream.py", "--chunk-size", "1")
    whole = _run("translate_recorded_stream.py", "--chunk-size", "1000000")
    assert one_byte == whole
    assert b'"usage"' not in whole  # no include_usage, no usage field


def test_minimal_adapter_proxies_one_chat_request(emulator: OllamaEmulator) -> None:
    emulator.set_reply("llama3.2:1b", ScriptedReply(content="Hello from the emulator!"))
    program = [sys.executable, str(EXAMPLES / "minimal_adapter.py"), emulator.url]
    with subprocess.Popen(
        [*program, "--port", "0", "--requests", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("listening on http://"), first + proc.stderr.read()  # type: ignore[union-attr]
        url = first.split()[-1]
        with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
            stream = client.chat.completions.create(
                model="llama3.2:1b",
                messages=[{"role": "user", "content": "Hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
        rest, errors = proc.communicate(timeout=30)  # --requests 1: it exits by itself
    assert proc.returncode == 0, errors
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the emulator!"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 26
    usage_lines = [line for line in rest.splitlines() if line.startswith("usage ")]
    assert len(usage_lines) == 1
    record = json.loads(usage_lines[0][len("usage ") :])
    assert record["outcome"] == "ok" and record["status"] == 200
    assert (record["model"], record["backend"], record["prompt_tokens"]) == (
        "llama3.2:1b",
        "ollama",
        26,
    )


def test_minimal_adapter_answers_the_status_pages_actions(emulator: OllamaEmulator) -> None:
    """/admin/overview and /ui ask the adapter for data (CollectOverview,
    LoadAsset); the example answers both, so neither request hangs."""
    program = [sys.executable, str(EXAMPLES / "minimal_adapter.py"), emulator.url]
    with subprocess.Popen(
        [*program, "--port", "0", "--requests", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("listening on http://"), first + proc.stderr.read()  # type: ignore[union-attr]
        url = first.split()[-1]
        overview = httpx.get(url + "/admin/overview", timeout=30)
        page = httpx.get(url + "/ui", timeout=30)
        _, errors = proc.communicate(timeout=30)
    assert proc.returncode == 0, errors
    assert overview.status_code == 200
    assert [b["name"] for b in overview.json()["backends"]] == ["ollama"]
    assert page.status_code == 500  # the example ships no page files...
    assert page.headers["x-frame-options"] == "DENY"  # ...and the core's headers still apply
