"""The status page in the core: /admin/overview's JSON and /ui's files and headers.

No sockets: the Exchange is driven with the results an adapter would feed
(``OverviewCollected``, ``AssetLoaded``), and the limit readings come from
the memory limit store the memory adapter wraps.
"""

from __future__ import annotations

import html.parser
from pathlib import Path
from typing import Any

import orjson
import pytest

from sansio_gateway.actions import (
    AssetLoaded,
    CollectOverview,
    LoadAsset,
    OverviewCollected,
    UpstreamClosed,
)
from sansio_gateway.auth import ANONYMOUS, hash_key
from sansio_gateway.exchange import ExchangeState, ExchangeStateError
from sansio_gateway.gateway import Gateway
from sansio_gateway.limits import Costs, LimitName, MemoryLimitStore
from sansio_gateway.local.live_stats import LiveStats
from sansio_gateway.local.overview import render_overview
from sansio_gateway.local.overview_data import (
    MAX_USERS_SHOWN,
    LimitReading,
    OverviewSnapshot,
    UserLimits,
    limit_probes,
    overview_users,
)
from sansio_gateway.local.ui import ASSETS, SECURITY_HEADERS
from tests.helpers import NOW, ExchangeDriver, make_config

UI_DIR = Path(__file__).resolve().parents[2] / "sansio_gateway" / "local" / "ui"
ADMIN, USER = "sk-admin-0123456789", "sk-user-0123456789"

CONFIG = f"""
[[backends]]
name = "local"
kind = "ollama"
url = "http://127.0.0.1:11434"
[[backends]]
name = "cloud"
kind = "openai"
url = "http://127.0.0.1:9999/v1"
discover = false
[[models]]
name = "gpt-4o-mini"
backend = "local"
target = "llama3.2:1b"
fallbacks = ["cloud:gpt-4o-mini"]
[[auth.keys]]
id = "ops"
user = "root"
sha256 = "{hash_key(ADMIN)}"
admin = true
[[auth.keys]]
id = "bob-laptop"
user = "bob"
sha256 = "{hash_key(USER)}"
[limits]
requests_per_minute = 60
tokens_per_minute = 6000
tokens_per_day = 100000
concurrent_requests = 4
[limits.users.bob]
requests_per_minute = 12
"""


def _gateway() -> Gateway:
    return Gateway(make_config(CONFIG))


def _auth(key: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"authorization", b"Bearer " + key.encode()),)


def _snapshot(
    gateway: Gateway,
    store: MemoryLimitStore,
    stats: LiveStats,
    *,
    now: float = NOW,
    in_flight_by_user: dict[str, int] | None = None,
    peek: bool = True,
) -> OverviewSnapshot:
    """What the adapter builds (adapters/executor.py, collect_overview)."""
    users = limit_probes(gateway.config, overview_users(gateway.config, stats.users()))
    readings = tuple(
        LimitReading(
            probe=probe,
            headers=store.peek(probe.user, probe.specs, int(now * 1e6)) if peek else None,
        )
        for user in users
        for probe in user.probes
    )
    return OverviewSnapshot(
        now=now,
        stats=stats.snapshot(now),
        users=users,
        readings=readings,
        in_flight=3,
        streams=1,
        in_flight_by_user=in_flight_by_user or {},
        store_error=None if peek else "store down",
    )


# ---- /admin/overview through the Exchange --------------------------------------


def test_overview_needs_a_key_and_an_admin_key() -> None:
    gateway = _gateway()
    none = ExchangeDriver(gateway)
    none.start("GET", "/admin/overview")
    assert none.seen.status == 401
    user = ExchangeDriver(gateway)
    user.start("GET", "/admin/overview", headers=_auth(USER))
    assert user.seen.status == 403
    assert not any(isinstance(a, CollectOverview) for a in user.seen.actions)


