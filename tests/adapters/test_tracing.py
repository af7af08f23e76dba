"""The tracer the wiring builds from ``[tracing]`` (adapters/tracing.py, adapters/otel.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from sansio_gateway.adapters import tracing as tracing_module
from sansio_gateway.adapters.tracing import NO_TRACING, open_tracing, tracing_problem

from sansio_gateway.config import ConfigError, TracingConfig

from ..helpers import OtlpCollector, make_config


def _otel(**values: object) -> object:
    from sansio_gateway.adapters.otel import OtelTracing

    tracing = open_tracing(TracingConfig(enabled=True, **values))  # type: ignore[arg-type]
    assert isinstance(tracing, OtelTracing)
    return tracing


def test_off_by_default_is_the_shared_no_op() -> None:
    config = make_config("")
    assert config.tracing.enabled is False
    tracing = open_tracing(config.tracing)
    assert tracing is NO_TRACING and not tracing.enabled
    assert tracing_problem(config.tracing) is None


def test_importing_the_gateway_never_imports_opentelemetry() -> None:
    """The SDK is an optional extra: the core and the adapters import it only when
    tracing is on (the core never; tests/core/test_boundary.py bans it there)."""
    code = textwrap.dedent(
        """
        import sys
        import sansio_gateway.tracing, sansio_gateway.exchange, sansio_gateway.gateway
        import sansio_gateway.adapters.app, sansio_gateway.adapters.asgi
        import sansio_gateway.adapters.cli
        from sansio_gateway.adapters.wiring import Wiring
        from sansio_gateway.config import parse_config
        Wiring(parse_config("", source="t", env={}))
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_missing_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing(name: str) -> None:
        return None

    monkeypatch.setattr(tracing_module.importlib.util, "find_spec", nothing)
    config = TracingConfig(enabled=True)
    problem = tracing_problem(config)
    assert problem is not None and "sansio-gateway[otel]" in problem
    with pytest.raises(ConfigError, match=r"sansio-gateway\[otel\]"):
        open_tracing(config)


def test_check_config_refuses_tracing_without_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    from sansio_gateway.adapters.wiring import checked_config

    monkeypatch.setattr(tracing_module.importlib.util, "find_spec", lambda name: None)
    path = tmp_path / "g.toml"  # type: ignore[operator]
    path.write_text("[tracing]\nenabled = true\n")
    with pytest.raises(ConfigError, match=r"g\.toml: tracing\.enabled needs"):
        checked_config(str(path))


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('endpoint = "collector:4318"', "tracing.endpoint"),
        ('endpoint = "ftp://collector"', "tracing.endpoint"),
        ('exporter = "jaeger"', "tracing.exporter"),
        ("sample_ratio = 1.5", "tracing.sample_ratio"),
        ("enable = true", "tracing.enable"),
    ],
)
def test_bad_tracing_keys_are_named(toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_config(f"[tracing]\n{toml}\n")


def _export_one(tracing: object) -> None:
    tracing.tracer.start_span("probe").end()  # type: ignore[attr-defined]
    tracing.shutdown()  # type: ignore[attr-defined]  # flushes the batch


def test_otlp_endpoint_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # the config wins
    with OtlpCollector() as collector:
        _export_one(_otel(endpoint=collector.url))
        assert collector.got.wait(10)
    ((path, headers, body),) = collector.received
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert b"probe" in body


def test_otlp_endpoint_and_headers_from_the_standard_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with OtlpCollector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
        _export_one(_otel())
        assert collector.got.wait(10)
    ((path, headers, _),) = collector.received
    assert path == "/v1/traces"
    assert headers["x-tenant"] == "acme"


def test_service_name_config_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert _service(_otel(exporter="console")) == "sansio-gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gw")
    assert _service(_otel(exporter="console")) == "edge-gw"
    assert _service(_otel(exporter="console", service_name="mine")) == "mine"


