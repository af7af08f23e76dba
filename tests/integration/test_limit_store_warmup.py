"""Shared limits that hold from the first request (issue 11).

Real gateway processes, cold (no warm-up request), on a real redis-server
and on a real 3-primary Redis Cluster, all on free loopback ports:

* a burst within 100 ms of ``/ready`` turning 200: every answer 200 or 429,
  none 503, admitted within the GCRA bound, the ledger equal to what the
  backend reported;
* a slot migration (``CLUSTER SETSLOT ... MIGRATING/IMPORTING`` + ``MIGRATE``)
  of the limited user's keys during a run: no 503;
* a healthy but loaded Redis (a parallel ``redis-benchmark``) never trips the
  failure policy;
* Redis killed and restarted, and one Cluster primary restarted: shared
  limits again within 2 s, no 503 after, ``/metrics`` shows the fallback time.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sansio_gateway.adapters.limit_stores import ResilientLimitStore

from tests.emulators.ollama import OllamaEmulator, run_ollama_emulator
from tests.helpers import RunningGateway, make_config, running_gateway, wait_for
from tests.integration.test_limits_end_to_end import (
    BODY,
    MAX_TOKENS,
    MODEL,
    PROMPT_ESTIMATE,
    REPLY,
    Flow,
    Shot,
    assert_rate_429,
    auth,
    config_text,
    gateway_processes,
    ledger_totals,
    shared_store,
)
from tests.redis_servers import (
    SLOT_RANGES,
    _cluster_ok,
    redis_cluster,
    redis_cluster_servers,
    redis_server,
    wait_until,
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator(record_requests=False) as emu:
        emu.set_reply(MODEL, REPLY)
        yield emu


def burst_once_ready(
    urls: list[str], user: str, count: int = 60, at_once: int = 30
) -> tuple[list[Shot], float]:
    """Poll ``/ready`` on every process; the moment all say 200, send
    ``count`` requests, ``at_once`` at a time, round-robin.  Returns the
    shots and when the last ``/ready`` answered 200."""
    with (
        httpx.Client(timeout=10, limits=httpx.Limits(max_connections=at_once)) as client,
        ThreadPoolExecutor(max_workers=at_once) as pool,
    ):

        def one(i: int) -> Shot:
            sent = time.monotonic()
            response = client.post(
                urls[i % len(urls)] + "/v1/chat/completions", json=BODY, headers=auth(user)
            )
            return Shot(response, sent, time.monotonic())

        wait_for(lambda: all(client.get(u + "/ready").status_code == 200 for u in urls), timeout=20)
        ready_at = time.monotonic()
        return list(pool.map(one, range(count))), ready_at


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "count"), [("redis", 3), ("redis", 4), ("cluster", 3)])
def test_cold_processes_take_a_burst_right_after_ready(
    kind: str, count: int, emulator: OllamaEmulator, tmp_path: Path
) -> None:
    with shared_store(kind) as url:
        config = tmp_path / "gateway.toml"
        config.write_text(config_text(emulator.url, store=url, usage=url, on_error="closed"))
        with gateway_processes(config, count) as urls:
            # requests_per_minute = 60: burst 10, then one a second
            shots, ready_at = burst_once_ready(urls, "burst")
            first = min(s.sent for s in shots)
            assert first - ready_at < 0.1
            window = max(s.done for s in shots) - first
            statuses = Counter(s.response.status_code for s in shots)
            assert set(statuses) <= {200, 429}, statuses  # never a 503
            admitted = statuses[200]
            assert 10 <= admitted <= 10 + window * 60 / 60 + 1, (statuses, window)
            for shot in shots:
                if shot.response.status_code == 429:
                    assert_rate_429(shot.response, unit="requests", limit=60, max_wait_ms=1000)
            n = admitted
            wait_for(
                lambda: ledger_totals(urls, "burst")() == (n, n * PROMPT_ESTIMATE, n * MAX_TOKENS)
            )


def _store(gw: RunningGateway) -> ResilientLimitStore:
    store = gw.app.limit_store
    assert isinstance(store, ResilientLimitStore)
    return store


def _node_id(port: int) -> str:
    with redis.Redis(port=port, decode_responses=True) as c:
        return str(c.execute_command("CLUSTER MYID"))


def _flowing(gw: RunningGateway, user: str) -> tuple[Flow, threading.Thread]:
    flow = Flow(gw.url, user, [], threading.Event())
    thread = threading.Thread(target=flow.run, daemon=True)
    thread.start()
    return flow, thread


def _migrate(
    slot: int,
    ports: list[int],
    src: redis.Redis,
    src_port: int,
    src_id: str,
    dst: redis.Redis,
    dst_port: int,
    dst_id: str,
) -> None:
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", dst_port, "", 0, 5000, "KEYS", *keys)
    for port in ports:
        with redis.Redis(port=port) as c:
            c.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)


@pytest.mark.slow
def test_a_slot_migration_during_a_run_is_never_a_503(emulator: OllamaEmulator) -> None:
    user = "fault"  # requests_per_minute = 600000: every answer should be 200
    slot = redis.crc.key_slot(f"{{u:{user}}}".encode())
    with redis_cluster() as ports:
        src = next(p for p, (lo, hi) in zip(ports, SLOT_RANGES, strict=True) if lo <= slot <= hi)
        dst = next(p for p in ports if p != src)
        src_id, dst_id = _node_id(src), _node_id(dst)
        url = f"redis+cluster://127.0.0.1:{ports[0]}"
        config = make_config(config_text(emulator.url, store=url, on_error="closed"))
        with running_gateway(config) as gw, redis.Redis(port=src) as s, redis.Redis(port=dst) as d:
            flows = [_flowing(gw, user) for _ in range(4)]  # overlapping requests
            try:
                wait_for(lambda: all(len(f.log) >= 5 for f, _ in flows))
                # As `redis-cli --cluster reshard` does it, there and back, five times.
                there, back = (s, src, src_id, d, dst, dst_id), (d, dst, dst_id, s, src, src_id)
                for _ in range(5):
                    for step in (there, back):
                        _migrate(slot, ports, *step)
                        mark = sum(len(f.log) for f, _ in flows)
                        wait_for(lambda m=mark: sum(len(f.log) for f, _ in flows) >= m + 8)  # type: ignore[misc]
                assert s.exists(f"rl:v1:{{u:{user}}}:g")  # back on its first owner
            finally:
                for flow, thread in flows:
                    flow.stop.set()
                    thread.join(timeout=15)
        statuses = Counter(s.response.status_code for f, _ in flows for s in f.log)
        assert set(statuses) == {200}, statuses
        assert _store(gw).store_errors == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-benchmark") is None, reason="needs redis-benchmark")
def test_a_loaded_but_healthy_redis_never_trips_the_policy(emulator: OllamaEmulator) -> None:
    with redis_server() as server, contextlib.ExitStack() as stack:
        config = make_config(config_text(emulator.url, store=server.url, on_error="closed"))
        gws = [stack.enter_context(running_gateway(config)) for _ in range(2)]
        load = subprocess.Popen(
            ["redis-benchmark", "-p", str(server.port), "-c", "50", "-n", "100000000",
             "-P", "16", "-t", "set,get,incr,lpush", "-q", "-l"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        stack.callback(load.wait)
        stack.callback(load.kill)
        with redis.Redis(port=server.port) as r:
            wait_for(lambda: int(r.info("stats")["total_commands_processed"]) > 100_000)
        flows = [_flowing(gw, "fault") for gw in gws]
        try:
            wait_for(lambda: all(len(f.log) >= 40 for f, _ in flows), timeout=60)
        finally:
            for flow, thread in flows:
                flow.stop.set()
                thread.join(timeout=15)
        for (flow, _), gw in zip(flows, gws, strict=True):
            statuses = Counter(s.response.status_code for s in flow.log)
            assert set(statuses) == {200}, statuses
            assert _store(gw).store_errors == 0 and _store(gw).fallback_seconds == 0


def _metric(url: str, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def _recovers_within_2s(gw: RunningGateway, flow: Flow, restart: object) -> None:
    """``restart()`` brings the store back; shared limits again within 2 s
    (as seen by the store), and every request sent after that is a 200."""
    assert callable(restart)
    restart()
    back = time.monotonic()
    wait_for(lambda: _store(gw).fallback_mode is None, timeout=10)
    assert time.monotonic() - back < 2.0
    healed = time.monotonic()
    wait_for(lambda: flow.count_after(healed) >= 10)
    after = [s.response.status_code for s in flow.log if s.sent > healed]
    assert set(after) == {200}, Counter(after)


@pytest.mark.slow
def test_redis_killed_and_restarted_back_to_shared_limits_within_2s(
    emulator: OllamaEmulator,
) -> None:
    with redis_server() as server:
        config = make_config(config_text(emulator.url, store=server.url, on_error="closed"))
        with running_gateway(config) as gw:
            flow, thread = _flowing(gw, "fault")
            try:
                wait_for(lambda: len(flow.log) >= 5)
                server.kill()
                killed = time.monotonic()
                wait_for(lambda: flow.count_after(killed) >= 5)
                assert httpx.get(gw.url + "/ready").status_code == 503
                status = httpx.get(gw.url + "/status", headers=auth("admin")).json()
                assert status["limit_store"]["ready"] is False
                assert "redis unreachable" in status["limit_store"]["reason"]
                _recovers_within_2s(gw, flow, server.start)
                assert httpx.get(gw.url + "/ready").status_code == 200
            finally:
                flow.stop.set()
                thread.join(timeout=15)
            assert _metric(gw.url, "gateway_store_fallback_seconds") > 0
            assert _metric(gw.url, "gateway_store_ready") == 1


@pytest.mark.slow
def test_one_cluster_primary_restarted_back_to_shared_limits_within_2s(
    emulator: OllamaEmulator,
) -> None:
    user = "fault"
    slot = redis.crc.key_slot(f"{{u:{user}}}".encode())
    with redis_cluster_servers() as (ports, servers):
        owner = next(
            s for s, (lo, hi) in zip(servers, SLOT_RANGES, strict=True) if lo <= slot <= hi
        )
        url = f"redis+cluster://127.0.0.1:{ports[0]}"
        config = make_config(config_text(emulator.url, store=url, on_error="closed"))
        with running_gateway(config) as gw:
            flow, thread = _flowing(gw, user)
            try:
                wait_for(lambda: len(flow.log) >= 5)
                owner.kill()
                killed = time.monotonic()
                wait_for(lambda: flow.count_after(killed) >= 5)

                # Its nodes.conf keeps its id and slots: it rejoins as the same
                # primary.  The store is back when the cluster says so again.
                def restart() -> None:
                    owner.start()
                    wait_until(partial(_cluster_ok, owner.port), timeout=30, what="rejoined")

                _recovers_within_2s(gw, flow, restart)
            finally:
                flow.stop.set()
                thread.join(timeout=15)
            assert _metric(gw.url, "gateway_store_fallback_seconds") > 0
