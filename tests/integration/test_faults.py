"""The fault suite: backends that die, hang, stall, trickle, fail and flap.

Every test starts what it needs -- an emulated Ollama (or a port with
nothing behind it, or one that never accepts) and a real gateway -- on
loopback, and checks three things: what the client sees (status, error
form, timing), that the usage record exists when a backend was reached,
and that the gateway still serves the next request.

Timeouts are configured small (tenths of a second) so the suite stays
fast; timings are asserted within [timeout, timeout + 1.5 s].  Nothing
sleeps to wait: conditions are polled with ``wait_for``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from sansio_gateway.actions import UsageRecord
from tests.emulators.ollama import OllamaEmulator, ScriptedReply, run_ollama_emulator
from tests.helpers import (
    TEST_PARSER,
    TEST_TRANSPORT,
    RunningGateway,
    make_config,
    running_gateway,
    wait_for,
)

MODEL = "llama3.2:1b"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHAT = {"model": MODEL, "messages": MESSAGES}
SLACK = 1.5  # seconds a timeout may overrun on a loaded machine


@pytest.fixture(autouse=True, params=["fast", "fast-h11", "anyio"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every fault, on both transports of the asyncio runtime; the fast one
    reading its backends with httptools (when installed) and with h11."""
    name = str(request.param)
    monkeypatch.setenv(TEST_TRANSPORT, name.removesuffix("-h11"))
    if name.endswith("-h11"):
        monkeypatch.setenv(TEST_PARSER, "h11")
    return name


@pytest.fixture
def emu() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator() as emulator:
        yield emulator


def backend(name: str, url: str, extra: str = "") -> str:
    return f'[[backends]]\nname = "{name}"\nurl = "{url}"\n{extra}\n'


def gateway_for(*backends: str, server: str = "", models: str = "") -> Any:
    return running_gateway(make_config(f"[server]\n{server}\n{''.join(backends)}{models}"))


def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: connection attempts hang (SYNs
    are dropped), as with a host that went away."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        yield port
    finally:
        filler.close()
        listener.close()


def records(gw: RunningGateway, count: int) -> list[UsageRecord]:
    wait_for(lambda: len(gw.ledger.records) >= count)
    return list(gw.ledger.records)


def still_serving(gw: RunningGateway) -> None:
    """A fresh connection gets a full answer from the backend."""
    response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


def backend_calls(emulator: OllamaEmulator, path: str = "/api/chat") -> int:
    return sum(1 for r in emulator.requests if r.path == path)


def stream_events(url: str, path: str, body: dict[str, Any]) -> list[tuple[float, Any]]:
    """POST a streaming request; each SSE event or NDJSON line with its
    arrival time (monotonic), "[DONE]" kept as a string."""
    events: list[tuple[float, Any]] = []
    with httpx.Client(timeout=30) as client, client.stream("POST", url + path, json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line:
                continue
            data = line.removeprefix("data: ")
            events.append((time.monotonic(), data if data == "[DONE]" else orjson.loads(data)))
    return events


def error_message(event: Any) -> str:
    """The message of an in-band error (SSE ``{"error": {...}}`` or NDJSON ``{"error": "..."}``)."""
    error = event["error"]
    return str(error["message"] if isinstance(error, dict) else error)


def metric_samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):  # raises if it does not parse
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


# ---- a backend killed mid-stream ---------------------------------------------------------


def test_backend_killed_mid_stream_openai_sdk_gets_api_error(emu: OllamaEmulator) -> None:
    emu.set_reply(MODEL, ScriptedReply(chunks=["a ", "b ", "c ", "d "], die_after_chunks=2))
    with gateway_for(backend("local", emu.url)) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        received: list[str] = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True
            ):
                received.append(chunk.choices[0].delta.content or "")
        assert "".join(received) == "a b "  # what the backend sent before it died
        assert "lost" in caught.value.message
        [record] = records(gw, 1)
        assert record.outcome == "failed_mid_stream"
        assert record.backend == "local" and record.model == MODEL and record.attempts == 1
        assert record.completion_tokens >= 2  # estimated from what was streamed
        emu.set_reply(MODEL, ScriptedReply())
        still_serving(gw)


