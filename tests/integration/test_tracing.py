"""OpenTelemetry spans over loopback: a request that retried once, then fell back.

The real gateway (fast transport, anyio transport on asyncio and on trio, and
the ASGI app under uvicorn) in front of two emulated Ollamas: the primary
answers 503 ("server busy") every time, so the gateway retries it once
(``max_retries = 1``) and then falls back to the secondary.  The SDK's
``InMemorySpanExporter`` receives the spans; the emulators record the
``traceparent`` each attempt carried.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode
from sansio_gateway.adapters.tracing import open_tracing

from sansio_gateway.config import GatewayConfig
from sansio_gateway.tracing import parse_trace_context
from tests.emulators.ollama import OllamaEmulator, run_ollama_emulator
from tests.helpers import OtlpCollector, make_config, running_gateway, wait_for

KEY = "sk-trace-test-key-0123456789"
CLIENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[OllamaEmulator, OllamaEmulator]]:
    with run_ollama_emulator() as primary, run_ollama_emulator() as secondary:
        primary.update_reply("llama3.2:1b", error_status=503, error_message="server busy")
        yield primary, secondary


def _config(primary: OllamaEmulator, secondary: OllamaEmulator) -> GatewayConfig:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return make_config(
        f"[server]\nbreaker_failures = 1000\n"
        f'[[backends]]\nname = "primary"\nkind = "ollama"\nurl = "{primary.url}"\n'
        f"max_retries = 1\nretry_backoff = 0.01\n"
        f'[[backends]]\nname = "secondary"\nkind = "ollama"\nurl = "{secondary.url}"\n'
        f'[[models]]\nname = "gpt-4o-mini"\nbackend = "primary"\ntarget = "llama3.2:1b"\n'
        f'fallbacks = ["secondary:llama3.2:1b"]\n'
        f'[[models]]\nname = "secondary-direct"\nbackend = "secondary"\ntarget = "llama3.2:1b"\n'
        f'[[auth.keys]]\nid = "alice-laptop"\nuser = "alice"\nsha256 = "{digest}"\n'
        f"[limits]\nrequests_per_minute = 10000\n"
        f'[tracing]\nenabled = true\nexporter = "console"\n'
    )


@contextmanager
def _served(
    config: GatewayConfig, server: str, *, traced: bool = True
) -> Iterator[tuple[str, InMemorySpanExporter]]:
    """The gateway on ``server``, its spans going to an in-memory exporter
    (``traced`` False: the gateway's own tracer, off, and no spans at all)."""
    exporter = InMemorySpanExporter()
    tracing = open_tracing(config.tracing, exporter=exporter)
    if server == "asgi":
        from sansio_gateway.adapters.asgi import create_app

        from tests.integration.test_asgi import serve_uvicorn

        asgi = create_app(config)
        if traced:
            asgi.app.executor.tracing = tracing
        assert asgi.app.executor.tracing.enabled is traced
        with serve_uvicorn(asgi) as url:
            yield url, exporter
        return
    runtime, _, transport = server.partition("-")
    with running_gateway(config, runtime=runtime, transport=transport or None) as gw:
        if traced:
            gw.app.executor.tracing = tracing
        assert gw.app.executor.tracing.enabled is traced
        yield gw.url, exporter


SERVERS = ["asyncio-fast", "asyncio-anyio", "trio", "asgi"]


def _post(url: str, headers: dict[str, str]) -> httpx.Response:
    auth = {"authorization": f"Bearer {KEY}", **headers}
    return httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=auth, timeout=30)


def _request_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """Once the SERVER span is exported (it ends after the response is written)."""
    wait_for(lambda: any(s.kind is SpanKind.SERVER for s in exporter.get_finished_spans()))
    return list(exporter.get_finished_spans())


def _sent(emulator: OllamaEmulator) -> list[dict[str, str]]:
    return [r.headers for r in emulator.requests if r.path == "/api/chat"]


