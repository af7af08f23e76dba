"""chat_request_to_ollama: OpenAI request -> native /api/chat body."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.errors import InvalidRequest
from sansio_gateway.openai_over_ollama.chat_request import chat_request_to_ollama
from sansio_gateway.wire.openai_chat import parse_chat_request

USER: dict[str, Any] = {"role": "user", "content": "hi"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
TOOL_A: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "a",
        "description": "A",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "integer", "minimum": 0, "default": 1}},
            "required": ["x"],
            "additionalProperties": False,
        },
    },
}
TOOL_B: dict[str, Any] = {"type": "function", "function": {"name": "b"}}


def native(default_max_tokens: int | None = None, **fields: Any) -> dict[str, Any]:
    body = {"model": "alias", "messages": [USER], **fields}
    req = parse_chat_request(orjson.dumps(body))
    return chat_request_to_ollama(req, model="llama3:8b", default_max_tokens=default_max_tokens)


def messages(*msgs: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = native(messages=list(msgs))["messages"]
    return out


def rejected(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        native(**fields)
    assert info.value.status_code == 400
    return info.value


def image(url: Any) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image_url", "image_url": url}]}


# -- the body ------------------------------------------------------------------------


def test_minimal_body() -> None:
    assert native() == {
        "model": "llama3:8b",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }


def test_stream_is_always_explicit() -> None:
    assert native(stream=True)["stream"] is True
    assert native(stream=False)["stream"] is False


def test_ignored_params_leave_no_trace() -> None:
    body = native(
        user="u",
        metadata={"a": "b"},
        store=True,
        service_tier="flex",
        parallel_tool_calls=False,
        stream_options={"include_usage": True},
        prediction={"type": "content", "content": "x"},
        logit_bias={},
        modalities=["text"],
        verbosity="high",
        prompt_cache_key="k",
        safety_identifier="s",
        n=1,
    )
    assert body == native()


# -- messages ----------------------------------------------------------------------


def test_developer_becomes_system() -> None:
    assert messages({"role": "developer", "content": "be terse"}, USER)[0] == {
        "role": "system",
        "content": "be terse",
    }


def test_text_parts_join_in_order_into_one_message() -> None:
    parts = [{"type": "text", "text": t} for t in ("one", "two", "three")]
    out = messages({"role": "system", "content": parts}, {"role": "user", "content": parts})
    assert out == [
        {"role": "system", "content": "one\ntwo\nthree"},
        {"role": "user", "content": "one\ntwo\nthree"},
    ]


def test_text_and_images_stay_in_one_user_message() -> None:
    content = [
        {"type": "text", "text": "look"},
        {
            "type": "image_url",
            "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"},
        },
        {"type": "text", "text": "and this"},
        {"type": "image_url", "image_url": f"data:image/jpeg;base64,{PNG}"},
    ]
    assert messages({"role": "user", "content": content}) == [
        {"role": "user", "content": "look\nand this", "images": [PNG, PNG]}
    ]


@pytest.mark.parametrize(
    "mime", ["image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "IMAGE/PNG"]
)
def test_image_mime_types(mime: str) -> None:
    out = messages(image({"url": f"data:{mime};base64,{PNG}"}))
    assert out[0]["images"] == [PNG]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/svg+xml;base64," + PNG,
        "data:;base64," + PNG,
        "data:image/png," + PNG,
        "data:image/png;base64",
        PNG,
        "ftp://example.com/a.png",
    ],
)
def test_unsupported_image_urls(url: str) -> None:
    err = rejected(messages=[USER, image({"url": url})])
    assert err.param == "messages.[1].content.[0].image_url"
    assert "base64 data URL" in err.message


@pytest.mark.parametrize("payload", ["not base64!", "AAA", ""])
def test_bad_base64_names_the_message(payload: str) -> None:
    err = rejected(messages=[USER, USER, image(f"data:image/png;base64,{payload}")])
    assert err.param == "messages.[2].content.[0].image_url"
    assert "not valid base64" in err.message


@pytest.mark.parametrize("url", ["http://x/a.png", "https://x/a.png", "HTTPS://X/A.PNG"])
def test_remote_image_urls_are_never_forwarded(url: str) -> None:
    err = rejected(messages=[image({"url": url})])
    assert err.param == "messages.[0].content.[0].image_url"
    assert "Image URLs are not supported" in err.message


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}},
        {"type": "file", "file": {"file_id": "f"}},
    ],
)
def test_audio_and_file_parts_rejected(part: dict[str, Any]) -> None:
    err = rejected(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, part]}])
    assert err.param == "messages.[0].content.[1].type"


def _call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_assistant_tool_calls_become_objects_with_ids() -> None:
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [_call("c1", "a", '{"x": 1, "y": [2]}'), _call("c2", "b", "")],
    }
    assert messages(USER, assistant)[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "function": {"name": "a", "arguments": {"x": 1, "y": [2]}}},
            {"id": "c2", "function": {"name": "b", "arguments": {}}},
        ],
    }


@pytest.mark.parametrize("arguments", ["{", "[1]", "3", "null"])
def test_unparseable_tool_arguments_name_the_call(arguments: str) -> None:
    assistant = {
        "role": "assistant",
        "content": "x",
        "tool_calls": [_call("c0", "a", "{}"), _call("c1", "a", arguments)],
    }
    err = rejected(messages=[USER, USER, assistant])
    assert err.param == "messages.[2].tool_calls.[1].function.arguments"


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_assistant_reasoning_becomes_thinking(key: str) -> None:
    out = messages(
        USER, {"role": "assistant", "content": [{"type": "text", "text": "a"}], key: "r"}
    )
    assert out[1] == {"role": "assistant", "content": "a", "thinking": "r"}


def test_assistant_refusal_part_is_text() -> None:
    out = messages({"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]})
    assert out[0] == {"role": "assistant", "content": "no"}


def test_tool_result_name_from_message_or_nearest_call() -> None:
    out = messages(
        USER,
        {"role": "assistant", "content": None, "tool_calls": [_call("c1", "old", "{}")]},
        {"role": "assistant", "content": None, "tool_calls": [_call("c1", "new", "{}")]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r1"}]},
        {"role": "tool", "tool_call_id": "c1", "name": "given", "content": "r2"},
        {"role": "tool", "tool_call_id": "zz", "content": "r3"},
        {"role": "assistant", "content": None, "tool_calls": [_call("zz", "later", "{}")]},
    )
    assert out[3] == {"role": "tool", "content": "r1", "tool_call_id": "c1", "tool_name": "new"}
    assert out[4]["tool_name"] == "given"
    assert out[5] == {"role": "tool", "content": "r3", "tool_call_id": "zz"}


# -- options ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_both_max_fields_become_num_predict(key: str) -> None:
    assert native(**{key: 42})["options"] == {"num_predict": 42}


def test_default_max_tokens_only_without_a_client_cap() -> None:
    assert native(default_max_tokens=100)["options"] == {"num_predict": 100}
    assert native(default_max_tokens=100, max_tokens=5)["options"] == {"num_predict": 5}


def test_sampling_params_only_when_present() -> None:
    assert "options" not in native()
    body = native(temperature=0, top_p=0.5, seed=3, frequency_penalty=0.1, presence_penalty=-1)
    assert body["options"] == {
        "temperature": 0,
        "top_p": 0.5,
        "seed": 3,
        "frequency_penalty": 0.1,
        "presence_penalty": -1,
    }


@pytest.mark.parametrize(("stop", "expected"), [("x", ["x"]), (["a", "b"], ["a", "b"])])
def test_stop_is_a_list(stop: Any, expected: list[str]) -> None:
    assert native(stop=stop)["options"] == {"stop": expected}


def test_options_extension_merges_and_mapped_params_win() -> None:
    body = native(
        options={"num_ctx": 8192, "temperature": 0.1, "mirostat": 2, "num_predict": 50},
        temperature=0.9,
        top_k=40,
        repeat_penalty=1.2,
        min_p=0.05,
        num_ctx=4096,
        keep_alive="30m",
    )
    assert body["options"] == {
        "num_ctx": 4096,
        "temperature": 0.9,
        "mirostat": 2,
        "top_k": 40,
        "repeat_penalty": 1.2,
        "min_p": 0.05,
        "num_predict": 50,
    }
    assert body["keep_alive"] == "30m"


def test_keep_alive_number() -> None:
    assert native(keep_alive=0)["keep_alive"] == 0


# -- format, tools, tool_choice ---------------------------------------------------------


def test_response_formats() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    spec = {"name": "x", "strict": True, "schema": schema}
    assert "format" not in native(response_format={"type": "text"})
    assert native(response_format={"type": "json_object"})["format"] == "json"
    assert native(response_format={"type": "json_schema", "json_schema": spec})["format"] == schema
    no_schema = {"type": "json_schema", "json_schema": {"name": "x"}}
    assert native(response_format=no_schema)["format"] == "json"


def test_tools_pass_through_whole() -> None:
    body = native(tools=[TOOL_A, TOOL_B])
    assert body["tools"] == [TOOL_A, TOOL_B]
    assert "format" not in body


def test_tool_choice_auto_keeps_tools_none_drops_them() -> None:
    assert native(tools=[TOOL_A], tool_choice="auto")["tools"] == [TOOL_A]
    assert "tools" not in native(tools=[TOOL_A], tool_choice="none")


def test_named_tool_choice_forces_its_arguments_schema() -> None:
    choice = {"type": "function", "function": {"name": "a"}}
    body = native(tools=[TOOL_A, TOOL_B], tool_choice=choice)
    assert body["format"] == TOOL_A["function"]["parameters"]
    assert body["tools"] == [TOOL_A, TOOL_B]


def test_named_tool_without_parameters_forces_an_empty_object() -> None:
    choice = {"type": "function", "function": {"name": "b"}}
    assert native(tools=[TOOL_A, TOOL_B], tool_choice=choice)["format"] == {
        "type": "object",
        "properties": {},
    }


def test_required_tool_choice_forces_a_name_arguments_pair() -> None:
    body = native(tools=[TOOL_A, TOOL_B], tool_choice="required")
    variants = body["format"]["anyOf"]
    assert [v["properties"]["name"] for v in variants] == [{"enum": ["a"]}, {"enum": ["b"]}]
    assert variants[0]["properties"]["arguments"] == TOOL_A["function"]["parameters"]
    assert variants[1]["properties"]["arguments"] == {"type": "object", "properties": {}}
    assert all(v["required"] == ["name", "arguments"] for v in variants)
    assert body["tools"] == [TOOL_A, TOOL_B]


def test_required_with_one_tool_is_the_named_schema() -> None:
    assert (
        native(tools=[TOOL_A], tool_choice="required")["format"] == TOOL_A["function"]["parameters"]
    )


def _tool_with_defs(name: str, item: dict[str, Any]) -> dict[str, Any]:
    params = {
        "type": "object",
        "properties": {"i": {"$ref": "#/$defs/Item"}},
        "$defs": {"Item": item},
    }
    return {"type": "function", "function": {"name": name, "parameters": params}}


def test_required_hoists_defs_to_the_root() -> None:
    item = {"type": "string"}
    tools = [_tool_with_defs("a", item), _tool_with_defs("b", item)]
    fmt = native(tools=tools, tool_choice="required")["format"]
    assert fmt["$defs"] == {"Item": item}
    assert all("$defs" not in v["properties"]["arguments"] for v in fmt["anyOf"])


def test_required_with_clashing_defs_is_rejected() -> None:
    tools = [_tool_with_defs("a", {"type": "string"}), _tool_with_defs("b", {"type": "integer"})]
    assert rejected(tools=tools, tool_choice="required").param == "tool_choice"


def test_allowed_tools_subset_is_offered_and_forced() -> None:
    refs = [{"type": "function", "function": {"name": "b"}}]
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": refs}}
    body = native(tools=[TOOL_A, TOOL_B], tool_choice=choice)
    assert body["tools"] == [TOOL_B]
    assert body["format"] == {"type": "object", "properties": {}}


def test_unknown_named_tool_is_rejected() -> None:
    choice = {"type": "function", "function": {"name": "c"}}
    assert rejected(tools=[TOOL_A], tool_choice=choice).param == "tool_choice"


@pytest.mark.parametrize("kind", ["json_object", "json_schema"])
def test_forcing_tool_choice_with_json_format_is_rejected(kind: str) -> None:
    fmt: dict[str, Any] = {"type": kind}
    if kind == "json_schema":
        fmt["json_schema"] = {"name": "x", "schema": {}}
    err = rejected(tools=[TOOL_A], tool_choice="required", response_format=fmt)
    assert err.param == "tool_choice"


def test_forcing_tool_choice_with_text_format_is_fine() -> None:
    body = native(tools=[TOOL_A], tool_choice="required", response_format={"type": "text"})
    assert body["format"] == TOOL_A["function"]["parameters"]


# -- think, logprobs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "think"),
    [
        ("none", False),
        ("minimal", "low"),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("max", "max"),
        ("xhigh", "max"),
        ("ultra", "max"),
    ],
)
def test_reasoning_effort_table(effort: str, think: bool | str) -> None:
    assert native(reasoning_effort=effort)["think"] == think
    assert native(reasoning={"effort": effort})["think"] == think


def test_no_effort_no_think() -> None:
    assert "think" not in native(reasoning_effort="")


def test_explicit_think_wins() -> None:
    assert native(reasoning_effort="high", think=False)["think"] is False


def test_logprobs() -> None:
    assert "logprobs" not in native(logprobs=False)
    body = native(logprobs=True, top_logprobs=5)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 5)
    assert "top_logprobs" not in native(logprobs=True)


# -- what Ollama cannot do --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
    ],
)
def test_backend_limits_are_400s(fields: dict[str, Any], param: str) -> None:
    assert rejected(**fields).param == param


def test_n_message_explains() -> None:
    assert "one choice" in rejected(n=3).message


# -- property: every mapped field lands exactly ---------------------------------------

_text = st.text(max_size=20)
_roles = st.sampled_from(["system", "developer", "user", "assistant"])
_message = st.builds(lambda role, text: {"role": role, "content": text}, _roles, _text)
_maybe_number = st.none() | st.floats(0, 2, allow_nan=False) | st.integers(0, 2)
_requests = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": st.lists(_message, min_size=1, max_size=6)},
    optional={
        "temperature": _maybe_number,
        "top_p": st.floats(0, 1, allow_nan=False),
        "frequency_penalty": st.floats(-2, 2, allow_nan=False),
        "presence_penalty": st.floats(-2, 2, allow_nan=False),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "max_tokens": st.integers(1, 2**31),
        "max_completion_tokens": st.integers(1, 2**31),
        "stop": _text | st.lists(_text, max_size=4),
        "stream": st.booleans(),
        "top_k": st.integers(0, 100),
        "num_ctx": st.integers(1, 2**20),
    },
)


@settings(max_examples=150, deadline=None)
@given(_requests)
def test_request_translation_keeps_every_mapped_field(body: dict[str, Any]) -> None:
    req = parse_chat_request(orjson.dumps(body))
    out = chat_request_to_ollama(req, model="backend")
    options = out.get("options", {})
    for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
        if body.get(key) is None:
            assert key not in options
        else:
            assert options[key] == body[key]
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    assert options.get("num_predict") == cap
    stop = body.get("stop")
    assert options.get("stop") == ([stop] if isinstance(stop, str) else stop)
    for key in ("top_k", "num_ctx"):
        assert options.get(key) == body.get(key)
    assert out["stream"] is body.get("stream", False)
    expected = [
        {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
        for m in body["messages"]
    ]
    assert out["messages"] == expected