def test_backend_killed_mid_stream_ollama_sdk_gets_response_error(emu: OllamaEmulator) -> None:
    emu.set_reply(MODEL, ScriptedReply(chunks=["a ", "b ", "c ", "d "], die_after_chunks=2))
    with gateway_for(backend("local", emu.url)) as gw:
        client = ollama.Client(host=gw.url)
        received: list[str] = []
        with pytest.raises(ollama.ResponseError) as caught:
            for part in client.chat(model=MODEL, messages=MESSAGES, stream=True):
                received.append(part.message.content or "")
        assert "".join(received) == "a b "
        assert "lost" in caught.value.error
        [record] = records(gw, 1)
        assert record.outcome == "failed_mid_stream" and record.surface == "ollama"
        emu.set_reply(MODEL, ScriptedReply())
        still_serving(gw)


def test_backend_closing_without_an_answer_is_a_502(emu: OllamaEmulator) -> None:
    emu.update_reply(MODEL, die_after_chunks=0)  # non-stream: closes before any response
    with gateway_for(backend("local", emu.url, "max_retries = 0")) as gw:
        response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_error"
        [record] = records(gw, 1)
        assert record.outcome == "upstream_error" and record.status == 502
        emu.update_reply(MODEL, die_after_chunks=None)
        still_serving(gw)


def test_request_the_backend_read_is_not_replayed_behind_max_retries(emu: OllamaEmulator) -> None:
    with gateway_for(backend("local", emu.url, "max_retries = 0")) as gw:
        still_serving(gw)  # leaves a warm keep-alive connection in the pool
        emu.clear_requests()
        emu.update_reply(MODEL, die_after_chunks=0)  # reads the request, then hangs up
        response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT)
        assert response.status_code == 502
        [record] = records(gw, 2)[1:]
        assert record.attempts == 1
        assert backend_calls(emu) == 1  # today: 2 -- a hidden second generation


# ---- hangs before the first byte ---------------------------------------------------------

FIRST_BYTE = 0.5


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_hang_before_first_byte_is_a_504_at_the_timeout(
    emu: OllamaEmulator, path: str, stream: bool
) -> None:
    emu.update_reply(MODEL, delay_first_byte=30)
    # connect_timeout is small too: today it is added to the first-byte
    # budget (see the xfail test below).
    extra = f"first_byte_timeout = {FIRST_BYTE}\nconnect_timeout = 0.2"
    with gateway_for(backend("local", emu.url, extra)) as gw:
        started = time.monotonic()
        response = httpx.post(gw.url + path, json={**CHAT, "stream": stream}, timeout=30)
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        if path.startswith("/v1"):
            assert error["code"] == "upstream_timeout" and error["type"] == "api_error"
            assert set(error) == {"message", "type", "param", "code"}
            assert "timed out" in error["message"]
        else:
            assert isinstance(error, str) and "timed out" in error
        assert FIRST_BYTE <= elapsed <= FIRST_BYTE + 0.2 + SLACK
        # The backend's connection was dropped, so it stops working on it.
        assert emu.wait_for(lambda: emu.disconnects == 1)
        [record] = records(gw, 1)
        assert record.status == 504 and record.outcome == "upstream_error"
        assert record.attempts == 1  # a timeout is not retried on the same backend
        emu.update_reply(MODEL, delay_first_byte=0)
        still_serving(gw)


def test_first_byte_timeout_does_not_include_the_unused_connect_budget(
    emu: OllamaEmulator,
) -> None:
    emu.update_reply(MODEL, delay_first_byte=30)
    extra = f"first_byte_timeout = {FIRST_BYTE}\nconnect_timeout = 3"
    with gateway_for(backend("local", emu.url, extra)) as gw:
        started = time.monotonic()
        response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30)
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert elapsed <= FIRST_BYTE + SLACK  # today: 3.5 s


