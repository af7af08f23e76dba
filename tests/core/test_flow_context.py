"""What a flow receives: a frozen FlowContext, never the Gateway (issue 12, item 4)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sansio_gateway.auth import hash_key
from sansio_gateway.backends.catalogue import DiscoveredModel, parse_openai_models
from sansio_gateway.backends.registry import BackendKind, builtin_registry
from sansio_gateway.flows.base import Flow
from sansio_gateway.flows.context import FlowContext
from sansio_gateway.gateway import Gateway
from sansio_gateway.identity import ANONYMOUS
from sansio_gateway.passthrough.openai import OpenAIPassthroughFlow
from sansio_gateway.wire.openai_chat import ChatRequest

from ..helpers import NOW, ExchangeDriver, make_config

KEYED = f"""
[[backends]]
name = "p"
kind = "probe"
url = "http://p/v1"
discover = false

[server]
reasoning_field = "reasoning"
default_max_tokens = 77

[[auth.keys]]
id = "k1"
user = "alice"
sha256 = "{hash_key("sk-alice")}"
models = ["gpt-*"]
"""


def probe_gateway(seen: list[tuple[Any, ...]], toml: str = KEYED) -> Gateway:
    """A gateway with one backend of a plugin kind whose maker records its arguments."""

    def maker(*args: Any) -> Flow:
        seen.append(args)
        context, request, model = args
        return OpenAIPassthroughFlow(context, request, model)

    registry = builtin_registry()
    registry.register(
        BackendKind(
            name="probe",
            discovery_path="/models",
            parse_discovery=parse_openai_models,
            flows={"chat.completions": maker},
        )
    )
    gw = Gateway(make_config(toml), registry=registry)
    gw.record_discovery("p", [DiscoveredModel(name="gpt-4o-mini")], NOW - 5)
    return gw


def chat() -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_a_flow_maker_gets_the_request_context_and_never_the_gateway() -> None:
    seen: list[tuple[Any, ...]] = []
    gw = probe_gateway(seen)
    d = ExchangeDriver(gw, request_id="rid-7")
    d.start("POST", "/v1/chat/completions", chat(), headers=((b"x-api-key", b"sk-alice"),))
    assert len(d.seen.upstream) == 1
    [(context, request, model)] = seen
    assert isinstance(context, FlowContext) and isinstance(request, ChatRequest)
    assert model == "gpt-4o-mini"
    assert context.request_id == "rid-7" and context.now == NOW
    assert context.identity.user == "alice" and context.identity.models == ("gpt-*",)
    assert context.catalogue is gw.catalogue
    assert context.default_max_tokens == 77 and context.reasoning_field == "reasoning"
    assert not any(isinstance(value, Gateway) for value in _values(context))


def test_the_context_is_frozen() -> None:
    seen: list[tuple[Any, ...]] = []
    gw = probe_gateway(seen)
    context = gw.flow_context("r", NOW, ANONYMOUS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.now = NOW + 1  # type: ignore[misc]
    assert not hasattr(context, "__dict__")  # slots: no attribute can be added either


def test_a_context_keeps_the_catalogue_its_request_started_with() -> None:
    seen: list[tuple[Any, ...]] = []
    gw = probe_gateway(seen)
    context = gw.flow_context("r", NOW, ANONYMOUS)
    gw.record_discovery("p", [DiscoveredModel(name="gpt-4o")], NOW)
    assert context.catalogue is not gw.catalogue
    assert context.catalogue.resolve("gpt-4o-mini") is not None


def _values(context: FlowContext) -> list[object]:
    return [getattr(context, f.name) for f in dataclasses.fields(context)]