@pytest.mark.parametrize("server", SERVERS)
def test_span_tree_of_a_retry_then_a_fallback(
    backends: tuple[OllamaEmulator, OllamaEmulator], server: str
) -> None:
    primary, secondary = backends
    primary.clear_requests()
    secondary.clear_requests()
    with _served(_config(primary, secondary), server) as (url, exporter):
        response = _post(url, {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"})
        assert response.status_code == 200, response.text
        spans = _request_spans(exporter)

    (root,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert root.name == "POST /v1/chat/completions"
    # The client's span is the parent: same trace, its span id.
    assert root.context.trace_id == CLIENT_TRACE
    assert root.parent is not None and root.parent.span_id == CLIENT_SPAN
    assert root.parent.is_remote
    attrs = dict(root.attributes or {})
    assert attrs["http.route"] == "/v1/chat/completions"
    assert attrs["gateway.surface"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == "llama3.2:1b"
    assert attrs["gateway.backend"] == "secondary"
    assert attrs["enduser.id"] == "alice"
    assert attrs["http.response.status_code"] == 200
    assert attrs["gateway.retries"] == 2
    assert attrs["gateway.outcome"] == "ok"
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert root.status.status_code is StatusCode.UNSET
    # Never the key, in any span.
    assert not any(KEY in str(v) for s in spans for v in (s.attributes or {}).values())

    children = [s for s in spans if s is not root]
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in children)
    assert all(s.context.trace_id == CLIENT_TRACE for s in children)
    (limits,) = [s for s in children if s.name == "gateway.limits"]
    assert dict(limits.attributes or {})["gateway.limits.allowed"] is True

    attempts = sorted(
        (s for s in children if s.kind is SpanKind.CLIENT),
        key=lambda s: dict(s.attributes or {})["gateway.attempt"],
    )
    facts = [dict(s.attributes or {}) for s in attempts]
    assert [(f["gateway.backend"], f["http.response.status_code"]) for f in facts] == [
        ("primary", 503),
        ("primary", 503),
        ("secondary", 200),
    ]
    # Why each attempt was made: the core says, the span shows it.
    assert [f["gateway.attempt.reason"] for f in facts] == ["first", "retry", "fallback"]
    assert [f["gateway.attempt.retried"] for f in facts] == [True, True, False]
    assert [f.get("gateway.attempt.next_backend") for f in facts] == [
        "primary",
        "secondary",
        None,
    ]
    assert all(
        f["url.path"] == "/api/chat" and a.name == "POST /api/chat"
        for f, a in zip(facts, attempts, strict=True)
    )
    assert facts[0]["gateway.attempt.delay"] == 0.0
    assert 0.0 <= facts[1]["gateway.attempt.delay"] <= 0.01  # the jittered backoff
    assert facts[2]["gateway.attempt.delay"] == 0.0  # a fallback does not wait
    assert [a.status.status_code for a in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    # Ordered in time: the limit check, then each attempt after the last.
    assert limits.end_time is not None and attempts[0].start_time is not None
    assert limits.end_time <= attempts[0].start_time
    for before, after in itertools.pairwise(attempts):
        assert before.end_time is not None and after.start_time is not None
        assert before.end_time <= after.start_time

    # Each backend saw the traceparent of the attempt span that called it.
    seen = _sent(primary) + _sent(secondary)
    assert len(seen) == 3
    for headers, span in zip(seen, attempts, strict=True):
        context = parse_trace_context(((b"traceparent", headers["traceparent"].encode()),))
        assert context is not None
        assert (context.trace_id, context.span_id) == (CLIENT_TRACE, span.context.span_id)
        assert context.sampled
        assert headers["tracestate"] == "congo=t61rcWkgMzE"
        assert headers["x-request-id"] == attrs["gateway.request_id"]


@pytest.mark.parametrize("server", ["asyncio-fast", "trio"])
@pytest.mark.parametrize(
    "traceparent",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
        "garbage",
    ],
)
def test_a_bad_traceparent_starts_a_trace_of_its_own(
    backends: tuple[OllamaEmulator, OllamaEmulator], server: str, traceparent: str
) -> None:
    primary, secondary = backends
    secondary.clear_requests()
    with _served(_config(primary, secondary), server) as (url, exporter):
        response = _post(url, {"traceparent": traceparent})
        assert response.status_code == 200, response.text
        spans = _request_spans(exporter)
    (root,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert root.parent is None  # a root span: the bad header was ignored
    assert root.context.trace_id != CLIENT_TRACE
    (sent,) = _sent(secondary)
    context = parse_trace_context(((b"traceparent", sent["traceparent"].encode()),))
    assert context is not None and context.trace_id == root.context.trace_id


def _untraced(config: GatewayConfig) -> GatewayConfig:
    return config.model_copy(
        update={"tracing": config.tracing.model_copy(update={"enabled": False})}
    )


@pytest.mark.parametrize("server", ["asyncio-fast", "asgi"])
def test_tracing_off_passes_the_clients_context_on_unchanged(
    backends: tuple[OllamaEmulator, OllamaEmulator], server: str
) -> None:
    """Off (the default), the gateway makes no spans and takes no part in the
    trace: every attempt carries the client's traceparent and tracestate as
    they came, a retry and a fallback included."""
    primary, secondary = backends
    primary.clear_requests()
    secondary.clear_requests()
    later = f"01-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01-future"  # a later version's fields
    with _served(_untraced(_config(primary, secondary)), server, traced=False) as (url, spans):
        response = _post(url, {"traceparent": later, "tracestate": "congo=t61rcWkgMzE,rojo=1"})
        assert response.status_code == 200, response.text
        assert spans.get_finished_spans() == ()
    seen = _sent(primary) + _sent(secondary)
    assert len(seen) == 3  # the first attempt, its retry, the fallback
    for headers in seen:
        assert headers["traceparent"] == later
        assert headers["tracestate"] == "congo=t61rcWkgMzE,rojo=1"


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ({}, {}),  # no context: none invented
        ({"traceparent": TRACEPARENT.upper(), "tracestate": "congo=1"}, {}),  # invalid: dropped
        ({"traceparent": TRACEPARENT, "tracestate": "a=1,a=2"}, {"traceparent": TRACEPARENT}),
    ],
)
def test_tracing_off_drops_what_the_parser_refuses(
    backends: tuple[OllamaEmulator, OllamaEmulator],
    client: dict[str, str],
    expected: dict[str, str],
) -> None:
    primary, secondary = backends
    secondary.clear_requests()
    config = _untraced(_config(primary, secondary))
    with running_gateway(config) as gw:
        assert gw.app.executor.tracing.enabled is False
        response = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={**BODY, "model": "secondary-direct"},
            headers={"authorization": f"Bearer {KEY}", **client},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    (sent,) = _sent(secondary)
    trace_headers = {k: v for k, v in sent.items() if k in ("traceparent", "tracestate")}
    assert trace_headers == expected


def test_a_denied_request_has_the_limit_span_and_no_attempt(
    backends: tuple[OllamaEmulator, OllamaEmulator],
) -> None:
    primary, secondary = backends
    config = _config(primary, secondary)
    limits = config.limits.model_copy(update={"requests_per_minute": 1})
    config = config.model_copy(update={"limits": limits})
    with _served(config, "asyncio-fast") as (url, exporter):
        assert _post(url, {}).status_code == 200
        _request_spans(exporter)  # its root span ends after its response leaves
        exporter.clear()
        response = _post(url, {"traceparent": TRACEPARENT})
        assert response.status_code == 429, response.text
        spans = _request_spans(exporter)
    (root,) = [s for s in spans if s.kind is SpanKind.SERVER]
    attrs = dict(root.attributes or {})
    assert (attrs["http.response.status_code"], attrs["gateway.outcome"]) == (429, "rejected")
    assert root.status.status_code is StatusCode.UNSET
    assert "gateway.backend" not in attrs
    (limits_span,) = [s for s in spans if s.name == "gateway.limits"]
    facts = dict(limits_span.attributes or {})
    assert facts["gateway.limits.allowed"] is False
    assert facts["gateway.limits.denied_by"] == "requests_per_minute"
    assert facts["gateway.limits.scope"] == "user"
    assert facts["gateway.limits.retry_after"] > 0
    assert not [s for s in spans if s.kind is SpanKind.CLIENT]


@pytest.mark.parametrize("server", ["asyncio-fast", "trio"])
def test_a_stream_is_one_attempt_span_ending_with_the_stream(
    backends: tuple[OllamaEmulator, OllamaEmulator], server: str
) -> None:
    primary, secondary = backends
    with _served(_config(primary, secondary), server) as (url, exporter):
        headers = {"authorization": f"Bearer {KEY}", "traceparent": TRACEPARENT}
        body = {**BODY, "model": "secondary-direct", "stream": True}
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30
        ) as response:
            assert response.status_code == 200
            text = "".join(response.iter_text())
        assert text.rstrip().endswith("data: [DONE]")
        spans = _request_spans(exporter)
    (root,) = [s for s in spans if s.kind is SpanKind.SERVER]
    (attempt,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    attrs = dict(root.attributes or {})
    assert attrs["gateway.backend"] == "secondary" and attrs["gateway.retries"] == 0
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert dict(attempt.attributes or {})["http.response.status_code"] == 200
    assert attempt.end_time is not None and root.end_time is not None
    assert attempt.end_time <= root.end_time


def test_serve_with_workers_exports_over_otlp_per_the_standard_environment(
    backends: tuple[OllamaEmulator, OllamaEmulator], tmp_path: Path
) -> None:
    """``sansio-gateway serve --workers 2`` with ``[tracing] enabled = true`` and
    nothing else: the OTEL_* variables name the collector and the service, and
    every request's span reaches the collector by the time the workers exit."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    _, secondary = backends
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[store]\nusage = "sqlite:///{tmp_path}/usage.db"\n'
        f'[[backends]]\nname = "local"\nurl = "{secondary.url}"\n'
        "[tracing]\nenabled = true\n"
    )
    with OtlpCollector() as collector:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url}
        env["OTEL_SERVICE_NAME"] = "edge-gw"
        cmd = [sys.executable, "-m", "sansio_gateway.adapters.cli", "--log-level", "WARNING",
               "serve", "--config", str(cfg), "--port", "0", "--workers", "2"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "2 workers on " in line, line
            url = line.split(" on ")[1].split()[0]
            wait_for(lambda: _healthy(url), timeout=30)
            body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(6):
                response = httpx.post(
                    f"{url}/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT}
                )
                assert response.status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    servers = []
    for path, headers, data in collector.received:
        assert path == "/v1/traces" and headers["content-type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(data)
        for resource_spans in export.resource_spans:
            names = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert names["service.name"] == "edge-gw"
            for scope in resource_spans.scope_spans:
                servers += [s for s in scope.spans if s.name == "POST /v1/chat/completions"]
    assert len(servers) == 6
    assert all(s.trace_id == CLIENT_TRACE.to_bytes(16, "big") for s in servers)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("server", SERVERS)
def test_a_request_the_transport_refuses_has_a_span_of_its_own(
    backends: tuple[OllamaEmulator, OllamaEmulator], server: str
) -> None:
    config = _config(*backends)
    cap = config.server.model_copy(update={"max_body_bytes": 1024})
    config = config.model_copy(update={"server": cap})
    with _served(config, server) as (url, exporter):
        wrong = httpx.post(
            f"{url}/v1/chat/completions",
            json=BODY,
            headers={"authorization": "Bearer sk-not-a-key"},
            timeout=30,
        )
        assert wrong.status_code == 401, wrong.text
        big = {**BODY, "messages": [{"role": "user", "content": "x" * 4096}]}
        too_big = httpx.post(
            f"{url}/v1/chat/completions",
            json=big,
            headers={"authorization": f"Bearer {KEY}"},
            timeout=30,
        )
        assert too_big.status_code == 413, too_big.text
        wait_for(lambda: len(exporter.get_finished_spans()) >= 2)
        spans = list(exporter.get_finished_spans())
    assert [s.name for s in spans] == ["refused", "refused"]
    facts = [dict(s.attributes or {}) for s in spans]
    assert [f["http.response.status_code"] for f in facts] == [401, 413]
    assert all(f["gateway.outcome"] == "refused" and f["gateway.refusal"] for f in facts)
    assert all(s.kind is SpanKind.SERVER for s in spans)
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)  # 4xx: not errors
