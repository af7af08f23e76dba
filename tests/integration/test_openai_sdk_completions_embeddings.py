"""The official openai SDK on /v1/completions and /v1/embeddings, against the real
gateway and the emulated Ollama.

Every test runs on both runtimes (asyncio and trio), through the module
fixtures in conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import openai
import pytest

from tests.emulators.ollama import OllamaEmulator, embedding_for
from tests.helpers import RunningGateway, wait_for

MODEL = "llama3.2:1b"
CODER = "qwen2.5-coder:0.5b"  # the emulator's model with the "insert" capability
EMBEDDER = "nomic-embed-text"  # 768 dimensions in the emulator
ANSWER = "Hello! How can I help you today?"
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def gateway(any_server: RunningGateway) -> RunningGateway:
    """This suite runs against the bundled server and the ASGI app alike."""
    return any_server


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def restore_replies(emulator: OllamaEmulator) -> Iterator[None]:
    saved = {name: replace(emulator.model(name).reply) for name in (MODEL, CODER, EMBEDDER)}
    yield
    for name, reply in saved.items():
        emulator.set_reply(name, reply)


def sent(emulator: OllamaEmulator, path: str) -> Any:
    """The native body the gateway sent for the newest request to ``path``."""
    return emulator.last_request(path).json


def float32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


# -- completions ---------------------------------------------------------------------------------


def test_completion_non_stream(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    completion = client.completions.create(model=MODEL, prompt=PROMPT)
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-") and completion.model == MODEL
    [choice] = completion.choices
    assert choice.text == ANSWER and choice.index == 0
    assert choice.finish_reason == "stop" and choice.logprobs is None
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 26
    assert completion.usage.total_tokens == 26 + completion.usage.completion_tokens
    native = sent(emulator, "/api/generate")
    assert native["prompt"] == PROMPT and native["raw"] is True and native["think"] is False
    assert native["stream"] is False


def test_completion_prompt_as_a_one_element_list(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt=[PROMPT])
    assert completion.choices[0].text == ANSWER


def test_completion_stream(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, stream=True))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == ANSWER
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


def test_completion_stream_include_usage(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.prompt_tokens == 26
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ANSWER


def test_completion_stream_agrees_with_non_stream(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"


def test_completion_suffix_is_fill_in_the_middle(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    completion = client.completions.create(
        model=CODER, prompt="def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))"
    )
    assert completion.choices[0].text == "return a + b"
    native = sent(emulator, "/api/generate")
    # FIM needs the model's template, so raw mode is off for this request.
    assert native["suffix"] == "\n\nprint(add(1, 2))" and native["raw"] is False


def test_completion_suffix_on_a_model_without_insert_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not support insert"):
        client.completions.create(model=MODEL, prompt="a", suffix="b")


def test_completion_stop_and_sampling_reach_ollama(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        stop=["\n", "THE END"],
        temperature=0.2,
        seed=7,
        max_tokens=50,
        logprobs=2,
        user="someone",
        extra_body={"num_ctx": 4096, "keep_alive": "1m"},
    )
    native = sent(emulator, "/api/generate")
    assert native["options"] == {
        "num_ctx": 4096,
        "num_predict": 50,
        "temperature": 0.2,
        "seed": 7,
        "stop": ["\n", "THE END"],
    }
    assert native["logprobs"] is True and native["top_logprobs"] == 2
    assert native["keep_alive"] == "1m"


def test_completion_raw_opt_out(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    client.completions.create(model=MODEL, prompt=PROMPT, extra_body={"raw": False})
    assert sent(emulator, "/api/generate")["raw"] is False


def test_completion_max_tokens_gives_length(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 2


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"echo": True}, "echo"),
        ({"best_of": 2}, "best_of"),
        ({"n": 2}, "n"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2], [3, 4]]}, "prompt"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"logprobs": 6}, "logprobs"),
    ],
)
def test_completion_unsupported_parameters_are_bad_request_errors(
    client: openai.OpenAI, kwargs: dict[str, Any], param: str
) -> None:
    args: dict[str, Any] = {"model": MODEL, "prompt": PROMPT, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**args)
    assert info.value.status_code == 400 and info.value.param == param


def test_completion_echo_message_says_why(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="prompt's tokens"):
        client.completions.create(model=MODEL, prompt=PROMPT, echo=True)


def test_completion_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nope:1b", prompt=PROMPT)
    assert info.value.code == "model_not_found"


def test_completion_embedding_model_cannot_generate(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not support generate"):
        client.completions.create(model=EMBEDDER, prompt=PROMPT)


def test_completion_mid_stream_error_reaches_the_client(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    emulator.update_reply(MODEL, error_after_chunks=2, error_message="runner crashed")
    stream = client.completions.create(model=MODEL, prompt=PROMPT, stream=True)
    with pytest.raises(openai.APIError, match="runner crashed"):
        list(stream)


def test_completion_backend_dying_mid_stream(
    client: openai.OpenAI, emulator: OllamaEmulator, gateway: RunningGateway
) -> None:
    emulator.update_reply(MODEL, die_after_chunks=2)
    before = len(gateway.ledger.records)
    stream = client.completions.create(model=MODEL, prompt=PROMPT, stream=True)
    with pytest.raises(openai.APIError):
        list(stream)
    wait_for(lambda: len(gateway.ledger.records) > before)
    record = gateway.ledger.records[-1]
    assert record.outcome == "failed_mid_stream" and record.route == "completions"


def test_completion_usage_is_recorded(client: openai.OpenAI, gateway: RunningGateway) -> None:
    before = len(gateway.ledger.records)
    client.completions.create(model=MODEL, prompt=PROMPT)
    wait_for(lambda: len(gateway.ledger.records) > before)
    record = gateway.ledger.records[-1]
    assert (record.route, record.prompt_tokens, record.outcome) == ("completions", 26, "ok")


def test_async_completions(gateway: RunningGateway) -> None:
    async def go() -> None:
        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key="x", max_retries=0
        ) as c:
            whole = await c.completions.create(model=MODEL, prompt=PROMPT)
            assert whole.choices[0].text == ANSWER
            stream = await c.completions.create(
                model=MODEL, prompt=PROMPT, stream=True, stream_options={"include_usage": True}
            )
            texts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
            assert "".join(texts) == ANSWER
            with pytest.raises(openai.BadRequestError):
                await c.completions.create(model=MODEL, prompt=PROMPT, best_of=3)

    asyncio.run(go())


# -- embeddings ------------------------------------------------------------------------------------


def test_embedding_one_input_as_floats(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    result = client.embeddings.create(model=EMBEDDER, input="hello", encoding_format="float")
    assert result.object == "list" and result.model == EMBEDDER
    [item] = result.data
    assert item.object == "embedding" and item.index == 0
    assert item.embedding == embedding_for("hello", 768)
    assert result.usage.prompt_tokens == result.usage.total_tokens == 1
    assert sent(emulator, "/api/embed") == {"model": f"{EMBEDDER}:latest", "input": ["hello"]}


def test_embedding_several_inputs_keep_their_order(client: openai.OpenAI) -> None:
    texts = ["first text", "second", "third one here"]
    result = client.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    assert [d.index for d in result.data] == [0, 1, 2]
    for text, item in zip(texts, result.data, strict=True):
        assert item.embedding == embedding_for(text, 768)
    assert result.usage.prompt_tokens == 6


def test_embedding_base64_decodes_to_float32(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=EMBEDDER, input=["a", "b"], encoding_format="base64")
    for text, item in zip(["a", "b"], result.data, strict=True):
        # The SDK leaves an explicitly requested base64 string alone.
        assert isinstance(item.embedding, str)
        raw = base64.b64decode(item.embedding)
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == float32(embedding_for(text, 768))


def test_embedding_sdk_default_is_base64_and_decodes(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    # No encoding_format: the SDK asks for base64 itself and decodes it.
    result = client.embeddings.create(model=EMBEDDER, input=["x", "y"])
    assert emulator.last_request("/api/embed").json["input"] == ["x", "y"]
    for text, item in zip(["x", "y"], result.data, strict=True):
        assert isinstance(item.embedding, list) and len(item.embedding) == 768
        assert item.embedding == float32(embedding_for(text, 768))


def test_embedding_dimensions(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    result = client.embeddings.create(model=EMBEDDER, input="hello", dimensions=64)
    assert len(result.data[0].embedding) == 64
    assert result.data[0].embedding == float32(embedding_for("hello", 768, 64))
    assert sent(emulator, "/api/embed")["dimensions"] == 64


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"input": [1, 2, 3]}, "input"),
        ({"input": [[1, 2], [3]]}, "input"),
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"dimensions": 0}, "dimensions"),
        ({"extra_body": {"encoding_format": "int8"}}, "encoding_format"),
    ],
)
def test_embedding_bad_requests(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    args: dict[str, Any] = {"model": EMBEDDER, "input": "x", **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(**args)
    assert info.value.param == param


def test_embedding_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-embedder", input="x")


def test_embedding_backend_error_is_typed(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    emulator.update_reply(EMBEDDER, error_status=500, error_message="embedder crashed")
    with pytest.raises(openai.InternalServerError, match="embedder crashed"):
        client.embeddings.create(model=EMBEDDER, input="x")


def test_embedding_usage_is_recorded(client: openai.OpenAI, gateway: RunningGateway) -> None:
    before = len(gateway.ledger.records)
    client.embeddings.create(model=EMBEDDER, input=["one two", "three"])
    wait_for(lambda: len(gateway.ledger.records) > before)
    record = gateway.ledger.records[-1]
    assert (record.route, record.prompt_tokens, record.completion_tokens) == ("embeddings", 3, 0)


def test_async_embeddings(gateway: RunningGateway) -> None:
    async def go() -> None:
        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key="x", max_retries=0
        ) as c:
            default = await c.embeddings.create(model=EMBEDDER, input=["p", "q"])
            floats = await c.embeddings.create(
                model=EMBEDDER, input=["p", "q"], encoding_format="float"
            )
            for a, b in zip(default.data, floats.data, strict=True):
                assert a.embedding == float32(b.embedding)
            with pytest.raises(openai.BadRequestError):
                await c.embeddings.create(model=EMBEDDER, input=[[1, 2]])

    asyncio.run(go())
