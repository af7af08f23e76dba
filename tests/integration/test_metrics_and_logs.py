"""/metrics parses with prometheus-client's parser and its counters match the
requests sent; one JSON log line per request, without prompt text or keys."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sansio_gateway.auth import hash_key
from tests.emulators.ollama import OllamaEmulator
from tests.helpers import RunningGateway, make_config, running_gateway, wait_for

KEY = "sk-metrics-test-key"
SECRET_PROMPT = "my secret prompt text"


@pytest.fixture(scope="module")
def fresh_gateway(emulator: OllamaEmulator) -> Iterator[RunningGateway]:
    config = make_config(
        f'[[backends]]\nname = "local"\nurl = "{emulator.url}"\n'
        f'[[auth.keys]]\nid = "ci"\nuser = "carol"\nsha256 = "{hash_key(KEY)}"\n'
    )
    with running_gateway(config) as gw:
        yield gw


def samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(all_samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return sum(
        v for (n, ls), v in all_samples.items() if n == name and set(labels.items()) <= set(ls)
    )


def test_metrics_count_what_was_sent(fresh_gateway: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sansio_gateway.access")
    messages = [{"role": "user", "content": SECRET_PROMPT}]
    with openai.OpenAI(base_url=fresh_gateway.url + "/v1", api_key=KEY, max_retries=0) as client:
        for _ in range(3):
            client.chat.completions.create(model="llama3.2:1b", messages=messages)  # type: ignore[arg-type]
        list(client.chat.completions.create(model="llama3.2:1b", messages=messages, stream=True))  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="missing:1b", messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError), openai.OpenAI(
        base_url=fresh_gateway.url + "/v1", api_key="sk-wrong", max_retries=0
    ) as bad:
        bad.models.list()

    wait_for(lambda: len([r for r in caplog.records if r.name == "sansio_gateway.access"]) >= 6)
    got = samples(fresh_gateway.url)
    chat = {"route": "chat.completions", "model": "llama3.2:1b"}
    assert value(got, "gateway_requests_total", status="200", **chat) == 4
    assert value(got, "gateway_requests_total", status="404", route="chat.completions") == 1
    assert value(got, "gateway_requests_total", status="401") == 1
    assert value(got, "gateway_tokens_total", kind="prompt") == 4 * 26
    assert value(got, "gateway_request_duration_seconds_count", **chat) == 4
    assert value(got, "gateway_time_to_first_token_seconds_count", **chat) == 4
    assert value(got, "gateway_requests_in_flight") == 1  # the scrape itself

    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sansio_gateway.access"]
    assert len(lines) >= 6
    ok = [line for line in lines if line["status"] == 200 and line["route"] == "chat.completions"]
    assert len(ok) == 4 and all(line["user"] == "carol" and line["key_id"] == "ci" for line in ok)
    assert all(line["prompt_tokens"] == 26 and line["latency_ms"] > 0 for line in ok)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET_PROMPT not in text and KEY not in text and "sk-wrong" not in text


def test_request_id_is_accepted_returned_and_sent_upstream(
    fresh_gateway: RunningGateway, emulator: OllamaEmulator
) -> None:
    response = httpx.post(
        fresh_gateway.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}", "x-request-id": "trace-abc-123"},
        json={"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-abc-123"
    assert emulator.last_request("/api/chat").headers["x-request-id"] == "trace-abc-123"
    generated = httpx.get(fresh_gateway.url + "/health").headers["x-request-id"]
    assert len(generated) == 32