def test_a_hanging_backend_falls_back_to_the_next_target(emu: OllamaEmulator) -> None:
    emu.update_reply(MODEL, delay_first_byte=30)
    with run_ollama_emulator() as spare:
        models = f'[[models]]\nname = "m"\nbackend = "slow"\ntarget = "{MODEL}"\nfallbacks = ["spare:{MODEL}"]\n'
        slow = backend("slow", emu.url, f"first_byte_timeout = {FIRST_BYTE}\nconnect_timeout = 0.2")
        with gateway_for(slow, backend("spare", spare.url), models=models) as gw:
            started = time.monotonic()
            response = httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "model": "m"})
            assert response.status_code == 200
            assert time.monotonic() - started <= FIRST_BYTE + 0.2 + SLACK
            assert backend_calls(spare) == 1
            [record] = records(gw, 1)
            assert record.backend == "spare" and record.attempts == 2


# ---- stalls and trickles mid-stream ------------------------------------------------------

IDLE = 0.5
CLIENT_LAG = 0.02


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_stall_mid_stream_ends_with_a_timeout_error_event(emu: OllamaEmulator, path: str) -> None:
    emu.set_reply(MODEL, ScriptedReply(chunks=["a ", "b ", "c "], delay_between_chunks=30))
    with gateway_for(backend("local", emu.url, f"idle_timeout = {IDLE}")) as gw:
        events = stream_events(gw.url, path, {**CHAT, "stream": True})
        first_at, _ = events[0]
        ended_at, last = events[-1]
        assert "error" in last, events
        assert "timed out" in error_message(last)
        if path.startswith("/v1"):
            assert last["error"]["code"] == "upstream_timeout"
        assert all("error" not in e for _, e in events[:-1])
        # first_at is when this client thread read the first line, which lags
        # the gateway's idle clock (started once that line was handed to the
        # socket) by the client's own scheduling: a few ms under load.
        assert IDLE - CLIENT_LAG <= ended_at - first_at <= IDLE + SLACK
        [record] = records(gw, 1)
        assert record.outcome == "failed_mid_stream" and record.status == 504
        assert emu.wait_for(lambda: emu.disconnects == 1)
        emu.set_reply(MODEL, ScriptedReply())
        still_serving(gw)


def test_total_timeout_cuts_a_stream_that_trickles_forever(emu: OllamaEmulator) -> None:
    total = 0.8
    # Each chunk comes well within the idle timeout; the whole would take 100 s.
    emu.set_reply(MODEL, ScriptedReply(chunks=["w "] * 5000, delay_between_chunks=0.02))
    extra = f"idle_timeout = 5\ntotal_timeout = {total}"
    with gateway_for(backend("local", emu.url, extra)) as gw:
        started = time.monotonic()
        events = stream_events(gw.url, "/v1/chat/completions", {**CHAT, "stream": True})
        elapsed = time.monotonic() - started
        _, last = events[-1]
        assert "error" in last and last["error"]["code"] == "upstream_timeout"
        assert len(events) > 5  # it was streaming when cut
        assert total <= elapsed <= total + SLACK
        [record] = records(gw, 1)
        assert record.outcome == "failed_mid_stream"
        assert record.completion_tokens > 0
        emu.set_reply(MODEL, ScriptedReply())
        still_serving(gw)


