"""OpenAI clients in front of OpenAI-compatible backends (same-format
passthrough), and a backend kind registered by a third-party entry point."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sansio_gateway.adapters.plugins import ENTRY_POINT_GROUP, load_registry

from tests.emulators.openai_backend import OpenAIEmulator, ScriptedReply, run_openai_emulator
from tests.helpers import RunningGateway, make_config, running_gateway, wait_for

ASK = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def backend() -> Iterator[OpenAIEmulator]:
    with run_openai_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def gateway(backend: OpenAIEmulator, runtime: str) -> Iterator[RunningGateway]:
    config = make_config(
        f'[[backends]]\nname = "cloud"\nkind = "openai"\nurl = "{backend.url}"\n'
        '[[models]]\nname = "house-model"\nbackend = "cloud"\ntarget = "gpt-4o-mini"\n'
    )
    with running_gateway(config, runtime=runtime) as gw:
        yield gw


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def test_non_stream_passes_through_with_the_model_rewritten_both_ways(
    client: openai.OpenAI, backend: OpenAIEmulator, gateway: RunningGateway
) -> None:
    done = client.chat.completions.create(model="house-model", messages=ASK)  # type: ignore[arg-type]
    assert done.model == "house-model"
    assert done.choices[0].message.content == "Hello! How can I help you today?"
    assert backend.last_request("/v1/chat/completions").json["model"] == "gpt-4o-mini"
    wait_for(lambda: any(r.model == "house-model" for r in gateway.ledger.records))
    record = [r for r in gateway.ledger.records if r.model == "house-model"][-1]
    assert record.prompt_tokens == 26 and record.usage_reported


def test_stream_usage_is_learned_but_only_shown_when_asked(
    client: openai.OpenAI, backend: OpenAIEmulator, gateway: RunningGateway
) -> None:
    before = len(gateway.ledger.records)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=ASK, stream=True))  # type: ignore[arg-type]
    sent = backend.last_request("/v1/chat/completions").json
    assert sent["stream_options"] == {"include_usage": True}  # asked upstream for the counts
    assert all(c.usage is None for c in chunks) and chunks[-1].choices  # but not shown
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! How can I help you today?"
    wait_for(lambda: len(gateway.ledger.records) > before)
    assert gateway.ledger.records[-1].usage_reported
    with_usage = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
    ))  # fmt: skip
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None


def test_backend_errors_keep_their_meaning(client: openai.OpenAI, backend: OpenAIEmulator) -> None:
    backend.set_reply("gpt-4o-mini", ScriptedReply(error_status=500))
    try:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=ASK)  # type: ignore[arg-type]
    finally:
        backend.set_reply("gpt-4o-mini", ScriptedReply())


def test_embeddings_and_completions_pass_through(client: openai.OpenAI) -> None:
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in vectors.data] == [0, 1] and len(vectors.data[0].embedding) == 16


def test_models_list_shows_the_discovered_backend_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"house-model", "gpt-4o-mini", "meta-llama/Llama-3.1-8B-Instruct:Q4"} <= ids


# ---- a backend kind from an entry point ---------------------------------------------


PLUGIN = """
from sansio_gateway.backends.catalogue import parse_openai_models
from sansio_gateway.backends.registry import BackendKind
from sansio_gateway.passthrough.openai import OpenAIPassthroughFlow

def make_kind():
    return BackendKind(
        name="acme",
        discovery_path="/models",
        parse_discovery=parse_openai_models,
        flows={"chat.completions": OpenAIPassthroughFlow},
    )
"""


@pytest.fixture
def plugin_installed(tmp_path: Path) -> Iterator[None]:
    """An installed distribution, as pip would leave it: a module and a
    dist-info with an entry point in the sansio_gateway.backends group."""
    (tmp_path / "acme_kind.py").write_text(PLUGIN)
    info = tmp_path / "acme_kind-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-kind\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nacme = acme_kind:make_kind\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("acme_kind", None)


def test_a_kind_registered_through_the_entry_point_group_serves_requests(
    plugin_installed: None, backend: OpenAIEmulator
) -> None:
    assert "acme" in load_registry().names()
    config = make_config(f'[[backends]]\nname = "a"\nkind = "acme"\nurl = "{backend.url}"\n')
    with running_gateway(config) as gw, openai.OpenAI(base_url=gw.url + "/v1", api_key="x") as c:
        done = c.chat.completions.create(model="gpt-4o-mini", messages=ASK)  # type: ignore[arg-type]
        assert done.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="cannot serve completions"):
            c.completions.create(model="gpt-4o-mini", prompt="x")


def test_an_unknown_kind_is_refused_at_startup() -> None:
    from sansio_gateway.config import ConfigError
    from sansio_gateway.gateway import Gateway

    with pytest.raises(ConfigError, match=r"backends\[0\]\.kind = 'nope'"):
        Gateway(make_config('[[backends]]\nname = "a"\nkind = "nope"\nurl = "http://x"\n'))
