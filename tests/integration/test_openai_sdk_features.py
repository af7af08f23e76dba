"""Every Chat Completions feature through the official openai SDK, against the
real gateway and the emulated Ollama (asyncio and trio, via conftest)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import openai
import pytest

from tests.emulators.ollama import OllamaEmulator, ScriptedReply
from tests.helpers import RunningGateway

MODEL = "llama3.2:1b"
ASK = [{"role": "user", "content": "What is the weather in Paris and in Rome?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]
PARALLEL = [
    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
    {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
]
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()


@pytest.fixture(scope="module")
def gateway(any_server: RunningGateway) -> RunningGateway:
    """This suite runs against the bundled server and the ASGI app alike."""
    return any_server


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture(autouse=True)
def reset(emulator: OllamaEmulator) -> Iterator[None]:
    yield
    emulator.set_reply(MODEL, ScriptedReply(capabilities=["completion", "tools"]))


def tool_reply(emulator: OllamaEmulator, ids: bool = True) -> None:
    emulator.set_reply(
        MODEL,
        ScriptedReply(
            content="", tool_calls=PARALLEL, tool_call_ids=ids, capabilities=["completion", "tools"]
        ),
    )


def test_parallel_tool_calls_non_stream(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    tool_reply(emulator, ids=False)  # an old Ollama without ids: stable ids are synthesized
    done = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)  # type: ignore[arg-type]
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]  # type: ignore[union-attr]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    sent = emulator.last_request("/api/chat").json
    assert sent["tools"][0]["function"]["parameters"]["additionalProperties"] is False


def test_streamed_parallel_tool_calls_reassemble_into_two_calls(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    tool_reply(emulator)
    with client.chat.completions.stream(model=MODEL, messages=ASK, tools=TOOLS) as stream:  # type: ignore[arg-type]
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert len(calls) == 2
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]  # type: ignore[union-attr]
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_results_go_back_with_their_names(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    ]
    client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)  # type: ignore[arg-type]
    sent = emulator.last_request("/api/chat").json["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert sent[2]["tool_name"] == "get_weather" and sent[2]["content"] == "18C and sunny"


def test_bad_tool_arguments_are_a_400_naming_the_message(client: openai.OpenAI) -> None:
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{oops"}}]},
    ]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)  # type: ignore[arg-type]
    assert info.value.param is not None and info.value.param.startswith("messages.[1]")


def test_tool_choice_none_drops_the_tools(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none")  # type: ignore[arg-type]
    assert "tools" not in emulator.last_request("/api/chat").json


def test_named_tool_choice_is_enforced(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    emulator.set_reply(
        MODEL, ScriptedReply(content='{"city": "Paris"}', capabilities=["completion", "tools"])
    )
    done = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    assert emulator.last_request("/api/chat").json["format"]["properties"]["city"] == {
        "type": "string"
    }
    [call] = done.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert done.choices[0].finish_reason == "tool_calls"


def test_images_as_data_urls_reach_ollama(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    content = [
        {"type": "text", "text": "What is in"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "this picture?"},
    ]
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])  # type: ignore[arg-type, misc]
    [message] = emulator.last_request("/api/chat").json["messages"]
    assert message["images"] == [PNG]
    assert message["content"] == "What is in\nthis picture?"


def test_remote_image_urls_are_a_clear_400(client: openai.OpenAI) -> None:
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}])  # type: ignore[arg-type, misc]
    assert "image" in info.value.message.lower()


def test_reasoning_comes_back_as_reasoning_content(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    done = client.chat.completions.create(
        model="qwen3:0.6b",
        messages=ASK,
        reasoning_effort="high",  # type: ignore[arg-type]
    )
    assert emulator.last_request("/api/chat").json["think"] == "high"
    message = done.choices[0].message
    assert message.content and getattr(message, "reasoning_content", None)
    stream = client.chat.completions.create(model="qwen3:0.6b", messages=ASK, stream=True)  # type: ignore[arg-type]
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in stream if c.choices
    )
    assert reasoning == message.reasoning_content  # type: ignore[attr-defined]


def test_json_mode_and_schema_become_format(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    client.chat.completions.create(
        model=MODEL, messages=ASK, response_format={"type": "json_object"}
    )  # type: ignore[arg-type]
    assert emulator.last_request("/api/chat").json["format"] == "json"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    client.chat.completions.create(
        model=MODEL, messages=ASK,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )  # fmt: skip
    assert emulator.last_request("/api/chat").json["format"] == schema


def test_ollama_options_through_extra_body(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    client.chat.completions.create(
        model=MODEL, messages=ASK, temperature=0.3, seed=7, stop=["END"],  # type: ignore[arg-type]
        extra_body={"options": {"num_ctx": 8192, "top_k": 20}, "keep_alive": "10m"},
    )  # fmt: skip
    sent = emulator.last_request("/api/chat").json
    assert sent["options"]["num_ctx"] == 8192 and sent["options"]["top_k"] == 20
    assert sent["options"]["temperature"] == 0.3 and sent["options"]["seed"] == 7
    assert sent["options"]["stop"] == ["END"] and sent["keep_alive"] == "10m"


def test_unset_sampling_params_are_never_injected(
    client: openai.OpenAI, emulator: OllamaEmulator
) -> None:
    client.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    options = emulator.last_request("/api/chat").json.get("options", {})
    assert "temperature" not in options and "top_p" not in options


def test_developer_role_becomes_system(client: openai.OpenAI, emulator: OllamaEmulator) -> None:
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "Be brief."}, *ASK],  # type: ignore[arg-type, list-item]
    )
    assert emulator.last_request("/api/chat").json["messages"][0]["role"] == "system"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 3}, "n"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"extra_body": {"definitely_not_a_param": 1}}, "definitely_not_a_param"),
    ],
)
def test_unsupported_params_are_400s_that_say_why(
    client: openai.OpenAI, extra: dict, param: str
) -> None:  # type: ignore[type-arg]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, **extra)  # type: ignore[arg-type]
    assert info.value.param == param


def test_user_is_accepted_for_accounting(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model=MODEL, messages=ASK, user="end-user-42")  # type: ignore[arg-type]
    assert done.choices[0].message.content