# ---- retries and fallbacks ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_503_twice_then_success_is_retried(emu: OllamaEmulator, stream: bool) -> None:
    emu.update_reply(MODEL, error_status=503, error_times=2, error_message="server busy")
    with gateway_for(backend("local", emu.url, "retry_backoff = 0.01")) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        if stream:
            chunks = list(
                client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            answer = client.chat.completions.create(model=MODEL, messages=MESSAGES)
            text = answer.choices[0].message.content or ""
        assert text == "Hello! How can I help you today?"
        assert backend_calls(emu) == 3
        [record] = records(gw, 1)
        assert record.attempts == 3 and record.outcome == "ok" and record.status == 200
        samples = metric_samples(gw.url)
        assert metric(samples, "gateway_upstream_retries_total", backend="local") == 2
        assert (
            metric(samples, "gateway_upstream_errors_total", backend="local", kind="http_503") == 2
        )
        assert metric(samples, "gateway_requests_total", status="200") == 1


def test_503_for_ever_gives_up_with_the_backend_status(emu: OllamaEmulator) -> None:
    emu.update_reply(MODEL, error_status=503, error_message="server busy")
    with gateway_for(backend("local", emu.url, "retry_backoff = 0.01\nmax_retries = 2")) as gw:
        response = httpx.post(gw.url + "/api/chat", json=CHAT)
        assert response.status_code == 503
        assert response.json() == {"error": "server busy"}
        assert backend_calls(emu) == 3
        [record] = records(gw, 1)
        assert record.attempts == 3 and record.status == 503


def test_down_backend_is_served_by_the_fallback(emu: OllamaEmulator) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    models = (
        f'[[models]]\nname = "m"\nbackend = "a"\ntarget = "{MODEL}"\nfallbacks = ["b:{MODEL}"]\n'
    )
    a = backend("a", down, "discover = false\nmax_retries = 1\nretry_backoff = 0.01")
    with gateway_for(a, backend("b", emu.url), models=models) as gw:
        for surface in ("/v1/chat/completions", "/api/chat"):
            response = httpx.post(gw.url + surface, json={**CHAT, "model": "m"})
            assert response.status_code == 200, response.text
        assert backend_calls(emu) == 2
        assert emu.last_request("/api/chat").json["model"] == MODEL
        for record in records(gw, 2):
            assert record.backend == "b" and record.outcome == "ok"
            assert record.attempts == 3  # a, a again (connect error is retryable), then b


# ---- circuit breakers ---------------------------------------------------------------------


def _status_circuit(gw: RunningGateway, name: str) -> str:
    backends = httpx.get(gw.url + "/status").json()["backends"]
    return str(next(b for b in backends if b["name"] == name)["circuit"])


def test_breaker_opens_and_fails_fast_instead_of_waiting_out_connect_timeouts() -> None:
    connect = 0.3
    with blackhole() as port:
        models = f'[[models]]\nname = "m"\nbackend = "gone"\ntarget = "{MODEL}"\n'
        gone = backend(
            "gone",
            f"http://127.0.0.1:{port}",
            f"discover = false\nmax_retries = 0\nconnect_timeout = {connect}",
        )
        server = "breaker_failures = 2\nbreaker_cooldown = 60\nhealth_interval = 3600"
        with gateway_for(gone, server=server, models=models) as gw:
            body = {**CHAT, "model": "m"}
            for _ in range(2):
                started = time.monotonic()
                response = httpx.post(gw.url + "/v1/chat/completions", json=body)
                assert response.status_code == 504
                assert time.monotonic() - started >= connect
            assert _status_circuit(gw, "gone") == "open"
            for path in ("/v1/chat/completions", "/api/chat"):
                started = time.monotonic()
                response = httpx.post(gw.url + path, json=body)
                assert time.monotonic() - started < connect / 2
                assert response.status_code == 503
                error = response.json()["error"]
                if path.startswith("/v1"):
                    assert error["code"] == "backend_unavailable"
                else:
                    assert "out of rotation" in error
            # Only the two attempts that reached for the backend are billed.
            assert len(records(gw, 2)) == 2


def test_breaker_flaps_open_half_open_closed() -> None:
    server = "breaker_failures = 3\nbreaker_cooldown = 0.4\nhealth_interval = 3600"
    first = contextlib.ExitStack()
    emulator = first.enter_context(run_ollama_emulator())
    port = emulator.port
    try:
        with gateway_for(backend("local", emulator.url, "max_retries = 0"), server=server) as gw:
            url = gw.url + "/v1/chat/completions"
            assert httpx.post(url, json=CHAT).status_code == 200
            assert _status_circuit(gw, "local") == "closed"
            first.close()  # the backend goes down

            statuses = [httpx.post(url, json=CHAT).status_code for _ in range(3)]
            assert statuses == [502, 502, 502]
            assert _status_circuit(gw, "local") == "open"
            started = time.monotonic()
            fast = httpx.post(url, json=CHAT)
            assert fast.status_code == 503
            assert fast.json()["error"]["code"] == "backend_unavailable"
            assert time.monotonic() - started < 0.25

            # After the cooldown one request probes (half-open); the backend is
            # still down, so it fails and the breaker opens again.
            seen: list[int] = []

            def probe() -> int:
                seen.append(httpx.post(url, json=CHAT).status_code)
                return seen[-1]

            wait_for(lambda: probe() != 503)
            assert seen[-1] == 502 and set(seen[:-1]) <= {503}
            assert httpx.post(url, json=CHAT).status_code == 503
            assert _status_circuit(gw, "local") == "open"

            # The backend comes back on the same port: after the next cooldown
            # the half-open attempt succeeds and traffic flows again.
            with run_ollama_emulator(port=port) as second:
                seen.clear()
                wait_for(lambda: probe() != 503)
                assert seen[-1] == 200
                assert _status_circuit(gw, "local") == "closed"
                for _ in range(3):
                    assert httpx.post(url, json=CHAT).status_code == 200
                assert backend_calls(second) == 4
            # Records: 1 ok, 3 refused, 1 failed probe, then 4 ok; fast 503s are not billed.
            outcomes = [r.outcome for r in records(gw, 9)]
            assert outcomes == ["ok"] + ["upstream_error"] * 4 + ["ok"] * 4
    finally:
        first.close()


# ---- /metrics after faults ----------------------------------------------------------------


def test_metrics_parse_and_count_the_requests_sent_through_faults(emu: OllamaEmulator) -> None:
    with gateway_for(backend("local", emu.url, "retry_backoff = 0.01")) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        for _ in range(3):  # 3 whole answers
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
        for _ in range(2):  # 2 streams
            list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        assert httpx.post(gw.url + "/api/chat", json={**CHAT, "stream": False}).status_code == 200
        for _ in range(2):  # 2 unknown models
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="missing:1b", messages=MESSAGES)
        emu.update_reply(MODEL, error_status=503, error_times=1)  # 1 retried, then fine
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        emu.set_reply(MODEL, ScriptedReply(chunks=["a ", "b ", "c "], die_after_chunks=1))
        with pytest.raises(openai.APIError):  # 1 killed mid-stream
            list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))

        ledger = records(gw, 8)
        samples = metric_samples(gw.url)
        chat = {"route": "chat.completions", "model": MODEL, "backend": "local"}
        assert metric(samples, "gateway_requests_total", status="200", **chat) == 6
        assert metric(samples, "gateway_requests_total", status="200", surface="ollama") == 1
        assert metric(samples, "gateway_requests_total", status="404") == 2
        assert metric(samples, "gateway_requests_total", status="502", **chat) == 1
        assert metric(samples, "gateway_requests_total") == 10
        assert metric(samples, "gateway_request_duration_seconds_count") == 10
        assert metric(samples, "gateway_upstream_retries_total", backend="local") == 1
        assert metric(samples, "gateway_upstream_errors_total", kind="http_503") == 1
        assert metric(samples, "gateway_upstream_errors_total", kind="upstream_error") == 1
        assert metric(samples, "gateway_requests_in_flight") == 1  # the scrape itself
        # The counters and the ledger tell the same story.
        assert len(ledger) == 8
        assert metric(samples, "gateway_tokens_total", kind="prompt") == sum(
            r.prompt_tokens for r in ledger
        )
        assert metric(samples, "gateway_tokens_total", kind="completion") == sum(
            r.completion_tokens for r in ledger
        )
        assert sum(r.attempts - 1 for r in ledger) == 1
