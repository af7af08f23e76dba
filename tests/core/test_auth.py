"""API keys: authentication, allow-lists, admin routes, on both surfaces."""

from __future__ import annotations

import pytest

from sansio_gateway.auth import ANONYMOUS, Authenticator, hash_key
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.config import ConfigError
from sansio_gateway.errors import Unauthorized
from sansio_gateway.gateway import Gateway

from ..helpers import NOW, ExchangeDriver, make_config

ALICE_KEY = "sk-alice-secret"
BOB_KEY = "sk-bob-secret"
CONFIG = f"""
[[auth.keys]]
id = "alice-laptop"
user = "alice"
sha256 = "{hash_key(ALICE_KEY)}"
models = ["llama*"]

[[auth.keys]]
id = "bob-ci"
user = "bob"
key_env = "BOB_KEY"
admin = true
"""


def gateway() -> Gateway:
    gw = Gateway(make_config(CONFIG, BOB_KEY=BOB_KEY))
    gw.record_discovery(
        "ollama", [DiscoveredModel(name="llama3.2:1b"), DiscoveredModel(name="qwen3:0.6b")], NOW
    )
    return gw


def bearer(key: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"authorization", b"Bearer " + key.encode()),)


CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


def test_no_keys_means_open_access() -> None:
    auth = Authenticator(make_config().auth)
    assert auth.open and auth.authenticate(()) is ANONYMOUS


def test_bearer_and_x_api_key_both_work() -> None:
    auth = Authenticator(make_config(CONFIG, BOB_KEY=BOB_KEY).auth)
    assert auth.authenticate(bearer(ALICE_KEY)).user == "alice"
    assert auth.authenticate(((b"x-api-key", BOB_KEY.encode()),)).key_id == "bob-ci"
    with pytest.raises(Unauthorized):
        auth.authenticate(bearer("sk-wrong"))
    with pytest.raises(Unauthorized):
        auth.authenticate(((b"authorization", b"Basic abc"),))
    with pytest.raises(Unauthorized):
        auth.authenticate(())


def test_key_env_is_hashed_at_load_and_missing_env_is_a_config_error() -> None:
    config = make_config(CONFIG, BOB_KEY=BOB_KEY)
    assert config.auth.keys[1].sha256 == hash_key(BOB_KEY)
    assert BOB_KEY not in config.model_dump_json()
    with pytest.raises(
        ConfigError, match=r"auth\.keys\[1\]\.key_env: environment variable BOB_KEY"
    ):
        make_config(CONFIG)


def test_missing_key_is_401_invalid_api_key_on_v1() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", "/v1/chat/completions", CHAT)
    assert d.seen.status == 401
    assert d.seen.json()["error"]["code"] == "invalid_api_key"
    assert not d.seen.upstream


def test_unknown_key_is_401_in_ollama_form_on_api() -> None:
    d = ExchangeDriver(gateway())
    d.start("GET", "/api/tags", headers=bearer("sk-nope"))
    assert d.seen.status == 401
    assert isinstance(d.seen.json()["error"], str)


def test_auth_comes_before_body_validation() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", "/v1/chat/completions", b"{broken")
    assert d.seen.status == 401


def test_valid_key_reaches_the_backend_and_is_recorded() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", "/v1/chat/completions", CHAT, headers=bearer(ALICE_KEY))
    assert d.seen.upstream
    from sansio_gateway.actions import UpstreamFailed
    from sansio_gateway.errors import UpstreamError

    d.handle(UpstreamFailed(error=UpstreamError("down")))
    record = d.seen.usage[0]
    assert (record.key_id, record.user) == ("alice-laptop", "alice")


def test_allow_list_hides_models_as_not_found() -> None:
    d = ExchangeDriver(gateway())
    d.start(
        "POST", "/v1/chat/completions", {**CHAT, "model": "qwen3:0.6b"}, headers=bearer(ALICE_KEY)
    )
    assert d.seen.status == 404
    assert d.seen.json()["error"]["code"] == "model_not_found"
    assert not d.seen.upstream


def test_health_needs_no_key() -> None:
    d = ExchangeDriver(gateway())
    d.start("GET", "/health")
    assert d.seen.status == 200


def test_keys_never_appear_in_usage_records_or_errors() -> None:
    d = ExchangeDriver(gateway())
    d.start("POST", "/v1/chat/completions", CHAT, headers=bearer("sk-leaky-guess"))
    assert b"sk-leaky-guess" not in d.seen.body


def test_model_lists_show_only_what_the_key_may_use() -> None:
    gw = gateway()
    d = ExchangeDriver(gw)
    d.start("GET", "/v1/models", headers=bearer(ALICE_KEY))
    assert [m["id"] for m in d.seen.json()["data"]] == ["llama3.2:1b"]
    d = ExchangeDriver(gw)
    d.start("GET", "/v1/models/qwen3:0.6b", headers=bearer(ALICE_KEY))
    assert d.seen.status == 404
    d = ExchangeDriver(gw)
    d.start("GET", "/api/tags", headers=bearer(ALICE_KEY))
    assert [m["name"] for m in d.seen.json()["models"]] == ["llama3.2:1b"]
    d = ExchangeDriver(gw)
    d.start("GET", "/v1/models", headers=bearer(BOB_KEY))
    assert len(d.seen.json()["data"]) == 2
