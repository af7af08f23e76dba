"""parse_chat_request: strict OpenAI validation with OpenAI-style params."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sansio_gateway.errors import InvalidRequest
from sansio_gateway.wire.openai_chat import ChatRequest, ForcedTool, parse_chat_request

USER = {"role": "user", "content": "hi"}
TOOL_A = {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}
TOOL_B = {"type": "function", "function": {"name": "b"}}


def parse(**fields: Any) -> ChatRequest:
    body = {"model": "m", "messages": [USER], **fields}
    return parse_chat_request(orjson.dumps(body))


def rejected(body: Any) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def rejected_with(**fields: Any) -> InvalidRequest:
    return rejected({"model": "m", "messages": [USER], **fields})


# -- the happy path ------------------------------------------------------------------


def test_minimal_request_has_openai_defaults() -> None:
    req = parse()
    assert req.model == "m"
    assert req.messages == (USER,)
    assert req.stream is False
    assert req.include_usage is False
    assert req.user is None
    assert req.max_output_tokens is None
    assert req.n == 1
    assert req.tools == ()
    assert req.forced_tool is None
    assert req.native_options == {}


def test_every_scalar_lands_on_the_request() -> None:
    req = parse(
        stream=True,
        stream_options={"include_usage": True},
        user="u-1",
        max_tokens=10,
        n=1,
        temperature=0.5,
        top_p=1,
        frequency_penalty=-2,
        presence_penalty=2.0,
        seed=7,
        stop="END",
        logprobs=True,
        top_logprobs=20,
        keep_alive="5m",
        think="high",
    )
    assert req.stream and req.include_usage
    assert req.user == "u-1"
    assert req.max_output_tokens == 10
    assert (req.temperature, req.top_p) == (0.5, 1)
    assert (req.frequency_penalty, req.presence_penalty) == (-2, 2.0)
    assert req.seed == 7
    assert req.stop == ("END",)
    assert req.logprobs and req.top_logprobs == 20
    assert req.keep_alive == "5m"
    assert req.think == "high"


def test_null_optional_params_count_as_absent() -> None:
    req = parse(temperature=None, tools=None, tool_choice=None, stop=None, stream=None)
    assert req.temperature is None and req.tools == () and req.stop is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 5}, 5),
        ({"max_completion_tokens": 6}, 6),
        ({"max_tokens": 5, "max_completion_tokens": 6}, 6),
        ({"options": {"num_predict": 7}}, 7),
        ({"max_tokens": 5, "options": {"num_predict": 7}}, 5),
    ],
)
def test_max_output_tokens_precedence(fields: dict[str, Any], expected: int) -> None:
    assert parse(**fields).max_output_tokens == expected


def test_stop_list_of_up_to_four() -> None:
    assert parse(stop=["a", "b", "c", "d"]).stop == ("a", "b", "c", "d")


def test_stream_options_without_include_usage() -> None:
    assert parse(stream=True, stream_options={"include_obfuscation": False}).include_usage is False


def test_extensions_merge_into_native_options() -> None:
    req = parse(options={"num_ctx": 8192, "top_k": 40, "num_predict": 9}, top_k=5, min_p=0.1)
    # num_predict is folded into max_output_tokens; the shorthand wins over options.top_k.
    assert req.native_options == {"num_ctx": 8192, "top_k": 5, "min_p": 0.1}
    assert req.max_output_tokens == 9


def test_all_shorthands() -> None:
    req = parse(top_k=0, min_p=1, num_ctx=2048, repeat_penalty=1.1)
    assert req.native_options == {"top_k": 0, "min_p": 1, "num_ctx": 2048, "repeat_penalty": 1.1}


@pytest.mark.parametrize("value", [True, False, "low", "medium", "high", "max"])
def test_think_extension_values(value: bool | str) -> None:
    assert parse(think=value).think == value


@pytest.mark.parametrize("value", ["10m", 300, -1, 0.5])
def test_keep_alive_string_or_number(value: str | float) -> None:
    assert parse(keep_alive=value).keep_alive == value


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"reasoning_effort": "high"}, "high"),
        ({"reasoning_effort": ""}, None),
        ({"reasoning": {"effort": "minimal"}}, "minimal"),
        ({"reasoning": {"summary": "auto"}}, None),
        ({"reasoning_effort": "low", "reasoning": {"effort": "low"}}, "low"),
        ({"reasoning_effort": "", "reasoning": {"effort": "xhigh"}}, "xhigh"),
    ],
)
def test_reasoning_effort_spellings(fields: dict[str, Any], expected: str | None) -> None:
    assert parse(**fields).reasoning_effort == expected


def test_ignored_params_are_accepted() -> None:
    parse(
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=True,
        prediction={"type": "content", "content": "x"},
        prompt_cache_key="k",
        safety_identifier="s",
        verbosity="low",
        logit_bias={},
        modalities=["text"],
    )


def test_backend_limited_params_pass_the_parser() -> None:
    # The Ollama translator rejects these; another backend might honour them.
    req = parse(n=2, logit_bias={"1": 2}, audio={"voice": "x"}, web_search_options={})
    assert req.n == 2 and req.logit_bias == {"1": 2}
    assert req.audio == {"voice": "x"} and req.web_search_options == {}


def test_messages_of_every_role() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "developer", "content": [{"type": "text", "text": "d"}]},
        {
            "role": "user",
            "name": "bob",
            "content": [
                {"type": "text", "text": "t"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                {"type": "image_url", "image_url": "data:image/png;base64,AA=="},
                {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}},
                {"type": "file", "file": {"file_id": "f"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "r",
            "refusal": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"},
    ]
    assert parse(messages=messages).messages == tuple(messages)


def test_response_formats() -> None:
    assert parse(response_format={"type": "text"}).response_format == {"type": "text"}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert parse(response_format=fmt).response_format == fmt


# -- tools and tool_choice ------------------------------------------------------------


def test_tool_choice_auto_and_absent_offer_all_tools() -> None:
    assert parse(tools=[TOOL_A, TOOL_B]).tools == (TOOL_A, TOOL_B)
    assert parse(tools=[TOOL_A], tool_choice="auto").forced_tool is None


def test_tool_choice_none_offers_nothing() -> None:
    req = parse(tools=[TOOL_A], tool_choice="none")
    assert req.tools == () and req.forced_tool is None


def test_tool_choice_none_without_tools_is_fine() -> None:
    assert parse(tool_choice="none").tools == ()


def test_tool_choice_required_forces_one_of_the_tools() -> None:
    req = parse(tools=[TOOL_A, TOOL_B], tool_choice="required")
    assert req.forced_tool == ForcedTool(name=None, names=("a", "b"))


def test_tool_choice_required_with_one_tool_is_named() -> None:
    req = parse(tools=[TOOL_A], tool_choice="required")
    assert req.forced_tool == ForcedTool(name="a", names=("a",))


def test_tool_choice_named_function() -> None:
    choice = {"type": "function", "function": {"name": "b"}}
    req = parse(tools=[TOOL_A, TOOL_B], tool_choice=choice)
    assert req.forced_tool == ForcedTool(name="b", names=("a", "b"))
    assert req.tools == (TOOL_A, TOOL_B)


def test_allowed_tools_auto_restricts_the_offer() -> None:
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "auto",
            "tools": [{"type": "function", "function": {"name": "b"}}],
        },
    }
    req = parse(tools=[TOOL_A, TOOL_B], tool_choice=choice)
    assert req.tools == (TOOL_B,) and req.forced_tool is None


def test_allowed_tools_required_forces_within_the_subset() -> None:
    refs = [{"type": "function", "function": {"name": n}} for n in ("a", "b")]
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": refs}}
    req = parse(tools=[TOOL_A, TOOL_B], tool_choice=choice)
    assert req.forced_tool == ForcedTool(name=None, names=("a", "b"))


# -- every 400 names its param ---------------------------------------------------


def test_malformed_json() -> None:
    err = rejected(b'{"model": ')
    assert err.param is None
    assert "could not parse the JSON body" in err.message


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"null"])
def test_body_must_be_an_object(body: bytes) -> None:
    assert rejected(body).param is None


@pytest.mark.parametrize("body", [{"messages": [USER]}, {"model": "", "messages": [USER]}])
def test_missing_model(body: dict[str, Any]) -> None:
    err = rejected(body)
    assert err.param == "model"
    assert err.message == "you must provide a model parameter"


def test_model_wrong_type() -> None:
    assert rejected({"model": 3, "messages": [USER]}).param == "model"


def test_missing_messages() -> None:
    err = rejected({"model": "m"})
    assert err.param == "messages"
    assert err.message == "Missing required parameter: 'messages'."


def test_empty_messages() -> None:
    err = rejected({"model": "m", "messages": []})
    assert err.param == "messages"
    assert "empty array" in err.message


def test_unknown_param() -> None:
    err = rejected_with(foo=1)
    assert err.param == "foo"
    assert err.message == "Unrecognized request argument supplied: foo"


@pytest.mark.parametrize("key", ["functions", "function_call"])
def test_deprecated_functions_rejected(key: str) -> None:
    value = [{"name": "f"}] if key == "functions" else "auto"
    err = rejected_with(**{key: value})
    assert err.param == key
    assert "use 'tools'" in err.message


BAD_PARAMS: list[tuple[dict[str, Any], str, str]] = [
    ({"temperature": 2.5}, "temperature", "Expected a value <= 2, but got 2.5"),
    ({"temperature": -0.1}, "temperature", "Expected a value >= 0"),
    ({"temperature": "hot"}, "temperature", "expected a decimal, but got a string"),
    ({"temperature": True}, "temperature", "expected a decimal, but got a boolean"),
    ({"top_p": 1.5}, "top_p", "<= 1"),
    ({"frequency_penalty": 3}, "frequency_penalty", "<= 2"),
    ({"presence_penalty": -3}, "presence_penalty", ">= -2"),
    ({"n": 0}, "n", "integer below minimum value"),
    ({"n": 1.5}, "n", "expected an integer, but got a decimal"),
    ({"max_tokens": 0}, "max_tokens", ">= 1"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", ">= 1"),
    ({"max_tokens": "10"}, "max_tokens", "expected an integer"),
    ({"seed": 1.5}, "seed", "expected an integer"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "maximum length 4"),
    ({"stop": 5}, "stop", "expected a string or an array"),
    ({"stop": ["a", 1]}, "stop.[1]", "expected a string"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "<= 20"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", ">= 0"),
    ({"top_logprobs": 2}, "top_logprobs", "'logprobs' must be set to true"),
    ({"logprobs": "yes"}, "logprobs", "expected a boolean"),
    ({"stream": "true"}, "stream", "expected a boolean"),
    ({"stream_options": []}, "stream_options", "expected an object"),
    ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage", "a boolean"),
    ({"user": 5}, "user", "expected a string"),
    ({"metadata": "x"}, "metadata", "expected an object"),
    ({"store": "no"}, "store", "expected a boolean"),
    ({"parallel_tool_calls": 1}, "parallel_tool_calls", "expected a boolean"),
    ({"verbosity": "loud"}, "verbosity", "Supported values are: 'low', 'medium', and 'high'"),
    ({"logit_bias": []}, "logit_bias", "expected an object"),
    ({"modalities": ["text", "video"]}, "modalities.[1]", "'video'"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort", "Invalid value: 'extreme'"),
    ({"reasoning": {"effort": "hard"}}, "reasoning.effort", "Invalid value: 'hard'"),
    ({"reasoning": "high"}, "reasoning", "expected an object"),
    (
        {"reasoning_effort": "low", "reasoning": {"effort": "high"}},
        "reasoning.effort",
        "conflicts",
    ),
    ({"think": "very"}, "think", "Supported values are: 'low', 'medium', 'high', and 'max'"),
    ({"think": 1}, "think", "expected a boolean or a string"),
    ({"keep_alive": True}, "keep_alive", "expected a string or a number"),
    ({"options": [1]}, "options", "expected an object"),
    ({"options": {"num_predict": -1}}, "options.num_predict", ">= 1"),
    ({"max_tokens": 5, "options": {"num_predict": -2}}, "options.num_predict", ">= 1"),
    ({"top_k": -1}, "top_k", ">= 0"),
    ({"min_p": 2}, "min_p", "<= 1"),
    ({"num_ctx": 0}, "num_ctx", ">= 1"),
    ({"repeat_penalty": "x"}, "repeat_penalty", "expected a decimal"),
    ({"response_format": "json"}, "response_format", "expected an object"),
    ({"response_format": {}}, "response_format.type", "Missing required parameter"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "Invalid value: 'xml'"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "Missing"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "response_format.json_schema.name",
        "Missing",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 1}}},
        "response_format.json_schema.schema",
        "expected an object",
    ),
]


@pytest.mark.parametrize(("fields", "param", "text"), BAD_PARAMS)
def test_bad_param_is_named(fields: dict[str, Any], param: str, text: str) -> None:
    err = rejected_with(**fields)
    assert err.param == param
    assert text in err.message


BAD_MESSAGES: list[tuple[Any, str, str]] = [
    ("hi", "messages", "expected an array"),
    (["hi"], "messages.[0]", "expected an object"),
    ([{"content": "x"}], "messages.[0].role", "Missing required parameter"),
    ([{"role": "robot", "content": "x"}], "messages.[0].role", "Invalid value: 'robot'"),
    ([USER, {"role": "function", "content": "x"}], "messages.[1].role", "deprecated"),
    ([{"role": "user"}], "messages.[0].content", "Missing required parameter"),
    ([{"role": "assistant", "content": None}], "messages.[0].content", "Missing"),
    ([{"role": "user", "content": 5}], "messages.[0].content", "a string or an array"),
    ([{"role": "user", "content": "x", "name": 1}], "messages.[0].name", "a string"),
    ([{"role": "user", "content": [5]}], "messages.[0].content.[0]", "expected an object"),
    ([{"role": "user", "content": [{}]}], "messages.[0].content.[0].type", "Missing"),
    (
        [{"role": "user", "content": [{"type": "video"}]}],
        "messages.[0].content.[0].type",
        "Invalid value: 'video'",
    ),
    (
        [{"role": "system", "content": [{"type": "image_url", "image_url": "x"}]}],
        "messages.[0].content.[0].type",
        "Supported values are: 'text'.",
    ),
    (
        [{"role": "user", "content": [{"type": "text", "text": 1}]}],
        "messages.[0].content.[0].text",
        "expected a string",
    ),
    (
        [{"role": "user", "content": [{"type": "text"}]}],
        "messages.[0].content.[0].text",
        "Missing",
    ),
    (
        [{"role": "user", "content": [{"type": "image_url"}]}],
        "messages.[0].content.[0].image_url",
        "Missing",
    ),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        "messages.[0].content.[0].image_url.url",
        "Missing",
    ),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": 3}]}],
        "messages.[0].content.[0].image_url",
        "expected an object",
    ),
    (
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": "x"}]}],
        "messages.[0].content.[0].input_audio",
        "expected an object",
    ),
    ([{"role": "tool", "content": "x"}], "messages.[0].tool_call_id", "Missing"),
    (
        [{"role": "tool", "content": "x", "tool_call_id": 1}],
        "messages.[0].tool_call_id",
        "a string",
    ),
    (
        [{"role": "assistant", "content": "x", "reasoning_content": 1}],
        "messages.[0].reasoning_content",
        "expected a string",
    ),
    (
        [{"role": "assistant", "tool_calls": {}}],
        "messages.[0].tool_calls",
        "expected an array",
    ),
    (
        [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}],
        "messages.[0].tool_calls.[0].id",
        "Missing",
    ),
    (
        [{"role": "assistant", "tool_calls": [{"id": "c"}]}],
        "messages.[0].tool_calls.[0].function",
        "Missing",
    ),
    (
        [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}],
        "messages.[0].tool_calls.[0].function.arguments",
        "Missing",
    ),
    (
        [
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}],
            }
        ],
        "messages.[0].tool_calls.[0].function.arguments",
        "expected a string",
    ),
]


@pytest.mark.parametrize(("messages", "param", "text"), BAD_MESSAGES)
def test_bad_message_is_named(messages: Any, param: str, text: str) -> None:
    err = rejected({"model": "m", "messages": messages})
    assert err.param == param
    assert text in err.message


BAD_TOOLS: list[tuple[dict[str, Any], str, str]] = [
    ({"tools": {}}, "tools", "expected an array"),
    ({"tools": [1]}, "tools.[0]", "expected an object"),
    ({"tools": [{"function": {"name": "a"}}]}, "tools.[0].type", "Missing"),
    ({"tools": [{"type": "custom", "custom": {}}]}, "tools.[0].type", "Invalid value"),
    ({"tools": [{"type": "function"}]}, "tools.[0].function", "Missing"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools.[0].function.name", "Missing"),
    (
        {"tools": [{"type": "function", "function": {"name": ""}}]},
        "tools.[0].function.name",
        "empty string",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "a", "parameters": []}}]},
        "tools.[0].function.parameters",
        "expected an object",
    ),
    (
        {"tools": [{"type": "function", "function": {"name": "a", "description": 1}}]},
        "tools.[0].function.description",
        "expected a string",
    ),
    ({"tools": [TOOL_A], "tool_choice": "always"}, "tool_choice", "Invalid value: 'always'"),
    ({"tools": [TOOL_A], "tool_choice": 1}, "tool_choice", "expected an object"),
    ({"tool_choice": "required"}, "tool_choice", "only allowed when 'tools' are specified"),
    (
        {"tools": [TOOL_A], "tool_choice": {"type": "function", "function": {"name": "zz"}}},
        "tool_choice",
        "no function named 'zz'",
    ),
    ({"tools": [TOOL_A], "tool_choice": {"type": "custom"}}, "tool_choice.type", "Invalid"),
    ({"tools": [TOOL_A], "tool_choice": {"type": "function"}}, "tool_choice.function", "Missing"),
    (
        {"tools": [TOOL_A], "tool_choice": {"type": "function", "function": {}}},
        "tool_choice.function.name",
        "Missing",
    ),
    (
        {"tools": [TOOL_A], "tool_choice": {"type": "allowed_tools"}},
        "tool_choice.allowed_tools",
        "Missing",
    ),
    (
        {"tools": [TOOL_A], "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}},
        "tool_choice.allowed_tools.mode",
        "Missing",
    ),
    (
        {
            "tools": [TOOL_A],
            "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}},
        },
        "tool_choice.allowed_tools.tools",
        "Missing",
    ),
    (
        {
            "tools": [TOOL_A],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "auto", "tools": [{"type": "function"}]},
            },
        },
        "tool_choice.allowed_tools.tools.[0].function",
        "Missing",
    ),
    (
        {
            "tools": [TOOL_A],
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "nope"}}],
                },
            },
        },
        "tool_choice",
        "no function named 'nope'",
    ),
]


@pytest.mark.parametrize(("fields", "param", "text"), BAD_TOOLS)
def test_bad_tools_are_named(fields: dict[str, Any], param: str, text: str) -> None:
    err = rejected_with(**fields)
    assert err.param == param
    assert text in err.message
