"""Rate limits, auth and usage accounting end to end, as clients and operators see them.

* The official ``openai`` and ``ollama`` SDKs against a real gateway (in this
  process) and the emulated Ollama: 429s with their headers and bodies, which
  of them the openai SDK retries, 401/403/404, and ``/admin/usage`` totals
  that equal what the backend reported.
* Four real gateway processes (``python -m sansio_gateway.adapters.cli serve``) sharing one
  redis-server -- and then a 3-primary Redis Cluster -- under a burst from
  one key: admitted requests (and tokens) stay within ``burst + W * rate``
  and reach at least the burst; the Redis usage ledger adds up.
* Faults: Redis killed and paused while requests flow, under each
  ``on_error`` policy, and the recovery; a client that disconnects
  mid-stream.

Every server here is started by the test on a free loopback port; nothing
sleeps to wait (conditions are polled, with bounds).  Tests marked xfail
(strict) show bugs found in code outside this file; the reason names it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sansio_gateway.adapters.app import GatewayApp
from sansio_gateway.adapters.ledger import RedisLedger
from sansio_gateway.adapters.limit_stores import ResilientLimitStore

from sansio_gateway.accounting.admission import admission_tokens
from sansio_gateway.accounting.usage_query import UsageQuery
from sansio_gateway.auth import hash_key
from sansio_gateway.config import ConfigError
from sansio_gateway.limits import Fallback
from tests.emulators.ollama import OllamaEmulator, ScriptedReply, run_ollama_emulator, token_chunks
from tests.helpers import RunningGateway, make_config, running_gateway, wait_for
from tests.redis_servers import free_port, redis_cluster, redis_server

MODEL = "llama3.2:1b"
PROMPT = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 75
BODY: dict[str, Any] = {"model": MODEL, "messages": PROMPT, "max_tokens": MAX_TOKENS}
# What admission charges for BODY: the prompt estimate (25) + the output cap.
ESTIMATE = admission_tokens(orjson.dumps(BODY), default_output_cap=4096, generates=True)
PROMPT_ESTIMATE = ESTIMATE - MAX_TOKENS
# The backend reports exactly the estimate, so commits change nothing and the
# token bounds below hold for estimates and actual tokens alike.
REPLY = ScriptedReply(prompt_eval_count=PROMPT_ESTIMATE, eval_count=MAX_TOKENS)

KEYS = {
    name: f"sk-test-{name}-0123456789abcdef"
    for name in (
        "rate", "quota", "big", "ollama", "narrow", "admin", "usage", "stream", "dup",
        "cap", "fault", "local", "burst", "tpm",
    )
}  # fmt: skip
LIMITS = """
[limits.users.rate]
requests_per_minute = 60
[limits.users.ollama]
requests_per_minute = 60
[limits.users.quota]
tokens_per_day = 250
[limits.users.big]
tokens_per_minute = 60
[limits.users.stream]
concurrent_requests = 1
tokens_per_minute = 600
[limits.users.dup]
concurrent_requests = 1
[limits.users.cap]
tokens_per_minute = 100000
[limits.users.fault]
requests_per_minute = 600000
[limits.users.local]
requests_per_minute = 60
[limits.users.burst]
requests_per_minute = 60
[limits.users.tpm]
tokens_per_minute = 6000
"""


def config_text(
    emulator_url: str,
    *,
    store: str = "memory://",
    usage: str = "memory://",
    on_error: str = "local",
) -> str:
    keys = ""
    for name, key in KEYS.items():
        models = '["qwen3*"]' if name == "narrow" else '["*"]'
        admin = "true" if name == "admin" else "false"
        keys += (
            f'[[auth.keys]]\nid = "{name}-key"\nuser = "{name}"\nsha256 = "{hash_key(key)}"\n'
            f"models = {models}\nadmin = {admin}\n"
        )
    return (
        f'[[backends]]\nname = "local"\nkind = "ollama"\nurl = "{emulator_url}"\n'
        f"first_byte_timeout = 10\nidle_timeout = 10\n"
        f'{keys}{LIMITS}\n[store]\nurl = "{store}"\non_error = "{on_error}"\nusage = "{usage}"\n'
    )


def auth(user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[user]}"}


def chat(url: str, user: str, body: dict[str, Any] = BODY, **kw: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, headers=auth(user), timeout=10, **kw)


def served(url: str) -> Counter[int]:
    """Chat requests the gateway answered, by status (from its /metrics)."""
    counts: Counter[int] = Counter()
    text = httpx.get(url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_requests_total" and s.labels["route"] in (
                "chat.completions",
                "ollama.chat",
            ):
                counts[int(s.labels["status"])] += int(s.value)
    return counts


def assert_rate_429(response: httpx.Response, *, unit: str, limit: int, max_wait_ms: int) -> None:
    """A rate 429 as OpenAI sends it: Retry-After, retry-after-ms, the
    x-ratelimit-* set, and ``code: rate_limit_exceeded``."""
    assert response.status_code == 429, response.text
    h = response.headers
    wait_ms = int(h["retry-after-ms"])
    assert 0 < wait_ms <= max_wait_ms
    assert int(h["retry-after"]) == math.ceil(wait_ms / 1000)
    assert "x-should-retry" not in h
    assert h[f"x-ratelimit-limit-{unit}"] == str(limit)
    cost = 1 if unit == "requests" else ESTIMATE
    assert 0 <= int(h[f"x-ratelimit-remaining-{unit}"]) < cost  # too little left for it
    error = response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == unit
    label = "requests per min (RPM)" if unit == "requests" else "tokens per min (TPM)"
    assert error["message"].startswith(f"Rate limit reached for {MODEL}")
    assert f"on {label}: Limit {limit}," in error["message"]


def seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return (midnight - now).total_seconds()


@pytest.fixture(scope="module")
def emulator() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator() as emu:
        emu.set_reply(MODEL, REPLY)
        yield emu


@pytest.fixture(scope="module")
def gateway(emulator: OllamaEmulator) -> Iterator[RunningGateway]:
    with running_gateway(make_config(config_text(emulator.url))) as gw:
        yield gw


@pytest.fixture
def slow_stream(emulator: OllamaEmulator) -> Iterator[None]:
    """Answers of 60 pieces, 30 ms apart: long enough to act mid-stream."""
    emulator.set_reply(
        MODEL,
        ScriptedReply(chunks=token_chunks(60), delay_between_chunks=0.03, prompt_eval_count=9),
    )
    yield
    emulator.set_reply(MODEL, REPLY)


# ---- the openai SDK: 429s and which of them it retries ---------------------------------


def test_openai_sdk_gets_a_rate_limit_error_and_retries_it(gateway: RunningGateway) -> None:
    url = gateway.url
    assert [chat(url, "rate").status_code for _ in range(10)] == [200] * 10  # the burst
    denied = chat(url, "rate")
    assert_rate_429(denied, unit="requests", limit=60, max_wait_ms=1000)

    with (
        openai.OpenAI(base_url=url + "/v1", api_key=KEYS["rate"], max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as info,
    ):
        client.chat.completions.create(**BODY)
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert_rate_429(err.response, unit="requests", limit=60, max_wait_ms=1000)

    # Deny again with a wait long enough that the SDK's first attempt is
    # surely denied too (a slot may be just about to free up).
    for _ in range(30):
        denied = chat(url, "rate")
        if denied.status_code == 429 and int(denied.headers["retry-after-ms"]) >= 300:
            break
    else:
        raise AssertionError("no 429 with a long enough wait")
    before = served(url)
    with openai.OpenAI(base_url=url + "/v1", api_key=KEYS["rate"], max_retries=2) as client:
        completion = client.chat.completions.create(**BODY)
    assert completion.usage is not None and completion.usage.total_tokens == ESTIMATE
    after = served(url)
    # one 429, then the retry after retry-after-ms, admitted exactly then
    assert (after[429] - before[429], after[200] - before[200]) == (1, 1)


def test_openai_sdk_does_not_retry_the_daily_quota(gateway: RunningGateway) -> None:
    url = gateway.url
    store = gateway.app.limit_store
    assert [chat(url, "quota").status_code for _ in range(2)] == [200, 200]  # 200 of 250
    # Commits run after the response is sent: wait until both are settled,
    # so that no reservation (expiring before midnight) sets the Retry-After.
    wait_for(lambda: not store.memory.state("quota").inflight)  # type: ignore[attr-defined]
    before = served(url)
    with (
        openai.OpenAI(base_url=url + "/v1", api_key=KEYS["quota"], max_retries=2) as client,
        pytest.raises(openai.RateLimitError) as info,
    ):
        client.chat.completions.create(**BODY)
    after = served(url)
    assert after[429] - before[429] == 1 and after[200] == before[200]  # not retried
    err = info.value
    assert err.code == "insufficient_quota" and err.type == "tokens"
    h = err.response.headers
    assert h["x-should-retry"] == "false"
    assert abs(int(h["retry-after"]) - seconds_to_midnight()) <= 2  # the day's end
    message = err.response.json()["error"]["message"]
    assert "on tokens per day (TPD): Limit 250, Used 200, Requested 100." in message


def test_openai_sdk_does_not_retry_a_request_too_large(gateway: RunningGateway) -> None:
    url = gateway.url
    before = served(url)
    with (
        openai.OpenAI(base_url=url + "/v1", api_key=KEYS["big"], max_retries=2) as client,
        pytest.raises(openai.RateLimitError) as info,
    ):
        client.chat.completions.create(**BODY)
    after = served(url)
    assert after[429] - before[429] == 1
    err = info.value
    h = err.response.headers
    assert h["x-should-retry"] == "false"
    assert "retry-after" not in h and "retry-after-ms" not in h
    assert err.code == "rate_limit_exceeded"
    message = err.response.json()["error"]["message"]
    assert message.startswith(f"Request too large for {MODEL}")
    assert "on tokens per min (TPM): Limit 60 (at most 10 at once), Requested 100." in message


# ---- the ollama SDK: the same 429 in Ollama's form ----------------------------------------


def test_ollama_sdk_gets_a_429_response_error(gateway: RunningGateway) -> None:
    url = gateway.url
    native = {"model": MODEL, "messages": PROMPT, "stream": False, "options": {"num_predict": 75}}
    with ollama.Client(host=url, headers=auth("ollama")) as client:
        for _ in range(10):
            assert client.chat(**native).message.content
        with pytest.raises(ollama.ResponseError) as info:
            client.chat(**native)
    assert info.value.status_code == 429
    assert info.value.error.startswith(f"Rate limit reached for {MODEL}")
    raw = httpx.post(url + "/api/chat", json=native, headers=auth("ollama"))
    assert raw.status_code == 429
    assert set(raw.json()) == {"error"} and "requests per min (RPM)" in raw.json()["error"]
    wait_ms = int(raw.headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000 and int(raw.headers["retry-after"]) == 1
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"


# ---- auth on both surfaces, and /admin/usage ---------------------------------------------


def test_unknown_keys_get_401_on_both_surfaces(gateway: RunningGateway) -> None:
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as info,
    ):
        client.chat.completions.create(**BODY)
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    with (
        ollama.Client(host=gateway.url, headers={"authorization": "Bearer sk-wrong"}) as c,
        pytest.raises(ollama.ResponseError) as native,
    ):
        c.chat(model=MODEL, messages=PROMPT)
    assert native.value.status_code == 401
    with ollama.Client(host=gateway.url) as c, pytest.raises(ollama.ResponseError) as missing:
        c.chat(model=MODEL, messages=PROMPT)
    assert missing.value.status_code == 401


def test_the_allow_list_hides_other_models_on_both_surfaces(gateway: RunningGateway) -> None:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS["narrow"], max_retries=0) as c:
        with pytest.raises(openai.NotFoundError) as info:
            c.chat.completions.create(**BODY)
        assert info.value.code == "model_not_found"
        assert [m.id for m in c.models.list()] == ["qwen3:0.6b"]
    with (
        ollama.Client(host=gateway.url, headers=auth("narrow")) as client,
        pytest.raises(ollama.ResponseError) as native,
    ):
        client.chat(model=MODEL, messages=PROMPT)
    assert native.value.status_code == 404
    assert native.value.error == f'model "{MODEL}" not found, try pulling it first'


def usage_rows(url: str, auth_as: str = "admin", **filters: str) -> httpx.Response:
    return httpx.get(url + "/admin/usage", params=filters, headers=auth(auth_as), timeout=10)


def test_admin_usage_totals_equal_what_the_backend_reported(
    gateway: RunningGateway, emulator: OllamaEmulator
) -> None:
    url = gateway.url
    with openai.OpenAI(base_url=url + "/v1", api_key=KEYS["usage"], max_retries=0) as client:
        for _ in range(3):
            client.chat.completions.create(**BODY)
        for options in ({}, {"include_usage": True}):
            stream = client.chat.completions.create(**BODY, stream=True, stream_options=options)
            assert list(stream)
    with ollama.Client(host=url, headers=auth("usage")) as native:
        native.chat(model=MODEL, messages=PROMPT, options={"num_predict": MAX_TOKENS})
        assert list(native.chat(model=MODEL, messages=PROMPT, stream=True))
    n = 7
    reported = (n, n * REPLY.prompt_eval_count, n * MAX_TOKENS)
    expected = {
        "user": "usage",
        "model": MODEL,
        "day": datetime.now(UTC).strftime("%Y-%m-%d"),
        "requests": n,
        "prompt_tokens": reported[1],
        "completion_tokens": reported[2],
        "total_tokens": reported[1] + reported[2],
    }
    # Records are written as responses end: poll until all seven are in.
    wait_for(lambda: usage_rows(url, user="usage").json()["data"] == [expected])

    forbidden = usage_rows(url, auth_as="usage")
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"
    today = expected["day"]
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d")
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    for filters, rows in (
        ({"user": "usage", "model": MODEL}, [expected]),
        ({"user": "usage", "model": "qwen3:0.6b"}, []),
        ({"user": "usage", "since": today}, [expected]),
        ({"user": "usage", "until": today}, [expected]),  # a bare date: the end of that day
        ({"user": "usage", "until": yesterday}, []),
        ({"user": "usage", "since": tomorrow}, []),
        ({"user": "nobody"}, []),
    ):
        response = usage_rows(url, **filters)
        assert response.status_code == 200
        assert response.json()["data"] == rows, filters
    everyone = usage_rows(url).json()["data"]
    assert expected in everyone and {r["user"] for r in everyone} >= {"rate", "usage"}
    bad = usage_rows(url, since="yesterday-ish")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"


# ---- four gateway processes, one Redis (standalone, then a cluster) --------------------


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str]
    url: str = ""


def _drain(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:  # read to EOF, so the gateway never blocks on a full pipe
        lines.put(line)


@contextlib.contextmanager
def gateway_processes(config: Path, count: int) -> Iterator[list[str]]:
    """``count`` real ``sansio-gateway serve`` processes; yields their URLs."""
    gateways: list[GatewayProcess] = []
    try:
        for _ in range(count):
            proc = subprocess.Popen(
                [sys.executable, "-m", "sansio_gateway.adapters.cli", "--log-level", "WARNING", "serve",
                 "--config", str(config), "--port", "0"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            gw = GatewayProcess(proc, queue.Queue())
            threading.Thread(target=_drain, args=(proc, gw.lines), daemon=True).start()
            gateways.append(gw)
        for gw in gateways:
            seen = []
            while not gw.url:
                try:
                    line = gw.lines.get(timeout=30)
                except queue.Empty:
                    raise AssertionError(f"gateway did not start: {seen}") from None
                seen.append(line)
                if "listening on " in line:
                    gw.url = line.split("listening on ")[1].split()[0]
        yield [gw.url for gw in gateways]
    finally:
        for gw in gateways:
            if gw.proc.poll() is None:
                gw.proc.send_signal(signal.SIGTERM)  # graceful: the ledger flushes
        for gw in gateways:
            try:
                gw.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                gw.proc.kill()
                gw.proc.wait()
            if gw.proc.stdout is not None:
                gw.proc.stdout.close()


@dataclass
class Shot:
    response: httpx.Response
    sent: float
    done: float


def burst(urls: list[str], user: str, count: int = 80) -> tuple[list[Shot], float]:
    """``count`` parallel requests from one key (4 at a time), round-robin
    over ``urls``; returns them and the window W (first sent .. last answered)."""
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=4)) as client:

        def one(i: int) -> Shot:
            sent = time.monotonic()
            response = client.post(
                urls[i % len(urls)] + "/v1/chat/completions", json=BODY, headers=auth(user)
            )
            return Shot(response, sent, time.monotonic())

        with ThreadPoolExecutor(max_workers=4) as pool:
            shots = list(pool.map(one, range(count)))
    window = max(s.done for s in shots) - min(s.sent for s in shots)
    return shots, window


def warm_up(urls: list[str]) -> None:
    """A burst before measuring.  No longer needed for correctness (the
    store is warmed before /ready; test_limit_store_warmup.py bursts cold
    processes), kept so these figures start from the same state as before."""
    for _ in range(20):
        shots, _ = burst(urls, "fault", count=40)
        if all(s.response.status_code == 200 for s in shots):
            return
        # a tripped breaker lets a probe through after 1 s: poll until it has
        wait_for(lambda: all(chat(u, "fault").status_code == 200 for u in urls), timeout=5)
    raise AssertionError("the gateways never served a burst without store errors")


def ledger_totals(urls: list[str], user: str) -> Callable[[], tuple[int, int, int]]:
    def read() -> tuple[int, int, int]:
        rows = usage_rows(urls[-1], user=user).json()["data"]
        return (
            sum(r["requests"] for r in rows),
            sum(r["prompt_tokens"] for r in rows),
            sum(r["completion_tokens"] for r in rows),
        )

    return read


@pytest.fixture(scope="module")
def multi_emulator() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator(record_requests=False) as emu:
        emu.set_reply(MODEL, REPLY)
        yield emu


@contextlib.contextmanager
def shared_store(kind: str) -> Iterator[str]:
    if kind == "redis":
        with redis_server() as server:
            yield server.url
    else:
        with redis_cluster() as ports:
            yield f"redis+cluster://127.0.0.1:{ports[0]}"


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_four_processes_share_the_limits_and_the_ledger(
    kind: str, multi_emulator: OllamaEmulator, tmp_path: Path
) -> None:
    with shared_store(kind) as url:
        config = tmp_path / "gateway.toml"
        # closed: a store failure would show up as a 503, never as extra admissions
        config.write_text(config_text(multi_emulator.url, store=url, usage=url, on_error="closed"))
        with gateway_processes(config, 4) as urls:
            warm_up(urls)
            # requests_per_minute = 60: burst 10, then one a second
            shots, window = burst(urls, "burst")
            admitted = [s for s in shots if s.response.status_code == 200]
            statuses = Counter(s.response.status_code for s in shots)
            assert 10 <= len(admitted) <= 10 + window * 60 / 60 + 1, (statuses, window)
            for shot in shots:
                if shot.response.status_code != 200:
                    assert_rate_429(shot.response, unit="requests", limit=60, max_wait_ms=1000)
            n = len(admitted)
            wait_for(
                lambda: ledger_totals(urls, "burst")() == (n, n * PROMPT_ESTIMATE, n * MAX_TOKENS)
            )

            # tokens_per_minute = 6000: burst 1,000 tokens, then 100 a second;
            # every request costs ESTIMATE = 100 tokens (and reports as much).
            shots, window = burst(urls, "tpm")
            admitted = [s for s in shots if s.response.status_code == 200]
            tokens = len(admitted) * ESTIMATE
            assert 1000 <= tokens <= 1000 + window * 6000 / 60 + ESTIMATE, (tokens, window)
            for shot in shots:
                if shot.response.status_code != 200:
                    assert_rate_429(shot.response, unit="tokens", limit=6000, max_wait_ms=1000)
            n = len(admitted)
            wait_for(
                lambda: ledger_totals(urls, "tpm")() == (n, n * PROMPT_ESTIMATE, n * MAX_TOKENS)
            )
        # After a graceful stop, the ledger still holds everything (read directly).
        ledger = RedisLedger.from_url(url)
        try:
            rows = ledger.query_sync(UsageQuery(user="tpm"))
            assert sum(r.requests for r in rows) == n
        finally:
            ledger.client.close()


# ---- faults: Redis killed and paused while requests flow ---------------------------------


@dataclass
class Flow:
    """Requests sent back to back to one gateway from a thread, all logged."""

    url: str
    user: str
    log: list[Shot]
    stop: threading.Event

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            response = chat(self.url, self.user)
            self.log.append(Shot(response, sent, time.monotonic()))

    def count_after(self, t: float) -> int:
        return sum(1 for s in self.log if s.sent > t)

    def between(self, start: float, end: float) -> list[Shot]:
        return [s for s in self.log if s.sent > start and s.done < end]


def _store(gw: RunningGateway) -> ResilientLimitStore:
    store = gw.app.limit_store
    assert isinstance(store, ResilientLimitStore)
    return store


def _has_user_state(port: int, user: str) -> bool:
    with redis.Redis(port=port) as c:
        return bool(c.exists(f"rl:v1:{{u:{user}}}:g"))


def test_redis_dies_and_returns_under_each_policy(emulator: OllamaEmulator) -> None:
    policies = ("closed", "local", "open")
    with redis_server() as server, contextlib.ExitStack() as stack:
        gws = {
            policy: stack.enter_context(
                running_gateway(
                    make_config(config_text(emulator.url, store=server.url, on_error=policy))
                )
            )
            for policy in policies
        }
        stop = threading.Event()
        flows = {p: Flow(gws[p].url, "fault", [], stop) for p in policies}
        threads = [threading.Thread(target=f.run, daemon=True) for f in flows.values()]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(len(f.log) >= 3 for f in flows.values()))
            assert all(_store(gw).fallback_mode is None for gw in gws.values())
            assert _has_user_state(server.port, "fault")

            server.kill()  # mid-run
            killed = time.monotonic()
            wait_for(lambda: all(f.count_after(killed) >= 5 for f in flows.values()))
            assert {_store(gw).fallback_mode for gw in gws.values()} == set(policies)
            # Local limits still hold on "local" (10 at once at 60/min);
            # "open" lets everything through.
            # All 15 at once, so that a slow (loaded) machine cannot let the
            # bucket refill between them.
            began = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(15) as pool:
                local_burst = list(
                    pool.map(lambda _: chat(gws["local"].url, "local").status_code, range(15))
                )
            took = time.monotonic() - began  # GCRA: 10 at once, then one a second
            assert 10 <= local_burst.count(200) <= 11 + int(took), (local_burst, took)
            assert set(local_burst) == {200, 429}
            assert [chat(gws["open"].url, "local").status_code for _ in range(15)] == [200] * 15
            assert _store(gws["local"]).fallback_decisions[Fallback.LOCAL] > 0

            restarting = time.monotonic()
            server.start()  # a new, empty redis-server on the same port
            # The breaker lets a probe through after its cooldown (1 s);
            # the flowing requests are those probes.
            wait_for(
                lambda: all(_store(gw).fallback_mode is None for gw in gws.values()), timeout=10
            )
            recovered = time.monotonic()
            wait_for(lambda: all(f.count_after(recovered) >= 3 for f in flows.values()))
            assert _has_user_state(server.port, "fault")  # admitted by Redis again

            # Paused (not dead): connections hang; the decision timeout answers.
            server.pause()
            paused = time.monotonic()
            wait_for(lambda: flows["closed"].count_after(paused) >= 5)
            server.resume()
            resumed = time.monotonic()
            wait_for(lambda: _store(gws["closed"]).fallback_mode is None, timeout=10)
            healed = time.monotonic()
            wait_for(lambda: flows["closed"].count_after(healed) >= 2)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15)

    for policy, flow in flows.items():
        # Never a hang: every answer came within a second, whatever Redis did
        # (on "local", leaving out the requests that queued behind the burst).
        slowest = max(
            s.done - s.sent
            for s in flow.log
            if policy != "local" or not began - 1.0 <= s.sent <= began + took
        )
        assert slowest < 1.0, (policy, slowest)
        outage = [s.response for s in flow.between(killed, restarting)]
        assert outage
        if policy == "closed":
            for r in outage:
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "rate_limit_store_unavailable"
        else:
            assert {r.status_code for r in outage} == {200}
        # Redis back: admitted again (for "closed", until the pause below).
        back = (
            flow.between(recovered, paused) if policy == "closed" else flow.between(recovered, 1e18)
        )
        assert back and {s.response.status_code for s in back} == {200}, policy
    # Paused: "closed" answers 503 within the decision timeout, never hangs.
    during_pause = flows["closed"].between(paused + 0.1, resumed)
    assert during_pause and {s.response.status_code for s in during_pause} == {503}


def charged_at_commit(r: redis.Redis, user: str) -> float:
    """Tokens of the user's TPM debt (600/min) at its last commit: the TAT
    minus the clock the commit ran at, at 100 ms per token."""
    state = r.hgetall(f"rl:v1:{{u:{user}}}:g")
    return (int(state[b"t:tpm"]) - int(state[b"c"])) * 600 / 60_000_000


STREAM_BODY = {"model": MODEL, "messages": PROMPT, "max_tokens": 60, "stream": True}
SMALL_BODY = {"model": MODEL, "messages": PROMPT, "max_tokens": 1}  # costs 26


def test_a_completed_stream_releases_its_lease_and_pays_what_it_used(
    emulator: OllamaEmulator, slow_stream: None
) -> None:
    with redis_server() as server:
        config = make_config(config_text(emulator.url, store=server.url, on_error="closed"))
        with running_gateway(config) as gw, redis.Redis(port=server.port) as r:
            started = time.monotonic()
            with httpx.stream(
                "POST", gw.url + "/v1/chat/completions", json=STREAM_BODY, headers=auth("stream")
            ) as response:
                assert response.status_code == 200
                assert response.headers["x-ratelimit-limit-tokens"] == "600"
                assert b"[DONE]" in response.read()
            wait_for(lambda: r.hlen("rl:v1:{u:stream}:inflight") == 0)
            elapsed = time.monotonic() - started
            used = 9 + 60  # what the backend reported
            charged = charged_at_commit(r, "stream")
            assert used - elapsed * 10 - 1 <= charged <= used + 1, (charged, elapsed)
            assert chat(gw.url, "stream", SMALL_BODY).status_code == 200


def test_a_client_that_disconnects_mid_stream_frees_its_slot_and_pays_what_it_used(
    emulator: OllamaEmulator, slow_stream: None
) -> None:
    with redis_server() as server:
        config = make_config(config_text(emulator.url, store=server.url, on_error="closed"))
        with running_gateway(config) as gw, redis.Redis(port=server.port) as r:
            body = STREAM_BODY
            estimate = admission_tokens(orjson.dumps(body), default_output_cap=4096, generates=True)
            assert estimate == 85  # within the burst of 600/min (100 tokens)
            gone = emulator.disconnects
            started = time.monotonic()
            with httpx.stream(
                "POST", gw.url + "/v1/chat/completions", json=body, headers=auth("stream")
            ) as response:
                assert response.status_code == 200
                events = 0
                for chunk in response.iter_raw():
                    events += chunk.count(b"data: ")
                    if events >= 4:
                        break  # and hang up
            emulator.wait_for(lambda: emulator.disconnects > gone)
            wait_for(lambda: any(rec.outcome == "client_disconnected" for rec in gw.ledger.records))
            record = next(rec for rec in gw.ledger.records if rec.outcome == "client_disconnected")
            used = record.prompt_tokens + record.completion_tokens
            assert 4 <= record.completion_tokens < 60

            # The slot is free again: concurrent_requests = 1 lets the next one in.
            wait_for(lambda: r.hlen("rl:v1:{u:stream}:inflight") == 0, timeout=3)
            # Tokens: charged prompt + output so far, not the estimate.  At the
            # commit, the TAT is the admission time + used * 100 ms.
            charged = charged_at_commit(r, "stream")
            elapsed = time.monotonic() - started
            assert used - elapsed * 10 - 1 <= charged <= used + 1, (charged, used, elapsed)
            assert chat(gw.url, "stream", SMALL_BODY).status_code == 200


# ---- further bugs found on the way ---------------------------------------------------


def test_reusing_an_x_request_id_does_not_bypass_the_concurrency_limit(
    gateway: RunningGateway, emulator: OllamaEmulator, slow_stream: None
) -> None:
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 60, "stream": True}
    url = gateway.url + "/v1/chat/completions"
    headers = {**auth("dup"), "x-request-id": "my-trace-1"}
    with httpx.stream("POST", url, json=body, headers=headers) as first:
        assert first.status_code == 200
        chunks = first.iter_raw()  # held: a dropped iterator closes the connection
        next(chunks)  # streaming: its slot is taken
        other = httpx.post(url, json=body, headers={**headers, "x-request-id": "my-trace-2"})
        assert other.status_code == 429  # the one slot is taken ...
        same = httpx.post(url, json=body, headers=headers)
        assert same.status_code == 429  # ... whatever id the client sends


def test_the_ollama_surface_writes_the_charged_output_cap_upstream(
    gateway: RunningGateway, emulator: OllamaEmulator
) -> None:
    for options in ({}, {"num_predict": -1}):
        native = {"model": MODEL, "messages": PROMPT, "stream": False, "options": options}
        response = httpx.post(gateway.url + "/api/chat", json=native, headers=auth("cap"))
        assert response.status_code == 200
        sent = emulator.last_request("/api/chat").json
        assert sent["options"]["num_predict"] == 4096, sent


class SlowReplies:
    """A TCP proxy in front of Redis whose replies can be held back: Redis
    runs every command at once, the client hears about it late (a slow
    network, or a Redis busy with a slow command: its reply comes late)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hold = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port))
                self.sockets += [client, server]
                threading.Thread(
                    target=self._pump, args=(client, server, False), daemon=True
                ).start()
                threading.Thread(
                    target=self._pump, args=(server, client, True), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                while replies and self.hold.is_set():
                    time.sleep(0.005)  # the hold is the point: replies wait here
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_timed_out_decision_leaves_no_lease_behind(emulator: OllamaEmulator) -> None:
    with redis_server() as server:
        proxy = SlowReplies(server.port)
        url = f"redis://127.0.0.1:{proxy.port}/0"
        config = make_config(config_text(emulator.url, store=url, on_error="closed"))
        try:
            with running_gateway(config) as gw, redis.Redis(port=server.port) as r:
                assert chat(gw.url, "dup").status_code == 200  # warm: connection and script
                wait_for(lambda: r.hlen("rl:v1:{u:dup}:inflight") == 0)  # committed: idle
                proxy.hold.set()
                started = time.monotonic()
                refused = chat(gw.url, "dup")
                assert refused.status_code == 503 and time.monotonic() - started < 1.0
                proxy.hold.clear()
                # Redis answers in time again; once the breaker is closed, "dup"
                # has no request in flight, so its one slot must be free.
                wait_for(lambda: chat(gw.url, "fault").status_code == 200, timeout=5)
                statuses: list[int] = []
                wait_for(
                    lambda: statuses.append(chat(gw.url, "dup").status_code) or statuses[-1] != 503
                )
                assert statuses[-1] == 200
        finally:
            proxy.close()


def test_the_local_policy_shares_a_limit_between_separate_gateways(
    multi_emulator: OllamaEmulator, tmp_path: Path
) -> None:
    """[store] instances = 4: while Redis is down, each of four gateways
    enforces a quarter of each limit, so together they stay within it."""
    nothing = f"redis://127.0.0.1:{free_port()}/0"  # Redis is down from the start
    config = tmp_path / "gateway.toml"
    text = config_text(multi_emulator.url, store=nothing, on_error="local")
    config.write_text(text + "instances = 4\n")  # the last table is [store]
    with gateway_processes(config, 4) as urls:
        shots, window = burst(urls, "burst", count=60)
    statuses = Counter(s.response.status_code for s in shots)
    assert set(statuses) == {200, 429}, statuses
    # requests_per_minute = 60 shared by four gateways: 15 each, a burst of 2
    # each; together at most the one burst of 10 (+ W seconds' worth).
    assert 4 * 2 <= statuses[200] <= 10 + window + 1, (statuses, window)


def test_a_failing_store_shows_in_the_metrics(emulator: OllamaEmulator) -> None:
    nothing = f"redis://127.0.0.1:{free_port()}/0"  # no server there
    config = make_config(config_text(emulator.url, store=nothing, on_error="closed"))
    with running_gateway(config) as gw:
        wait_for(lambda: chat(gw.url, "fault").status_code == 503 and _store(gw).fallback_mode)
        samples = {}
        for family in text_string_to_metric_families(httpx.get(gw.url + "/metrics").text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        assert samples.get(("gateway_store_fallback_mode", (("policy", "closed"),))) == 1
        assert any(n == "gateway_store_errors_total" and v > 0 for (n, _), v in samples.items())


def test_a_redis_limit_store_on_trio_is_refused_at_startup(emulator: OllamaEmulator) -> None:
    """redis-py's asyncio client needs an asyncio loop: the combination is a
    configuration error, not dropped connections at the first request."""
    text = config_text(emulator.url, store="redis://127.0.0.1:1/0", on_error="closed")
    with pytest.raises(ConfigError, match="trio"):
        GatewayApp(make_config(text + '[server]\nruntime = "trio"\n'))
