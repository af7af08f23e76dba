"""The request path leaves nothing of the gateway's to the cyclic GC.

The serve command spaces out the collector's runs (adapters/heap.py) on
the ground that a request's objects are freed by reference counting.  A
reference cycle per request (as httptools' parser and the response that
holds it once made: the parser keeps the response's bound methods) would
undo that: garbage that only a collection frees, and the collections it
sets off.  Here the collector keeps what it finds (DEBUG_SAVEALL) while
requests of every kind go through the real server's fast transport, with
either response parser.  (The anyio transport, for trio and the ASGI app,
does leave cycles: a watcher task is cancelled per request, and its
CancelledError's traceback holds the request's frames.)"""

from __future__ import annotations

import gc
import http.client
from collections.abc import Iterator

import orjson
import pytest
from sansio_gateway.adapters.heap import GEN0_THRESHOLD, settle_heap

from tests.emulators.ollama import OllamaEmulator, run_ollama_emulator
from tests.helpers import make_config, running_gateway

KEY = "sk-heap-test"


@pytest.fixture(scope="module")
def emulator() -> Iterator[OllamaEmulator]:
    with run_ollama_emulator() as emu:
        yield emu


def _requests(url: str, *, reconnect: bool = False) -> None:
    """Requests of each kind on one kept-alive connection, or (``reconnect``)
    each on its own, as clients without a pool make them."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    calls = [
        ("POST", "/v1/chat/completions", chat),
        ("POST", "/v1/chat/completions", {**chat, "stream": True}),
        ("POST", "/v1/chat/completions", {**chat, "stream": True, "stream_options": {"include_usage": True}}),
        ("POST", "/api/chat", {"model": "gpt-4o-mini", "messages": chat["messages"]}),
        ("POST", "/v1/embeddings", {"model": "gpt-4o-mini", "input": "hi"}),
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", {"model": "no-such-model", "messages": chat["messages"]}),
        ("POST", "/v1/chat/completions", {"messages": "not a list"}),
    ]  # fmt: skip
    for method, path, body in calls:
        data = orjson.dumps(body) if body is not None else None
        headers = {"content-type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        response.read()
        if reconnect:
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.close()


@pytest.mark.parametrize("reconnect", [False, True], ids=["keep-alive", "reconnect"])
@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_requests_leave_no_gateway_object_to_the_cyclic_gc(
    emulator: OllamaEmulator, parser: str, reconnect: bool
) -> None:
    config = make_config(
        f'[[backends]]\nname = "local"\nkind = "ollama"\nurl = "{emulator.url}"\n'
        f'[[models]]\nname = "gpt-4o-mini"\nbackend = "local"\ntarget = "llama3.2:1b"\n'
    )
    with running_gateway(config, transport="fast", parser=parser, uvloop=True) as gw:
        _requests(gw.url)  # warm: pools, caches, first-use tables
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(5):
                _requests(gw.url, reconnect=reconnect)
            gc.collect()
            ours = sorted(
                {
                    f"{type(o).__module__}.{type(o).__qualname__}"
                    for o in gc.garbage
                    if type(o).__module__.startswith("sansio_gateway")
                    and ".emulator" not in type(o).__module__
                }
            )
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert ours == [], f"left to the cyclic GC: {ours}"


def test_settle_heap_freezes_what_exists_and_spaces_out_collections() -> None:
    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GEN0_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
