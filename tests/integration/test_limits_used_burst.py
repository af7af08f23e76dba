"""A burst against a real gateway: the 429 says "Used" as docs/rate-limiting.md
defines it (issue 16, item 7)."""

from __future__ import annotations

import httpx

from tests.emulators.ollama import OllamaEmulator
from tests.helpers import make_config, running_gateway


def test_a_burst_of_two_reads_used_2(emulator: OllamaEmulator) -> None:
    # 12 per minute: one request refills every 5 s, bursts of 2.
    config = make_config(
        f'[[backends]]\nname = "local"\nurl = "{emulator.url}"\n'
        "[limits]\nrequests_per_minute = 12\n"
    )
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
    with running_gateway(config) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
        statuses = [client.post("/v1/chat/completions", json=body) for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 429, 429]
    for refused in statuses[2:]:
        message = refused.json()["error"]["message"]
        # Both admitted requests are still unrefilled (less than 5 s went by).
        assert "Limit 12, Used 2, Requested 1." in message, message
