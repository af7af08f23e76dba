"""Which route a model-addressed request reaches (``backends/reach.py``),
without an Exchange: the refresh worth asking for, the allow-list judging the
model reached, one 404 for missing and hidden, the bounded metrics label."""

from __future__ import annotations

import pytest

from sansio_gateway.backends.catalogue import DiscoveredModel
from sansio_gateway.backends.reach import UNKNOWN_MODEL_LABEL, reach, worth_a_refresh
from sansio_gateway.errors import NotFound
from sansio_gateway.gateway import Gateway
from sansio_gateway.http import Surface
from sansio_gateway.identity import Identity

from ..helpers import NOW, make_config

CONFIG = """
[[backends]]
name = "local"
kind = "ollama"
url = "http://127.0.0.1:9"
[[models]]
name = "gpt-4o-mini"
backend = "local"
target = "llama3.2:1b"
"""


def gateway() -> Gateway:
    gw = Gateway(make_config(CONFIG))
    gw.record_discovery("local", [DiscoveredModel(name="llama3.2:1b")], NOW)
    return gw


def who(*models: str) -> Identity:
    return Identity(key_id="k", user="u", models=models)


def test_an_alias_reaches_its_target_labelled_by_the_catalogues_name() -> None:
    gw = gateway()
    route, label = reach(gw.catalogue, who("*"), "gpt-4o-mini", Surface.OPENAI, may_use=gw.may_use)
    assert (route.backend, route.target, label) == ("local", "llama3.2:1b", "gpt-4o-mini")


def test_the_allow_list_judges_the_model_reached_not_the_spelling() -> None:
    gw = gateway()
    # Named by its discovered name only: the alias reaches the same model.
    route, _ = reach(
        gw.catalogue, who("llama3.2:1b"), "gpt-4o-mini", Surface.OPENAI, may_use=gw.may_use
    )
    assert route.target == "llama3.2:1b"


@pytest.mark.parametrize(
    ("identity", "model"),
    [(who("*"), "ghost:7b"), (who("other*"), "gpt-4o-mini")],  # missing, then hidden
)
def test_missing_and_hidden_models_get_the_same_404(identity: Identity, model: str) -> None:
    gw = gateway()
    with pytest.raises(NotFound) as caught:
        reach(gw.catalogue, identity, model, Surface.OLLAMA, may_use=gw.may_use)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert str(caught.value) == f'model "{model}" not found, try pulling it first'


def test_a_name_only_forwarded_to_an_undiscovered_backend_is_labelled_unknown() -> None:
    gw = Gateway(make_config(CONFIG))  # no discovery yet: any name may be there
    route, label = reach(gw.catalogue, who("*"), "anything:1b", Surface.OPENAI, may_use=gw.may_use)
    assert route.backend == "local" and label == UNKNOWN_MODEL_LABEL


def test_only_an_unknown_name_the_allow_list_names_is_worth_a_refresh() -> None:
    catalogue = gateway().catalogue
    assert worth_a_refresh(catalogue, who("*"), "new-model:1b")
    assert not worth_a_refresh(catalogue, who("llama*"), "new-model:1b")  # not the caller's
    assert not worth_a_refresh(catalogue, who("*"), "gpt-4o-mini")  # already known