def test_overview_asks_the_adapter_then_answers_its_snapshot_as_json() -> None:
    gateway = _gateway()
    driver = ExchangeDriver(gateway)
    assert driver.start("GET", "/admin/overview", headers=_auth(ADMIN)) == [CollectOverview()]
    assert driver.exchange.state is ExchangeState.AWAITING_ADAPTER_DATA
    snapshot = _snapshot(gateway, MemoryLimitStore(), LiveStats())
    driver.handle(OverviewCollected(snapshot=snapshot))
    assert driver.seen.status == 200 and driver.seen.ended
    assert driver.seen.headers[b"cache-control"] == b"no-store"
    body = driver.seen.json()
    # Three in flight as the adapter counts, the overview request included.
    assert body["in_flight"] == {"requests": 2, "streams": 1}
    assert [b["name"] for b in body["backends"]] == ["local", "cloud"]
    # Results for a finished Exchange are ignored, as for the other adapter answers.
    assert driver.handle(OverviewCollected(snapshot=snapshot)) == []


def test_an_asset_answer_to_the_overview_is_a_500_not_a_crash() -> None:
    driver = ExchangeDriver(_gateway())
    driver.start("GET", "/admin/overview", headers=_auth(ADMIN))
    driver.handle(AssetLoaded(body=b"x"))
    assert driver.seen.status == 500


def test_a_result_of_another_kind_is_an_adapter_bug() -> None:
    driver = ExchangeDriver(_gateway())
    driver.start("GET", "/admin/overview", headers=_auth(ADMIN))
    with pytest.raises(ExchangeStateError):
        driver.handle(UpstreamClosed())


# ---- the document ---------------------------------------------------------------


def _render(gateway: Gateway, snapshot: OverviewSnapshot) -> Any:
    context = gateway.flow_context("r", snapshot.now, ANONYMOUS)
    return orjson.loads(orjson.dumps(render_overview(context, snapshot)))


def test_backends_show_url_kind_breaker_probe_error_rate_and_latency() -> None:
    gateway = _gateway()
    gateway.record_discovery("local", [], NOW - 5, latency=0.012)
    gateway.record_discovery_failure("cloud", "connection refused", NOW - 4)
    for _ in range(gateway.config.server.breaker_failures):
        gateway.health.record("cloud", False, NOW - 3)
    stats = LiveStats()
    for i in range(4):
        stats.observe(
            now=NOW - 1,
            user="bob",
            model="gpt-4o-mini",
            backend="local",
            status=502 if i == 0 else 200,
            tokens=5,
            latency=0.1 * (i + 1),
        )
    local, cloud = _render(gateway, _snapshot(gateway, MemoryLimitStore(), stats))["backends"]
    assert local["url"] == "http://127.0.0.1:11434" and local["kind"] == "ollama"
    assert local["circuit"] == "closed"
    assert local["last_probe"] == {
        "at": NOW - 5,
        "ok": True,
        "latency_ms": 12.0,
        "error": None,
        "models": 0,
    }
    assert (local["requests"], local["errors"], local["error_rate"]) == (4, 1, 0.25)
    assert local["latency_ms"] == {"p50": 200.0, "p99": 400.0}
    assert cloud["circuit"] == "open"
    assert cloud["last_probe"]["ok"] is False
    assert cloud["last_probe"]["error"] == "connection refused"
    assert (cloud["requests"], cloud["error_rate"], cloud["latency_ms"]["p50"]) == (0, None, None)


def test_models_show_their_route_and_fallbacks() -> None:
    gateway = _gateway()
    models = _render(gateway, _snapshot(gateway, MemoryLimitStore(), LiveStats()))["models"]
    assert {
        "name": "gpt-4o-mini",
        "backend": "local",
        "target": "llama3.2:1b",
        "fallbacks": ["cloud:gpt-4o-mini"],
    } in models


