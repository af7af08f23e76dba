"""Exposure (issue 17, item 13), the core's part: /status shows backend URLs
and probe errors to admin keys only, and a request head is judged (auth)
before any body is read (``Gateway.refuse_head``)."""

from __future__ import annotations

import orjson

from sansio_gateway.auth import Forbidden, hash_key
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.errors import Unauthorized
from sansio_gateway.gateway import Gateway

from ..helpers import NOW, ExchangeDriver, make_config

SECRET_URL = "http://10.9.8.7:11434"
CONFIG = (
    f'[[backends]]\nname = "local"\nkind = "ollama"\nurl = "{SECRET_URL}"\n'
    f'[[backends]]\nname = "spare"\nkind = "ollama"\nurl = "http://10.9.8.8:11434"\n'
    f'[[auth.keys]]\nid = "app"\nuser = "u"\nsha256 = "{hash_key("sk-app")}"\n'
    'models = ["llama3.2:1b"]\n'
    f'[[auth.keys]]\nid = "ops"\nuser = "ops"\nsha256 = "{hash_key("sk-ops")}"\nadmin = true\n'
)


def gateway() -> Gateway:
    gw = Gateway(make_config(CONFIG))
    gw.record_discovery(
        "local", [DiscoveredModel(name="llama3.2:1b"), DiscoveredModel(name="secret:7b")], NOW
    )
    gw.record_discovery_failure("spare", f"connection refused: {SECRET_URL}", NOW)
    return gw


def status(gw: Gateway, key: str) -> tuple[int | None, bytes]:
    d = ExchangeDriver(gw)
    d.start("GET", "/status", headers=((b"authorization", f"Bearer {key}".encode()),))
    return d.seen.status, d.seen.body


def test_status_hides_backend_urls_and_errors_from_non_admin_keys() -> None:
    code, body = status(gateway(), "sk-app")
    assert code == 200
    assert b"10.9.8" not in body and b"refused" not in body
    doc = orjson.loads(body)
    assert [b["name"] for b in doc["backends"]] == ["local", "spare"]
    assert all("url" not in b and "last_error" not in b for b in doc["backends"])
    assert [b["up"] for b in doc["backends"]] == [True, False]
    # Only the models the key's allow-list admits.
    assert [m["name"] for m in doc["models"]] == ["llama3.2:1b"]


def test_status_shows_everything_to_admin_keys() -> None:
    code, body = status(gateway(), "sk-ops")
    assert code == 200
    assert SECRET_URL.encode() in body and b"connection refused" in body
    assert b"secret:7b" in body


def test_refuse_head_judges_auth_before_the_body() -> None:
    gw = gateway()
    chat = "/v1/chat/completions"
    assert isinstance(gw.refuse_head("POST", chat, ()), Unauthorized)
    wrong = ((b"authorization", b"Bearer nope"),)
    assert isinstance(gw.refuse_head("POST", "/api/chat", wrong), Unauthorized)
    app = ((b"authorization", b"Bearer sk-app"),)
    assert gw.refuse_head("POST", chat, app) is None
    assert isinstance(gw.refuse_head("GET", "/admin/usage", app), Forbidden)
    assert gw.refuse_head("GET", "/health", ()) is None  # public
    assert gw.refuse_head("POST", "/nowhere", ()).status_code == 404  # type: ignore[union-attr]


def test_an_open_gateway_refuses_nothing_at_the_head() -> None:
    gw = Gateway(make_config(""))
    assert gw.refuse_head("POST", "/v1/chat/completions", ()) is None
