"""Remote image URLs are not forwarded to OpenAI-compatible backends (issue
17, item 7): the same 400 as the Ollama path, ``data:`` URLs pass, and a
backend's ``allow_image_urls = true`` opts in."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sansio_gateway.gateway import Gateway

from ..helpers import ExchangeDriver, make_config

METADATA = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def gateway(kind: str, extra: str = "") -> Gateway:
    url = "http://b.test/v1" if kind == "openai" else "http://b.test"
    return Gateway(
        make_config(
            f'[[backends]]\nname = "b"\nkind = "{kind}"\nurl = "{url}"\ndiscover = false\n{extra}'
        )
    )


def chat(url: Any, *, bare: bool = False) -> dict[str, Any]:
    image = url if bare else {"url": url}
    return {
        "model": "vision",
        "messages": [
            {"role": "system", "content": "Describe."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": image},
                ],
            },
        ],
    }


def send(gw: Gateway, body: dict[str, Any]) -> ExchangeDriver:
    d = ExchangeDriver(gw)
    d.start("POST", "/v1/chat/completions", body)
    return d


@pytest.mark.parametrize(
    "url",
    [METADATA, "https://169.254.169.254/x.png", " HTTP://169.254.169.254/", "file:///etc/passwd"],
)
@pytest.mark.parametrize("bare", [False, True])
def test_remote_image_urls_are_refused_before_the_openai_backend(url: str, bare: bool) -> None:
    d = send(gateway("openai"), chat(url, bare=bare))
    assert not d.seen.upstream
    assert d.seen.status == 400
    error = d.seen.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages.[1].content.[1].image_url"
    assert "data URL" in error["message"]


def test_the_refusal_matches_the_ollama_paths() -> None:
    openai = send(gateway("openai"), chat(METADATA))
    ollama = send(gateway("ollama"), chat(METADATA))
    assert openai.seen.status == ollama.seen.status == 400
    mine, theirs = openai.seen.json()["error"], ollama.seen.json()["error"]
    assert {k: mine[k] for k in ("type", "param", "code")} == {
        k: theirs[k] for k in ("type", "param", "code")
    }
    assert not ollama.seen.upstream


def test_data_urls_are_forwarded() -> None:
    d = send(gateway("openai"), chat(PNG))
    assert len(d.seen.upstream) == 1
    sent = orjson.loads(d.seen.upstream[0].body)
    assert sent["messages"][1]["content"][1]["image_url"]["url"] == PNG


def test_a_backend_may_opt_in_to_image_urls() -> None:
    d = send(gateway("openai", "allow_image_urls = true\n"), chat(METADATA))
    assert len(d.seen.upstream) == 1
    assert METADATA.encode() in d.seen.upstream[0].body


def test_ollama_clients_cannot_smuggle_a_url_to_an_openai_backend() -> None:
    # /api/chat's `images` are base64; over an OpenAI backend each becomes a
    # data: URL, so even a URL string there is never sent as a URL.
    d = ExchangeDriver(gateway("openai"))
    body = {"model": "vision", "messages": [{"role": "user", "content": "?", "images": [METADATA]}]}
    d.start("POST", "/api/chat", body)
    for call in d.seen.upstream:
        for msg in orjson.loads(call.body)["messages"]:
            for part in msg["content"] if isinstance(msg["content"], list) else ():
                if part["type"] == "image_url":
                    assert part["image_url"]["url"].startswith("data:")
    assert d.seen.upstream or d.seen.status == 400