def test_series_hold_thirty_minutes_of_requests_tokens_errors_and_429s() -> None:
    gateway = _gateway()
    stats = LiveStats()
    stats.observe(
        now=NOW, user="bob", model="m", backend="local", status=200, tokens=30, latency=0.1
    )
    stats.observe(
        now=NOW, user="bob", model="m", backend="local", status=500, tokens=0, latency=0.1
    )
    stats.observe(now=NOW, user="bob", model="m", backend="", status=429, tokens=0, latency=0.0)
    series = _render(gateway, _snapshot(gateway, MemoryLimitStore(), stats))["series"]
    assert len(series["minutes"]) == 30 and series["minutes"][-1] == NOW // 60 * 60
    assert (series["requests"][-1], series["tokens"][-1]) == (3, 30)
    assert (series["errors"][-1], series["limited"][-1]) == (1, 1)
    assert sum(series["requests"]) == 3


def _limits(user: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in user["limits"]}


def test_users_show_each_limit_its_use_429s_and_today_against_the_quota() -> None:
    gateway = _gateway()
    store = MemoryLimitStore()
    now_us = int(NOW * 1e6)
    bob = next(u for u in limit_probes(gateway.config, ["bob"]) if u.user == "bob")
    # Two requests admitted (and committed at 300 tokens each) within bob's limits.
    specs = gateway.limit_specs("bob", gateway.catalogue.resolve("gpt-4o-mini"))  # type: ignore[arg-type]
    for rid in ("a", "b"):
        assert store.admit("bob", specs, now_us, Costs(tokens=400), rid).allowed
        store.commit("bob", specs, now_us, rid, 400, 300)
    stats = LiveStats()
    stats.observe(now=NOW, user="bob", model="m", backend="", status=429, tokens=0, latency=0.0)
    snapshot = _snapshot(gateway, store, stats, in_flight_by_user={"bob": 1})
    users = {u["user"]: u for u in _render(gateway, snapshot)["users"]}
    assert list(users) == ["root", "bob"]  # configured keys' users, in order
    limits = _limits(users["bob"])
    rpm = next(p for p in bob.probes if p.name is LimitName.REQUESTS_PER_MINUTE)
    assert limits["requests_per_minute"] == {
        "name": "requests_per_minute",
        "limit": 12,
        "burst": rpm.burst,
        "used": 2,
    }
    assert limits["tokens_per_minute"]["used"] == 600
    assert limits["tokens_per_day"] == {
        "name": "tokens_per_day",
        "limit": 100000,
        "burst": None,
        "used": 600,
    }
    assert limits["concurrent_requests"] == {
        "name": "concurrent_requests",
        "limit": 4,
        "burst": None,
        "used": 1,
    }
    assert users["bob"]["today"] == {"tokens": 600, "quota": 100000}
    assert (users["bob"]["rate_limited"], users["bob"]["in_flight"]) == (1, 1)
    assert users["root"]["rate_limited"] == 0
    assert _limits(users["root"])["requests_per_minute"]["used"] == 0


def test_a_store_that_cannot_say_leaves_use_unknown_and_says_why() -> None:
    gateway = _gateway()
    snapshot = _snapshot(gateway, MemoryLimitStore(), LiveStats(), peek=False)
    document = _render(gateway, snapshot)
    bob = next(u for u in document["users"] if u["user"] == "bob")
    assert _limits(bob)["requests_per_minute"]["used"] is None
    assert bob["today"] == {"tokens": None, "quota": 100000}
    assert document["limit_store"]["error"] == "store down"


def test_probes_read_one_limit_each_divided_like_the_gateway() -> None:
    config = make_config(CONFIG)
    (bob,) = limit_probes(config, ["bob"], divisor=2)
    assert [(p.name, p.limit) for p in bob.probes] == [
        (LimitName.REQUESTS_PER_MINUTE, 6),
        (LimitName.TOKENS_PER_MINUTE, 3000),
        (LimitName.TOKENS_PER_DAY, 50000),
    ]
    assert bob.concurrent_requests == 2
    assert all(len(p.specs.refs) == 1 for p in bob.probes)


