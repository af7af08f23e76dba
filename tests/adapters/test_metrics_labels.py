"""/metrics labels are bounded (issue 17, item 5): a client-chosen model name
never becomes a label value, and names hidden by an allow-list do not leak.

The core decides the label (``RequestSummary.model_label``); these tests
drive Exchanges without sockets and feed their summaries to the real
``GatewayMetrics``, so 10,000 requests take a second.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from sansio_gateway.adapters.metrics import GatewayMetrics

from sansio_gateway.actions import UpstreamChunkReceived, UpstreamClosed, UpstreamResponseStarted
from sansio_gateway.auth import hash_key
from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.gateway import Gateway

from ..helpers import NOW, ExchangeDriver, make_config

BACKEND = '[[backends]]\nname = "local"\nkind = "ollama"\nurl = "http://127.0.0.1:11434"\n'
ANSWER = (
    b'{"model":"llama3.2:1b","message":{"role":"assistant","content":"Hi"},"done":true,'
    b'"done_reason":"stop","prompt_eval_count":3,"eval_count":1}'
)


def series(metrics: GatewayMetrics) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    text = metrics.render()[0].decode()
    return {
        (sample.name, frozenset(sample.labels.items()))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def run(gw: Gateway, metrics: GatewayMetrics, model: str, i: int = 0, **headers: str) -> int:
    d = ExchangeDriver(gw, request_id=f"r{i}")
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    hs = tuple((k.encode(), v.encode()) for k, v in headers.items())
    d.start("POST", "/v1/chat/completions", body, headers=hs)
    if d.seen.upstream:
        if model.startswith("llama3.2"):
            d.handle(UpstreamResponseStarted(status=200, headers=()))
            d.handle(UpstreamChunkReceived(data=ANSWER))
        else:  # the backend does not have it either
            d.handle(UpstreamResponseStarted(status=404, headers=()))
            d.handle(UpstreamChunkReceived(data=b'{"error":"model \\"x\\" not found"}'))
        d.handle(UpstreamClosed())
    metrics.observe(d.exchange.summary(NOW + 1))
    assert d.seen.status is not None
    return d.seen.status


def test_ten_thousand_unknown_model_names_add_no_series() -> None:
    for discovered in (True, False):
        gw = Gateway(make_config(BACKEND))
        if discovered:
            gw.record_discovery("local", [DiscoveredModel(name="llama3.2:1b")], NOW)
        metrics = GatewayMetrics()
        assert run(gw, metrics, "llama3.2:1b") == 200
        assert run(gw, metrics, "junk-warmup") == 404
        before = series(metrics)
        for i in range(10_000):
            assert run(gw, metrics, f"junk-{i}-secret-project-name", i) == 404
        after = series(metrics)
        assert after == before, sorted(after - before)[:5]
        labels = {dict(ls).get("model") for _, ls in after} - {None}
        # Undiscovered, the catalogue names nothing: every name is "unknown".
        assert labels == ({"llama3.2:1b", "unknown"} if discovered else {"unknown"})


def test_spellings_of_a_known_model_share_its_catalogue_name() -> None:
    gw = Gateway(make_config(BACKEND))
    gw.record_discovery("local", [DiscoveredModel(name="llama3.2:latest")], NOW)
    metrics = GatewayMetrics()
    for i, model in enumerate(("llama3.2", "llama3.2:latest")):
        assert run(gw, metrics, model, i) == 200
    labels = {dict(ls).get("model") for _, ls in series(metrics)} - {None}
    assert labels == {"llama3.2:latest"}


def test_names_hidden_by_an_allow_list_do_not_leak() -> None:
    gw = Gateway(
        make_config(
            BACKEND + f'[[auth.keys]]\nid = "k"\nuser = "u"\nsha256 = "{hash_key("sk-a")}"\n'
            'models = ["llama3.2:1b"]\n'
        )
    )
    gw.record_discovery(
        "local",
        [DiscoveredModel(name="llama3.2:1b"), DiscoveredModel(name="secret-project:7b")],
        NOW,
    )
    metrics = GatewayMetrics()
    assert run(gw, metrics, "secret-project:7b", authorization="Bearer sk-a") == 404
    text = metrics.render()[0].decode()
    assert "secret-project" not in text
    assert 'model="unknown"' in text
