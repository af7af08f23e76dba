"""Reloading a config: the plan (what changed, what needs a restart, whose
limits change), the Gateway taking over its predecessor's state, and the
``POST /admin/reload`` answers -- all without sockets."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.actions import (
    ConfigReloaded,
    CountBackendAttempt,
    RecordBackendOutcome,
    RefreshCatalogue,
    ReloadConfig,
)
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.config import ConfigError, GatewayConfig, LimitValues
from sansio_gateway.gateway import Gateway
from sansio_gateway.limits import build_specs
from sansio_gateway.limits.breaker import BreakerState
from sansio_gateway.local.reload import render_reload
from sansio_gateway.reload import RESTART_ONLY, ReloadOutcome, ReloadPlan, plan_reload

from ..helpers import NOW, ExchangeDriver, make_config

A = "http://127.0.0.1:9001"
B = "http://127.0.0.1:9002"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key(id_: str, user: str, *, admin: bool = False) -> str:
    return (
        f'[[auth.keys]]\nid = "{id_}"\nuser = "{user}"\nsha256 = "{sha("sk-" + id_)}"\n'
        f"admin = {'true' if admin else 'false'}\n"
    )


def backend(name: str, url: str, extra: str = "") -> str:
    return f'[[backends]]\nname = "{name}"\nurl = "{url}"\n{extra}'


BASE = backend("a", A) + backend("b", B) + key("root", "ops", admin=True) + key("k1", "alice")


def plan(old: str, new: str, **kw: object) -> ReloadPlan:
    return plan_reload(make_config(old), make_config(new), bind_host=None, **kw)  # type: ignore[arg-type]


# ---- the plan ----------------------------------------------------------------


def test_the_same_config_changes_nothing() -> None:
    p = plan(BASE, BASE)
    assert not p.changed and not p.problems
    assert p.backends.carried == ("a", "b")
    assert p.describe() == "no change"


def test_keys_added_and_removed_are_counted_never_named_nor_shown() -> None:
    new = backend("a", A) + backend("b", B) + key("root", "ops", admin=True) + key("k2", "bob")
    p = plan(BASE, new)
    assert p.changed and not p.problems
    assert p.summary()["keys"] == {"added": 1, "removed": 1, "changed": 0, "total": 2}
    text = orjson.dumps(p.summary()).decode() + p.describe()
    assert "k1" not in text and "k2" not in text and sha("sk-k2") not in text
    assert "keys +1 -1 ~0 (2 in all)" in p.describe()


def test_a_key_made_admin_counts_as_changed() -> None:
    new = BASE.replace(key("k1", "alice"), key("k1", "alice", admin=True))
    assert plan(BASE, new).keys.changed == ("k1",)


@pytest.mark.parametrize(
    ("toml", "key_name"),
    [
        ("[server]\nport = 9999\n", "server.port"),
        ('[server]\nhost = "0.0.0.0"\n', "server.host"),
        ('[server]\ntransport = "anyio"\n', "server.transport"),
        ('[server]\nruntime = "trio"\n', "server.runtime"),
        ("[server]\nuvloop = false\n", "server.uvloop"),
        ('[store]\nurl = "redis://:hunter2@127.0.0.1:6379/0"\n', "store.url"),
        ('[store]\nusage = "sqlite:///./other.db"\n', "store.usage"),
        ("[store]\ninstances = 2\n", "store.instances"),
        ('[store]\non_error = "open"\n', "store.on_error"),
        ("[tracing]\nenabled = true\n", "tracing.enabled"),
    ],
)
def test_a_restart_only_setting_is_refused_naming_its_key(toml: str, key_name: str) -> None:
    p = plan(BASE, toml + BASE)
    assert [problem.key for problem in p.problems] == [key_name]
    assert "restart" in p.problems[0].message
    assert "hunter2" not in str(p.problems[0])  # store URLs are redacted


def test_live_server_settings_change_without_a_restart() -> None:
    p = plan(BASE, "[server]\nread_timeout = 5\nmax_body_bytes = 1024\n" + BASE)
    assert not p.problems and p.server == ("max_body_bytes", "read_timeout")


@pytest.mark.parametrize("section", ["store", "tracing"])
def test_every_store_and_tracing_setting_needs_a_restart(section: str) -> None:
    model = GatewayConfig.model_fields[section].annotation
    assert {k for k in RESTART_ONLY if k.startswith(f"{section}.")} == {
        f"{section}.{name}"
        for name in model.model_fields  # type: ignore[union-attr]
    }


def test_removing_every_key_is_refused_on_a_public_address() -> None:
    open_config = backend("a", A)
    public = plan_reload(make_config(BASE), make_config(open_config), bind_host="0.0.0.0")
    assert [p.key for p in public.problems] == ["auth.keys"]
    allowed = plan_reload(
        make_config(BASE), make_config(open_config), bind_host="0.0.0.0", allow_anonymous=True
    )
    assert not allowed.problems
    assert not plan_reload(
        make_config(BASE), make_config(open_config), bind_host="127.0.0.1"
    ).problems


def test_backends_added_removed_replaced_or_retuned() -> None:
    new = backend("a", A, "first_byte_timeout = 5\n") + backend("b", A) + backend("c", B)
    p = plan(BASE, new + key("root", "ops", admin=True) + key("k1", "alice"))
    assert p.backends.added == ("c",)
    assert p.backends.removed == ()
    assert p.backends.replaced == ("b",)  # another URL: another server
    assert p.backends.retuned == ("a",)
    assert p.backends.carried == ("a",)  # a keeps its health; b starts afresh
    gone = plan(BASE, backend("a", A) + key("root", "ops", admin=True))
    assert gone.backends.removed == ("b",)


def test_whose_limits_change_users_defaults_and_models() -> None:
    limits = "[limits]\nrequests_per_minute = 60\n[limits.users.alice]\ntokens_per_minute = 1000\n"
    p = plan(BASE + limits, BASE + limits.replace("1000", "2000"))
    assert p.limit_users == ("alice",) and not p.limit_defaults
    p = plan(BASE + limits, BASE + limits.replace("= 60", "= 30"))
    assert p.limit_defaults and p.limit_users == ("alice", "ops")  # both inherit the default
    p = plan(BASE + limits, BASE + limits + '[limits.models."m"]\nrequests_per_minute = 5\n')
    assert p.limit_models.added == ("m",) and p.limit_users == ()


# ---- the plan, for any pair of configs -----------------------------------------

_users = st.sampled_from(["alice", "bob", "carol"])
_limit = st.none() | st.integers(min_value=1, max_value=5)


@st.composite
def configs(draw: st.DrawFn) -> GatewayConfig:
    parts = []
    port = draw(st.sampled_from([8080, 8081]))
    parts.append(f"[server]\nport = {port}\nread_timeout = {draw(st.sampled_from([10, 30]))}\n")
    parts.append(f"[store]\ninstances = {draw(st.sampled_from([1, 2]))}\n")
    for name in draw(st.sets(st.sampled_from(["a", "b", "c"]), min_size=1)):
        url = draw(st.sampled_from([A, B]))
        parts.append(backend(name, url, f"max_retries = {draw(st.integers(0, 1))}\n"))
    for id_ in draw(st.sets(st.sampled_from(["k1", "k2", "k3"]))):
        parts.append(key(id_, draw(_users), admin=draw(st.booleans())))
    limits = "[limits]\n"
    default = draw(_limit)
    if default is not None:
        limits += f"requests_per_minute = {default}\n"
    for user in draw(st.sets(_users)):
        limits += f"[limits.users.{user}]\n"
        value = draw(_limit)
        if value is not None:
            limits += f"tokens_per_minute = {value}\n"
    parts.append(limits)
    return make_config("".join(parts))


@settings(max_examples=150, deadline=None)
@given(configs())
def test_property_a_config_reloaded_onto_itself_changes_nothing(config: GatewayConfig) -> None:
    p = plan_reload(config, config, bind_host=None)
    assert not p.changed and not p.problems
    assert p.backends.carried == tuple(b.name for b in config.backends)


@settings(max_examples=200, deadline=None)
@given(configs(), configs())
def test_property_the_plan_is_consistent(old: GatewayConfig, new: GatewayConfig) -> None:
    p = plan_reload(old, new, bind_host=None)
    back = plan_reload(new, old, bind_host=None)
    # what one way adds the other removes
    assert (p.keys.added, p.keys.removed) == (back.keys.removed, back.keys.added)
    assert (p.backends.added, sorted(p.backends.replaced)) == (
        back.backends.removed,
        sorted(back.backends.replaced),
    )
    # every backend of the new config is exactly one of added, replaced, carried
    names = [b.name for b in new.backends]
    parts = [*p.backends.added, *p.backends.replaced, *p.backends.carried]
    assert sorted(parts) == sorted(names)
    # refused exactly when a restart-only setting differs (no bind host: no anonymity check)
    differs = old.server.port != new.server.port or old.store != new.store
    assert bool(p.problems) == differs
    # the users named are exactly those whose limit specs change
    for user in ("alice", "bob", "carol"):
        before = build_specs(old.limits, user, "m")
        after = build_specs(new.limits, user, "m")
        named = user in {k.user for k in (*old.auth.keys, *new.auth.keys)} or user in set(
            old.limits.users
        ) | set(new.limits.users)
        if named:
            assert (user in p.limit_users) == (before != after)
    # changed exactly when the configs differ beyond the restart-only settings
    restart_server = {k.split(".")[1]: getattr(new.server, k.split(".")[1])
                      for k in RESTART_ONLY if k.startswith("server.")}  # fmt: skip
    aligned = old.model_copy(
        update={
            "server": old.server.model_copy(update=restart_server),
            "store": new.store,
            "tracing": new.tracing,
        }
    )
    assert p.changed == (_without_empty_tables(aligned) != _without_empty_tables(new))


def _without_empty_tables(config: GatewayConfig) -> GatewayConfig:
    """An empty ``[limits.users.X]`` table means what no table means."""
    users = {u: v for u, v in config.limits.users.items() if v != LimitValues()}
    return config.model_copy(update={"limits": config.limits.model_copy(update={"users": users})})


# ---- ConfigError names the keys --------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "env", "key_name"),
    [
        (
            "[limits.users.alice]\nrequests_per_minute = 0\n",
            {},
            "limits.users.alice.requests_per_minute",
        ),
        ('[server]\nport = "x"\n', {}, "server.port"),
        ('[[models]]\nname = "m"\nbackend = "nope"\n' + backend("a", A), {}, "models[0].backend"),
        (backend("a", A) + backend("a", B), {}, "backends"),
        ('[[auth.keys]]\nid = "k"\nuser = "u"\nkey_env = "NOPE"\n', {}, "auth.keys[0].key_env"),
        (backend("a", A, 'api_key_env = "NOPE"\n'), {}, "backends[0].api_key_env"),
        ("[server\n", {}, None),
    ],
)
def test_config_errors_name_their_keys(
    toml: str, env: dict[str, str], key_name: str | None
) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(toml, **env)
    assert info.value.problems[0][0] == key_name
    if key_name is not None:
        assert key_name in str(info.value)


def test_an_unknown_backend_kind_names_its_key() -> None:
    with pytest.raises(ConfigError) as info:
        Gateway(make_config(backend("a", A, 'kind = "nope"\n')))
    assert info.value.problems[0][0] == "backends[0].kind"


# ---- the Gateway takes over ----------------------------------------------------------


def _reloaded(old_toml: str, new_toml: str) -> tuple[Gateway, Gateway, ReloadPlan]:
    old = Gateway(make_config(old_toml))
    new = Gateway(make_config(new_toml))
    p = plan_reload(old.config, new.config, bind_host=None)
    return old, new, p


def test_carried_backends_keep_breakers_models_and_probes_replaced_ones_start_afresh() -> None:
    old, new, p = _reloaded(BASE, backend("a", A) + backend("b", A) + key("root", "ops"))
    for name in ("a", "b"):
        old.record_discovery(name, [DiscoveredModel(name=f"{name}-model")], NOW)
        for _ in range(5):
            old.apply_write(RecordBackendOutcome(backend=name, ok=False, at=NOW), NOW)
        assert old.health.state(name) is BreakerState.OPEN
    new.carry_over(old, p)
    assert new.health.state("a") is BreakerState.OPEN
    assert new.health.state("b") is BreakerState.CLOSED
    assert new.catalogue.resolve("a-model") is not None
    assert set(new.catalogue.discovered) == {"a"}  # b is another server now: rediscovered
    assert set(new.backend_status) == {"a"}


def test_new_breaker_settings_apply_to_carried_breakers() -> None:
    old, new, p = _reloaded(BASE, "[server]\nbreaker_failures = 2\n" + BASE)
    new.carry_over(old, p)
    for _ in range(2):
        new.apply_write(RecordBackendOutcome(backend="a", ok=False, at=NOW), NOW)
    assert new.health.state("a") is BreakerState.OPEN


def test_the_old_gateway_forwards_writes_about_carried_backends() -> None:
    old, new, p = _reloaded(BASE, backend("a", A) + backend("b", A) + key("root", "ops"))
    new.carry_over(old, p)
    for _ in range(5):  # requests still in flight on the old config fail on a and b
        old.apply_write(CountBackendAttempt(backend="a", at=NOW), NOW)
        old.apply_write(RecordBackendOutcome(backend="a", ok=False, at=NOW), NOW)
        old.apply_write(RecordBackendOutcome(backend="b", ok=False, at=NOW), NOW)
    assert new.health.state("a") is BreakerState.OPEN  # the same server: it counts
    assert new.health.state("b") is BreakerState.CLOSED  # the old b is not the new b
    old.apply_write(RefreshCatalogue(), NOW)
    assert not new.may_refresh_on_miss(NOW)


def test_writes_reach_the_newest_gateway_through_a_chain_of_reloads() -> None:
    first, second, p = _reloaded(BASE, BASE + "[server]\nread_timeout = 5\n")
    second.carry_over(first, p)
    third = Gateway(make_config(BASE))
    third.carry_over(second, plan_reload(second.config, third.config, bind_host=None))
    for _ in range(5):
        first.apply_write(RecordBackendOutcome(backend="a", ok=False, at=NOW), NOW)
    assert third.health.state("a") is BreakerState.OPEN


def test_a_probe_of_a_removed_or_replaced_backend_is_dropped() -> None:
    old, new, p = _reloaded(BASE, backend("a", B) + key("root", "ops"))
    new.carry_over(old, p)
    stale = old.config.backend("a")
    new.record_discovery("a", [DiscoveredModel(name="stale")], NOW, probed=stale)
    new.record_discovery("b", [DiscoveredModel(name="gone")], NOW, probed=old.config.backend("b"))
    new.record_discovery_failure("a", "refused", NOW, probed=stale)
    assert new.catalogue.discovered == {} and new.backend_status == {}
    new.record_discovery("a", [DiscoveredModel(name="fresh")], NOW, probed=new.config.backend("a"))
    assert [m.name for m in new.catalogue.discovered["a"].models] == ["fresh"]


def test_a_request_in_flight_finishes_on_the_config_it_started_with() -> None:
    old, new, p = _reloaded(BASE, backend("a", A) + key("root", "ops", admin=True))
    old.record_discovery("b", [DiscoveredModel(name="b-model")], NOW)
    driver = ExchangeDriver(old)
    auth = ((b"authorization", b"Bearer sk-k1"),)
    body = {"model": "b-model", "messages": [{"role": "user", "content": "hi"}]}
    driver.start("POST", "/v1/chat/completions", body, headers=auth)
    new.carry_over(old, p)  # the reload lands while the request waits on backend b
    [call] = driver.seen.upstream
    assert call.backend == "b" and call.url.startswith(B)
    # and a new request with the removed key is refused by the new Gateway
    again = ExchangeDriver(new)
    again.start("POST", "/v1/chat/completions", body, headers=auth)
    assert again.seen.status == 401


# ---- POST /admin/reload ------------------------------------------------------------------


def _post_reload(gw: Gateway, token: str | None) -> ExchangeDriver:
    driver = ExchangeDriver(gw)
    headers = ((b"authorization", f"Bearer {token}".encode()),) if token else ()
    driver.start("POST", "/admin/reload", headers=headers)
    return driver


def test_admin_reload_needs_an_admin_key() -> None:
    gw = Gateway(make_config(BASE))
    assert _post_reload(gw, None).seen.status == 401
    forbidden = _post_reload(gw, "sk-k1").seen
    assert forbidden.status == 403 and forbidden.json()["error"]["type"]
    asked = _post_reload(gw, "sk-root")
    assert asked.seen.actions == [ReloadConfig()]
    get = ExchangeDriver(gw)
    get.start("GET", "/admin/reload", headers=((b"authorization", b"Bearer sk-root"),))
    assert get.seen.status == 405


def test_admin_reload_answers_what_changed() -> None:
    gw = Gateway(make_config(BASE))
    driver = _post_reload(gw, "sk-root")
    p = plan(BASE, BASE + key("k9", "zed"))
    outcome = ReloadOutcome(source="gw.toml", trigger="POST /admin/reload", plan=p, generation=2)
    driver.handle(ConfigReloaded(outcome=outcome))
    seen = driver.seen
    assert seen.status == 200
    body = seen.json()
    assert body["reloaded"] is True and body["generation"] == 2
    assert body["keys"] == {"added": 1, "removed": 0, "changed": 0, "total": 3}
    assert sha("sk-k9") not in seen.body.decode()


def test_a_refused_config_is_a_400_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        make_config(BASE + "[limits.users.alice]\nrequests_per_minute = 0\n")
    outcome = ReloadOutcome.refused(info.value, source="gw.toml", trigger="SIGHUP", generation=1)
    answer = render_reload(outcome)
    assert answer.status == 400
    error = orjson.loads(answer.body)["error"]
    assert error["param"] == "limits.users.alice.requests_per_minute"
    assert error["code"] == "invalid_config"
    assert (
        "limits.users.alice.requests_per_minute: Input should be greater than 0" in error["message"]
    )
    assert "refused" in outcome.describe() and "limits.users.alice" in outcome.describe()


def test_a_restart_only_change_is_a_400_naming_the_key() -> None:
    p = plan(BASE, "[server]\nport = 1\n" + BASE)
    outcome = ReloadOutcome(source="gw.toml", trigger="SIGHUP", plan=p, problems=p.problems)
    assert not outcome.applied
    answer = render_reload(outcome)
    assert answer.status == 400 and orjson.loads(answer.body)["error"]["param"] == "server.port"


def test_nothing_to_read_again_is_a_409() -> None:
    outcome = ReloadOutcome(source=None, trigger="x", unavailable=True, problems=())
    answer = render_reload(outcome)
    assert answer.status == 409
    assert orjson.loads(answer.body)["error"]["code"] == "reload_unavailable"


def test_status_shows_the_process_and_its_config_generation_to_admins_only() -> None:
    gw = Gateway(make_config(BASE))
    gw.process = {"pid": 42, "worker": 1, "config": {"generation": 3}}
    admin = ExchangeDriver(gw)
    admin.start("GET", "/status", headers=((b"authorization", b"Bearer sk-root"),))
    assert admin.seen.json()["process"] == {"pid": 42, "worker": 1, "config": {"generation": 3}}
    other = ExchangeDriver(gw)
    other.start("GET", "/status", headers=((b"authorization", b"Bearer sk-k1"),))
    assert other.seen.status == 200 and "process" not in other.seen.json()