def test_sample_ratio_is_parent_based() -> None:
    from opentelemetry.sdk.trace.sampling import ParentBased

    tracing = _otel(exporter="console", sample_ratio=0.25)
    sampler = tracing.provider.sampler  # type: ignore[attr-defined]
    assert isinstance(sampler, ParentBased)
    assert "0.25" in sampler.get_description()


def test_unsampled_requests_still_propagate_a_traceparent() -> None:
    """sample_ratio = 0: no span is recorded, but the attempt still carries a
    traceparent (flags 00), so the backend's own spans stay in the trace."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sansio_gateway.actions import SendUpstream
    from sansio_gateway.http import IncomingRequest
    from sansio_gateway.tracing import parse_trace_context

    exporter = InMemorySpanExporter()
    tracing = open_tracing(TracingConfig(enabled=True, sample_ratio=0.0), exporter=exporter)
    trace = tracing.start(IncomingRequest(method="POST", path="/v1/chat/completions"))
    call = SendUpstream(
        backend="b", method="POST", url="http://h/api/chat", headers=(), body=b"", reason="first"
    )

    async def deliver(result: object) -> bool:
        return True

    sent, _ = trace.attempt(call, deliver)  # type: ignore[arg-type]
    trace.attempt_done(None)
    context = parse_trace_context(sent.headers)
    assert context is not None and not context.sampled
    assert exporter.get_finished_spans() == ()


def _service(tracing: object) -> object:
    return tracing.provider.resource.attributes["service.name"]  # type: ignore[attr-defined]


def test_otel_sdk_disabled_records_nothing_and_passes_the_client_context_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sansio_gateway.actions import SendUpstream
    from sansio_gateway.http import IncomingRequest

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    exporter = InMemorySpanExporter()
    tracing = open_tracing(TracingConfig(enabled=True), exporter=exporter)
    call = SendUpstream(
        backend="b", method="POST", url="http://h/api/chat", headers=(), body=b"", reason="first"
    )

    async def deliver(result: object) -> bool:
        return True

    client = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    for headers, sent_on in [(((b"traceparent", client),), ((b"traceparent", client),)), ((), ())]:
        trace = tracing.start(IncomingRequest(method="POST", path="/v1/x", headers=headers))
        sent, _ = trace.attempt(call, deliver)  # type: ignore[arg-type]
        trace.attempt_done(None)
        assert sent.headers == sent_on  # the client's own context, unchanged, or none
    assert exporter.get_finished_spans() == ()


def test_an_attempt_span_replaces_the_context_the_core_passed_on() -> None:
    """The core passes the client's traceparent/tracestate on; traced, the
    attempt's own context takes their place, once each."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from sansio_gateway.actions import SendUpstream
    from sansio_gateway.http import IncomingRequest
    from sansio_gateway.tracing import forwarded_trace_context, parse_trace_context

    client = (
        (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        (b"tracestate", b"congo=t61rcWkgMzE"),
    )
    exporter = InMemorySpanExporter()
    tracing = open_tracing(TracingConfig(enabled=True), exporter=exporter)
    trace = tracing.start(IncomingRequest(method="POST", path="/v1/x", headers=client))
    passed_on = ((b"x-request-id", b"r1"), *forwarded_trace_context(client))
    call = SendUpstream(
        backend="b", method="POST", url="http://h/api/chat", headers=passed_on, body=b"",
        reason="first",
    )  # fmt: skip

    async def deliver(result: object) -> bool:
        return True

    sent, _ = trace.attempt(call, deliver)  # type: ignore[arg-type]
    trace.attempt_done(None)
    names = [name for name, _ in sent.headers]
    assert names.count(b"traceparent") == 1 and names.count(b"tracestate") == 1
    assert (b"x-request-id", b"r1") in sent.headers
    context = parse_trace_context(sent.headers)
    [span] = exporter.get_finished_spans()
    assert context is not None and span.context is not None
    assert (context.trace_id, context.span_id) == (span.context.trace_id, span.context.span_id)
    assert context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert context.tracestate == (("congo", "t61rcWkgMzE"),)
