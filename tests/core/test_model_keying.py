"""Per-model limits and allow-lists judge the model reached, not its spelling
(issue 17, item 4): every spelling that resolves to one route shares one
limit state, and an allow-list admits or refuses the model, not the string."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.auth import hash_key
from sansio_gateway.backends.catalogue import DiscoveredModel, ollama_canonical_name
from sansio_gateway.gateway import Gateway
from sansio_gateway.limits import MemoryLimitStore

from ..helpers import NOW, ExchangeDriver, make_config

CHAT = "/v1/chat/completions"
LIMITED = '[limits.models."llama3.2:latest"]\nrequests_per_minute = 6\n'  # burst: 1 request
BACKEND = '[[backends]]\nname = "ollama"\nkind = "ollama"\nurl = "http://127.0.0.1:11434"\n'
ALIAS = '[[models]]\nname = "team-model"\nbackend = "ollama"\ntarget = "llama3.2"\n'
SPELLINGS = [
    "llama3.2",
    "llama3.2:latest",
    "team-model",
    "LLAMA3.2",
    "Llama3.2:Latest",
    "library/llama3.2",
    "registry.ollama.ai/library/llama3.2:latest",
]


def gateway(toml: str, *, discovered: bool = True) -> Gateway:
    gw = Gateway(make_config(BACKEND + toml))
    if discovered:
        gw.record_discovery("ollama", [DiscoveredModel(name="llama3.2:latest")], NOW)
    return gw


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}


def test_the_issue_repro_llama_without_tag_is_limited_too() -> None:
    gw = gateway(LIMITED)
    store = MemoryLimitStore()
    first = ExchangeDriver(gw, limits=store)
    first.start("POST", CHAT, chat("llama3.2:latest"))
    assert first.seen.upstream
    second = ExchangeDriver(gw, request_id="r2", limits=store)
    second.start("POST", CHAT, chat("llama3.2"), now=NOW + 1)
    assert second.seen.status == 429


def test_a_limit_written_without_the_tag_applies_to_the_tagged_name() -> None:
    gw = gateway('[limits.models."llama3.2"]\nrequests_per_minute = 6\n')
    store = MemoryLimitStore()
    ExchangeDriver(gw, limits=store).start("POST", CHAT, chat("llama3.2:latest"))
    second = ExchangeDriver(gw, request_id="r2", limits=store)
    second.start("POST", CHAT, chat("llama3.2"), now=NOW + 1)
    assert second.seen.status == 429


def test_two_entries_for_one_model_merge_to_the_strictest() -> None:
    gw = gateway(
        '[limits.models."llama3.2"]\nrequests_per_minute = 600\n'
        '[limits.models."llama3.2:latest"]\nrequests_per_minute = 6\n'
    )
    store = MemoryLimitStore()
    ExchangeDriver(gw, limits=store).start("POST", CHAT, chat("llama3.2"))
    second = ExchangeDriver(gw, request_id="r2", limits=store)
    second.start("POST", CHAT, chat("llama3.2"), now=NOW + 1)
    assert second.seen.status == 429


def test_other_models_are_not_caught_by_the_limit() -> None:
    gw = Gateway(make_config(BACKEND + LIMITED))
    gw.record_discovery(
        "ollama", [DiscoveredModel(name="llama3.2:latest"), DiscoveredModel(name="qwen:1b")], NOW
    )
    store = MemoryLimitStore()
    for i in range(3):
        d = ExchangeDriver(gw, request_id=f"r{i}", limits=store)
        d.start("POST", CHAT, chat("qwen:1b"), now=NOW + i)
        assert d.seen.upstream


def test_canonical_names_follow_ollamas_parser() -> None:
    canon = {ollama_canonical_name(s) for s in SPELLINGS if s != "team-model"}
    assert canon == {"registry.ollama.ai/library/llama3.2:latest"}
    assert ollama_canonical_name("hf.co/u/m") == "hf.co/u/m:latest"
    assert ollama_canonical_name("llama3.2:1b") != ollama_canonical_name("llama3.2")


@settings(max_examples=60, deadline=None)
@given(
    discovered=st.booleans(),
    first=st.sampled_from(SPELLINGS),
    second=st.sampled_from(SPELLINGS),
)
def test_spellings_resolving_to_one_route_share_one_limit_state(
    discovered: bool, first: str, second: str
) -> None:
    gw = gateway(LIMITED + ALIAS, discovered=discovered)
    routes = [gw.catalogue.resolve(name) for name in (first, second)]
    if any(r is None for r in routes):
        return  # a spelling the discovered catalogue does not know: a 404, no state
    specs = [gw.limit_specs("u", r) for r in routes if r is not None]
    assert specs[0] == specs[1]
    assert [r.key for r in specs[0].rates] == [r.key for r in specs[1].rates]
    store = MemoryLimitStore()
    a = ExchangeDriver(gw, limits=store)
    a.start("POST", CHAT, chat(first))
    assert a.seen.upstream
    b = ExchangeDriver(gw, request_id="r2", limits=store)
    b.start("POST", CHAT, chat(second), now=NOW + 1)
    assert b.seen.status == 429


# ---- allow-lists --------------------------------------------------------


def keyed(models: str, extra: str = "", *, discovered: bool = True) -> Gateway:
    return gateway(
        f'[[auth.keys]]\nid = "k"\nuser = "u"\nsha256 = "{hash_key("sk-test")}"\n'
        f"models = {models}\n" + extra,
        discovered=discovered,
    )


def call(gw: Gateway, model: str) -> int | None:
    d = ExchangeDriver(gw)
    d.start("POST", CHAT, chat(model), headers=((b"authorization", b"Bearer sk-test"),))
    return 200 if d.seen.upstream else d.seen.status


def test_an_allow_list_of_the_tagged_name_admits_the_untagged_one() -> None:
    for discovered in (True, False):
        gw = keyed('["llama3.2:latest"]', discovered=discovered)
        assert call(gw, "llama3.2") == 200
        assert call(gw, "llama3.2:latest") == 200


def test_an_allow_list_of_an_alias_admits_the_model_it_names() -> None:
    gw = keyed('["team-model"]', ALIAS)
    assert call(gw, "llama3.2") == 200


def test_no_spelling_dodges_an_allow_list() -> None:
    gw = Gateway(
        make_config(
            BACKEND + f'[[auth.keys]]\nid = "k"\nuser = "u"\nsha256 = "{hash_key("sk-test")}"\n'
            'models = ["qwen*"]\n'
            '[[models]]\nname = "qwen-fast"\nbackend = "ollama"\ntarget = "qwen:1b"\n'
        )
    )
    # Undiscovered: unknown names are forwarded, so spelling games would reach Ollama.
    for model in ("llama3.2", "LLAMA3.2", "library/llama3.2", "llama3.2:latest"):
        assert call(gw, model) == 404, model
    assert call(gw, "qwen-fast") == 200
    assert call(gw, "qwen:1b") == 200