def test_a_user_without_limits_has_no_probes() -> None:
    (alice,) = limit_probes(make_config('[[backends]]\nname = "l"\nurl = "http://x"\n'), ["a"])
    assert alice == UserLimits(user="a", probes=(), concurrent_requests=None)


def test_users_shown_are_the_configured_then_the_seen_and_bounded() -> None:
    config = make_config(CONFIG)
    assert overview_users(config, ["carol", "bob"]) == ("root", "bob", "carol")
    many = overview_users(config, [f"u{i}" for i in range(500)])
    assert len(many) == MAX_USERS_SHOWN and many[:2] == ("root", "bob")


# ---- /ui ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(ASSETS))
def test_each_asset_is_read_through_the_adapter_and_served_with_the_security_headers(
    path: str,
) -> None:
    driver = ExchangeDriver(_gateway())
    name, content_type = ASSETS[path]
    assert driver.start("GET", path) == [LoadAsset(name=name)]  # public: no key needed
    body = (UI_DIR / name).read_bytes()
    driver.handle(AssetLoaded(body=body))
    assert driver.seen.status == 200 and driver.seen.body == body
    assert driver.seen.headers[b"content-type"] == content_type
    for header, value in SECURITY_HEADERS:
        assert driver.seen.headers[header] == value


def test_the_csp_allows_no_inline_code_no_framing_and_no_forms() -> None:
    csp = dict(SECURITY_HEADERS)[b"content-security-policy"].decode()
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert "unsafe" not in csp
    assert dict(SECURITY_HEADERS)[b"x-frame-options"] == b"DENY"


def test_an_unknown_ui_path_is_a_404_with_the_same_headers_and_reads_nothing() -> None:
    driver = ExchangeDriver(_gateway())
    driver.start("GET", "/ui/../../etc/passwd")
    assert driver.seen.status == 404
    assert not any(isinstance(a, LoadAsset) for a in driver.seen.actions)
    assert driver.seen.headers[b"x-frame-options"] == b"DENY"


def test_a_missing_file_is_a_500_with_the_same_headers() -> None:
    driver = ExchangeDriver(_gateway())
    driver.start("GET", "/ui/app.js")
    driver.handle(AssetLoaded(body=None))
    assert driver.seen.status == 500
    assert driver.seen.headers[b"content-security-policy"].startswith(b"default-src 'none'")


def test_head_gets_the_headers_without_the_body() -> None:
    driver = ExchangeDriver(_gateway())
    driver.start("HEAD", "/ui")
    driver.handle(AssetLoaded(body=b"<!doctype html>"))
    assert driver.seen.status == 200 and driver.seen.body == b""
    assert driver.seen.headers[b"content-length"] == b"15"


class _PageAudit(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or "style" in names:
            self.problems.append(f"inline style on <{tag}>")
        if any(name.startswith("on") for name in names):
            self.problems.append(f"inline handler on <{tag}>")
        if tag == "script":
            self._in_script = True
            self.scripts.append(dict(attrs).get("src") or "")
        for name, value in attrs:
            if name in ("src", "href") and value and "//" in value:
                self.problems.append(f"{tag} loads {value} from elsewhere")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script")


def test_the_page_has_no_inline_code_and_loads_nothing_from_elsewhere() -> None:
    audit = _PageAudit()
    audit.feed((UI_DIR / "index.html").read_text(encoding="utf-8"))
    assert audit.problems == []
    assert audit.scripts == ["/ui/app.js"]


def test_the_script_writes_text_only_and_keeps_the_key_out_of_urls_and_cookies() -> None:
    script = (UI_DIR / "app.js").read_text(encoding="utf-8")
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert banned not in script
    for banned in ("document.cookie", "localStorage", "?key=", "&key="):
        assert banned not in script
    assert "sessionStorage" in script and 'credentials: "omit"' in script
    assert "Authorization: `Bearer ${key}`" in script
