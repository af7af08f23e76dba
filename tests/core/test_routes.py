"""The one route table (routes.py): each route declared once, matched once,
its body parsed once."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from sansio_gateway.accounting.admission import admission_charge, request_charge
from sansio_gateway.actions import UpstreamClosed, UpstreamResponseStarted
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.backends.registry import builtin_registry
from sansio_gateway.errors import MethodNotAllowed, NotFound
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import Surface
from sansio_gateway.routes import (
    DEFAULT_ROUTES,
    LIMITED_ROUTES,
    RouteDecl,
    RouteTable,
    default_route_table,
    surface_of,
)

from ..helpers import NOW, ExchangeDriver, make_config


def test_every_route_is_declared_once() -> None:
    seen: set[tuple[str, str]] = set()
    for route in DEFAULT_ROUTES:
        for method in route.methods:
            assert (method, route.path) not in seen, (method, route.path)
            seen.add((method, route.path))


def test_a_routes_surface_is_the_one_its_path_gets_before_matching() -> None:
    # Errors before a match (404, 401) use surface_of; a match must agree.
    for route in DEFAULT_ROUTES:
        path = route.path.removesuffix("*") + "x" if route.path.endswith("*") else route.path
        assert route.surface is surface_of(path), route.name


def test_paths_under_the_messages_route_speak_anthropic() -> None:
    # An unknown path below /v1/messages is a 404 in Anthropic's envelope.
    assert surface_of("/v1/messages/batches") is Surface.ANTHROPIC
    assert surface_of("/v1/messagesx") is Surface.OPENAI


def test_limited_routes_are_model_addressed() -> None:
    for route in DEFAULT_ROUTES:
        if route.limited or route.generates:
            assert route.parse is not None and route.limited, route.name


def test_each_builtin_kind_serves_every_model_addressed_route() -> None:
    registry = builtin_registry()
    for route in DEFAULT_ROUTES:
        if route.parse is None or route.flow is not None:
            continue
        for kind in ("ollama", "openai"):
            assert registry.flow(kind, route.name) is not None, (kind, route.name)


def test_matching() -> None:
    table = default_route_table()
    assert table.match("POST", "/v1/chat/completions").name == "chat.completions"
    assert table.match("GET", "/v1/models/hf.co/org/model:Q4").name == "models.retrieve"
    assert table.match("HEAD", "/api/tags").name == "ollama.tags"
    assert table.match("HEAD", "/health").name == "health"  # HEAD falls back to GET
    assert table.match("HEAD", "/api/blobs/sha256:abc").name == "ollama.manage"
    with pytest.raises(NotFound):
        table.match("GET", "/v2/nothing")
    with pytest.raises(NotFound):
        table.match("GET", "/v1/models/")  # a prefix route needs its parameter
    with pytest.raises(MethodNotAllowed) as caught:
        table.match("GET", "/api/blobs/sha256:abc")
    assert caught.value.allow == "HEAD, POST"


def test_a_declaration_is_a_parser_or_a_local_flow() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RouteDecl(name="x", methods=("GET",), path="/x", surface=surface_of("/x"))


CONFIG = """
[[backends]]
name = "oa"
kind = "openai"
url = "http://oa.test/v1"

[[backends]]
name = "ol"
kind = "ollama"
url = "http://ol.test"

[[models]]
name = "resilient"
backend = "oa"
target = "gpt-4o-mini"
fallbacks = ["ol:llama3.2:1b"]
"""


def counting(path: str, calls: list[bytes]) -> RouteTable:
    def count(route: RouteDecl) -> RouteDecl:
        if route.path != path:
            return route
        parse = route.parse
        assert parse is not None

        def parse_and_count(body: bytes) -> Any:
            calls.append(body)
            return parse(body)

        return dataclasses.replace(route, parse=parse_and_count)

    return RouteTable(count(route) for route in DEFAULT_ROUTES)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_the_body_is_parsed_once_across_attempts_of_two_kinds(path: str) -> None:
    calls: list[bytes] = []
    gw = Gateway(make_config(CONFIG), routes=counting(path, calls))
    gw.record_discovery("oa", [DiscoveredModel(name="gpt-4o-mini")], NOW - 5)
    gw.record_discovery("ol", [DiscoveredModel(name="llama3.2:1b")], NOW - 5)
    d = ExchangeDriver(gw)
    body = {"model": "resilient", "messages": [{"role": "user", "content": "hi"}]}
    d.start("POST", path, {**body, "stream": False})
    d.handle(UpstreamResponseStarted(status=500, headers=()))
    d.handle(UpstreamClosed())
    first, second = d.seen.upstream
    assert first.url.startswith("http://oa.test") and second.url.startswith("http://ol.test")
    assert len(calls) == 1


def test_admission_charges_the_decoded_body_as_it_charged_the_raw_one() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hello " * 50}],
        "max_tokens": 20,
        "n": 2,
    }
    for route, generates in LIMITED_ROUTES.items():
        raw = admission_charge(
            orjson.dumps(body), default_output_cap=99, generates=generates, route=route
        )
        decoded = request_charge(body, default_output_cap=99, generates=generates, route=route)
        assert raw == decoded, route
