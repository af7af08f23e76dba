"""Native request validation and native -> OpenAI request translation (no sockets)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.errors import InvalidRequest
from sansio_gateway.ollama_over_openai.requests import (
    chat_to_openai,
    embed_to_openai,
    generate_to_openai,
    image_data_url,
    sniff_image_mime,
)
from sansio_gateway.openai_over_ollama.chat_request import chat_request_to_ollama
from sansio_gateway.wire.ollama import (
    NativeChatRequest,
    is_zero_keep_alive,
    parse_chat_request,
    parse_embed_request,
    parse_embeddings_request,
    parse_generate_request,
    parse_model_request,
)
from sansio_gateway.wire.openai_chat import parse_chat_request as parse_openai_chat

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()
GIF = base64.b64encode(b"GIF89a" + b"\0" * 16).decode()
WEBP = base64.b64encode(b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 8).decode()
RIFF_NOT_WEBP = base64.b64encode(b"RIFF\x10\0\0\0WAVEfmt " + b"\0" * 8).decode()


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "llama3", **fields})


def chat(**fields: Any) -> NativeChatRequest:
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return parse_chat_request(body(**fields))


def to_openai(**fields: Any) -> dict[str, Any]:
    return chat_to_openai(chat(**fields), model="target", id_prefix="req1")[1]


def bad(parse: Any, raw: bytes) -> str:
    with pytest.raises(InvalidRequest) as info:
        parse(raw)
    assert info.value.status_code == 400
    return info.value.message


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing request body"),
        (b"  ", "missing request body"),
        (b"null", "model is required"),
        (b"{}", "model is required"),
        (b'{"model": ""}', "model is required"),
        (b"[1]", "json: cannot unmarshal array into Go value of type api.ChatRequest"),
        (
            b'{"model": "m", "stream": "yes"}',
            "json: cannot unmarshal string into Go struct field ChatRequest.stream of type bool",
        ),
        (
            b'{"model": 3}',
            "json: cannot unmarshal number into Go struct field ChatRequest.model of type string",
        ),
        (
            b'{"model": "m", "messages": {}}',
            "json: cannot unmarshal object into Go struct field ChatRequest.messages of type []api.Message",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": 1}]}',
            "json: cannot unmarshal number into Go struct field ChatRequest.messages.content of type string",
        ),
        (
            b'{"model": "m", "format": "xml"}',
            'invalid format: expected "json" or a valid JSON schema',
        ),
        (b'{"model": "m", "format": 3}', 'invalid format: expected "json" or a valid JSON schema'),
        (b'{"model": "m", "think": "ultra"}', 'invalid think value: "ultra"'),
        (
            b'{"model": "m", "think": 1}',
            "json: cannot unmarshal number into Go struct field ChatRequest.think of type api.ThinkValue",
        ),
        (b'{"model": "m", "top_logprobs": 21}', "top_logprobs must be between 0 and 20"),
        (b'{"model": "m", "keep_alive": []}', "json: cannot unmarshal array"),
        (b'{"model": "m", "options": {"temperature": "hot"}}', "invalid float value [hot]"),
        (b'{"model": "m", "options": {"num_predict": "ten"}}', "invalid int value [ten]"),
        (b'{"model": "m", "options": {"stop": [1]}}', "invalid option 'stop'"),
        (b'{"model": "m", "options": []}', "json: cannot unmarshal array"),
        (b'{"model": "m", "messages": [{"role": "wizard"}]}', 'invalid message role "wizard"'),
        (b'{"model": "m", "messages": [{"content": "x"}]}', 'invalid message role ""'),
        (
            b'{"model": "m", "messages": [{"role": "user", "images": ["not base64!"]}]}',
            "illegal base64 data at input byte 3",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "images": [3]}]}',
            "json: cannot unmarshal number",
        ),
        (
            b'{"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}',
            "invalid tool call: function name is required",
        ),
        (
            b'{"model": "m", "messages": [{"role": "assistant", "tool_calls": '
            b'[{"function": {"name": "f", "arguments": "{}"}}]}]}',
            "json: cannot unmarshal string into Go struct field "
            "ChatRequest.messages.tool_calls.function.arguments",
        ),
        (b'{"model": "m", "tools": [{"type": "function"}]}', "invalid tool"),
        (b"{not json", "invalid JSON in request body"),
    ],
)
def test_chat_validation_errors(raw: bytes, message: str) -> None:
    assert bad(parse_chat_request, raw).startswith(message)


def test_stream_defaults_to_true_and_unknown_fields_are_ignored() -> None:
    req = parse_chat_request(b'{"model": "m", "messages": [], "whatever": 1, "truncate": true}')
    assert req.stream is True and req.is_load
    assert parse_chat_request(b'{"model": "m", "stream": false}').stream is False
    assert parse_chat_request(b'{"model": "m", "stream": null}').stream is True


def test_roles_are_lower_cased_and_nulls_are_absent() -> None:
    req = chat(
        messages=[{"role": "USER", "content": None, "images": None, "thinking": None}],
        options=None,
        format="",
        think=None,
    )
    assert req.messages[0].role == "user" and req.messages[0].content == ""
    assert req.options == {} and req.format is None and req.think is None


def test_options_are_coerced_the_way_ollama_coerces_them() -> None:
    assert chat(top_logprobs=3.0).top_logprobs == 3
    req = chat(options={"num_predict": 12.0, "seed": 3.7, "stop": "END", "top_k": 40})
    assert req.options["num_predict"] == 12 and req.options["seed"] == 3
    assert req.options["stop"] == ["END"]


@pytest.mark.parametrize(
    ("value", "zero"),
    [
        *[(0, True), (0.0, True), ("0", True), ("0s", True), ("0m", True), (" 0h ", True)],
        *[(-1, False), ("5m", False), ("forever", False), (None, False), ("", False)],
    ],
)
def test_zero_keep_alive(value: Any, zero: bool) -> None:
    assert is_zero_keep_alive(value) is zero


def test_tool_call_in_history_is_parsed() -> None:
    call = {"function": {"name": "f", "arguments": None, "index": 0}}
    req = chat(messages=[{"role": "assistant", "tool_calls": [call, {**call, "id": "c1"}]}])
    first, second = req.messages[0].tool_calls
    assert (first.id, first.name, first.arguments) == (None, "f", {})
    assert second.id == "c1"


def test_generate_validation() -> None:
    req = parse_generate_request(body(prompt="p", template="T", context=[1, 2], raw=True))
    assert req.prompt == "p" and req.raw and not req.is_load
    assert parse_generate_request(body()).is_load
    assert not parse_generate_request(body(images=[PNG])).is_load
    assert bad(parse_generate_request, body(context=["x"])).startswith(
        "json: cannot unmarshal string into Go struct field GenerateRequest.context of type int"
    )
    assert bad(parse_generate_request, body(raw="yes")).endswith("of type bool")


@pytest.mark.parametrize(
    ("value", "inputs"),
    [("a", ("a",)), (["a", "b"], ("a", "b")), ("", ()), (None, ()), ([], ())],
)
def test_embed_inputs(value: Any, inputs: tuple[str, ...]) -> None:
    req = parse_embed_request(body(input=value, dimensions=4, truncate=False))
    assert req.inputs == inputs and req.dimensions == 4 and not req.legacy


def test_embed_invalid_input_and_legacy_embeddings() -> None:
    assert bad(parse_embed_request, body(input=[1])) == "invalid input type"
    assert bad(parse_embed_request, body(input={"a": 1})) == "invalid input type"
    assert parse_embeddings_request(body(prompt="x")).inputs == ("x",)
    legacy = parse_embeddings_request(body(prompt=""))
    assert legacy.inputs == () and legacy.legacy


def test_model_request_takes_model_or_legacy_name() -> None:
    assert parse_model_request(b'{"name": "x"}', "ShowRequest")[1] == "x"
    assert parse_model_request(b'{"model": "y", "name": "x"}', "ShowRequest")[1] == "y"
    assert bad(lambda raw: parse_model_request(raw, "ShowRequest"), b"{}") == "model is required"


# -- chat translation -----------------------------------------------------------------------


def test_minimal_chat_streams_with_usage_by_default() -> None:
    path, out = chat_to_openai(chat(), model="target", id_prefix="req1")
    assert path == "/chat/completions"
    assert out == {
        "model": "target",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert to_openai(stream=False)["stream"] is False
    assert "stream_options" not in to_openai(stream=False)


@pytest.mark.parametrize(
    ("image", "mime"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (WEBP, "image/webp"),
        (RIFF_NOT_WEBP, "image/jpeg"),
        (base64.b64encode(b"??").decode(), "image/jpeg"),
        ("a", "image/jpeg"),  # not even base64: the backend decides
    ],
)
def test_image_mime_is_sniffed_from_magic_bytes(image: str, mime: str) -> None:
    assert sniff_image_mime(image) == mime
    assert image_data_url(image) == f"data:{mime};base64,{image}"


def test_images_become_image_url_parts_after_the_text() -> None:
    out = to_openai(messages=[{"role": "user", "content": "what?", "images": [PNG, JPEG]}])
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]
    only = to_openai(messages=[{"role": "user", "images": [GIF]}])
    assert only["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{GIF}"}}
    ]


def test_images_on_other_roles_are_rejected() -> None:
    with pytest.raises(InvalidRequest, match="only supported on user messages"):
        to_openai(messages=[{"role": "system", "content": "s", "images": [PNG]}])


def test_tool_history_gets_ids_json_arguments_and_paired_results() -> None:
    messages = [
        {"role": "user", "content": "weather and time?"},
        {
            "role": "assistant",
            "content": "",
            "thinking": "two tools",
            "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Paris", "n": 1}}},
                {"function": {"name": "time", "arguments": {}}},
                {"id": "given", "function": {"name": "weather", "arguments": {"city": "Rome"}}},
            ],
        },
        {"role": "tool", "content": "12:00", "tool_name": "time"},  # by name
        {"role": "tool", "content": "sunny", "tool_call_id": "given"},  # by id
        {"role": "tool", "content": "rainy"},  # by order: the first unanswered
    ]
    out = to_openai(messages=messages)["messages"]
    assistant = out[1]
    assert assistant["content"] is None  # OpenAI's form for a calls-only turn
    assert "thinking" not in assistant and "reasoning_content" not in assistant
    assert [c["id"] for c in assistant["tool_calls"]] == ["call_req1_0", "call_req1_1", "given"]
    assert assistant["tool_calls"][0] == {
        "id": "call_req1_0",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city":"Paris","n":1}'},
    }
    assert [(m["role"], m["tool_call_id"]) for m in out[2:]] == [
        ("tool", "call_req1_1"),
        ("tool", "given"),
        ("tool", "call_req1_0"),
    ]


def test_unpaired_tool_results_keep_their_id_or_get_a_fresh_one() -> None:
    out = to_openai(
        messages=[
            {"role": "tool", "content": "a", "tool_call_id": "mine"},
            {"role": "tool", "content": "b", "tool_name": "nothing"},
        ]
    )["messages"]
    assert [m["tool_call_id"] for m in out] == ["mine", "call_req1_0"]


def test_synthesised_ids_are_deterministic() -> None:
    messages = [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]
    first = chat_to_openai(chat(messages=messages), model="t", id_prefix="abc")[1]
    second = chat_to_openai(chat(messages=messages), model="t", id_prefix="abc")[1]
    assert first == second
    assert first["messages"][0]["tool_calls"][0]["id"] == "call_abc_0"


def test_thinking_history_can_be_kept_under_a_named_field() -> None:
    req = chat(messages=[{"role": "assistant", "content": "x", "thinking": "hmm"}])
    out = chat_to_openai(req, model="t", id_prefix="r", thinking_field="reasoning_content")[1]
    assert out["messages"][0] == {"role": "assistant", "content": "x", "reasoning_content": "hmm"}


def test_options_mapping() -> None:
    options = {
        "num_predict": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["END", "STOP"],
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.3,
        "num_ctx": 8192,
        "mirostat": 2,
        "typical_p": 0.7,
        "num_gpu": 1,
    }
    out = to_openai(options=options)
    assert {
        k: v for k, v in out.items() if k not in ("model", "messages", "stream", "stream_options")
    } == {
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["END", "STOP"],
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "top_k": 40,
        "min_p": 0.05,
    }


def test_repeat_penalty_never_becomes_frequency_penalty() -> None:
    out = to_openai(options={"repeat_penalty": 1.5})
    assert "frequency_penalty" not in out and "repeat_penalty" not in out


@pytest.mark.parametrize("num_predict", [-1, -2, 0])
def test_unbounded_num_predict_sends_no_cap(num_predict: int) -> None:
    assert "max_tokens" not in to_openai(options={"num_predict": num_predict})


def test_format_mapping() -> None:
    assert to_openai(format="json")["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    assert to_openai(format=schema)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert "response_format" not in to_openai(format="")


@pytest.mark.parametrize(
    ("think", "effort"),
    [
        *[(False, "none"), (True, None), ("low", "low"), ("medium", "medium")],
        *[("high", "high"), ("max", "high"), (None, None)],
    ],
)
def test_think_mapping(think: Any, effort: str | None) -> None:
    assert to_openai(think=think).get("reasoning_effort") == effort


def test_logprobs_and_tools_pass_through() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "additionalProperties": False, "properties": {}},
        },
    }
    out = to_openai(logprobs=True, top_logprobs=3, tools=[tool, {"function": {"name": "g"}}])
    assert out["logprobs"] is True and out["top_logprobs"] == 3
    assert out["tools"] == [tool, {"type": "function", "function": {"name": "g"}}]
    assert "logprobs" not in to_openai(top_logprobs=3)


def test_keep_alive_and_truncate_are_not_sent() -> None:
    out = to_openai(keep_alive="5m", truncate=True, shift=False)
    assert not {"keep_alive", "truncate", "shift"} & set(out)


# -- generate and embed translation ---------------------------------------------------------


def test_generate_uses_chat_with_system_and_user() -> None:
    req = parse_generate_request(
        body(prompt="hello", system="be brief", images=[PNG], think="low", format="json")
    )
    path, out = generate_to_openai(req, model="t")
    assert path == "/chat/completions"
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello"},
                {"type": "image_url", "image_url": {"url": image_data_url(PNG)}},
            ],
        },
    ]
    assert out["reasoning_effort"] == "low" and out["response_format"] == {"type": "json_object"}
    assert out["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("fields", [{"raw": True}, {"suffix": "}"}])
def test_raw_or_suffix_uses_legacy_completions(fields: dict[str, Any]) -> None:
    req = parse_generate_request(
        body(prompt="def f(", system="ignored", stream=False, options={"num_predict": 9}, **fields)
    )
    path, out = generate_to_openai(req, model="t")
    assert path == "/completions"
    expected = {"model": "t", "prompt": "def f(", "stream": False, "max_tokens": 9}
    if "suffix" in fields:
        expected["suffix"] = "}"
    assert out == expected


def test_raw_with_images_is_rejected() -> None:
    req = parse_generate_request(body(prompt="x", raw=True, images=[PNG]))
    with pytest.raises(InvalidRequest, match="images cannot be combined"):
        generate_to_openai(req, model="t")


def test_embed_translation() -> None:
    path, out = embed_to_openai(parse_embed_request(body(input="a", dimensions=8)), model="t")
    assert path == "/embeddings"
    assert out == {"model": "t", "input": ["a"], "encoding_format": "float", "dimensions": 8}
    legacy = embed_to_openai(parse_embeddings_request(body(prompt="p")), model="t")[1]
    assert legacy == {"model": "t", "input": "p", "encoding_format": "float"}


# -- properties ----------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)  # no lone surrogates
_SCALARS = st.none() | st.booleans() | st.integers(-1000, 1000) | _TEXT
_ARGS = st.dictionaries(st.text("abcxyz_", min_size=1, max_size=5), _SCALARS, max_size=3)


@st.composite
def openai_requests(draw: st.DrawFn) -> dict[str, Any]:
    """OpenAI chat requests using only fields the native API can carry."""
    messages: list[dict[str, Any]] = []
    calls = 0
    if draw(st.booleans()):
        messages.append(
            {"role": draw(st.sampled_from(["system", "developer"])), "content": draw(_TEXT)}
        )
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(_TEXT)})
        names = draw(st.lists(st.sampled_from(["f", "g", "h"]), max_size=3))
        content = draw(st.none() | _TEXT) if names else draw(_TEXT)
        assistant: dict[str, Any] = {"role": "assistant", "content": content}
        ids = [f"call_{calls + k}" for k in range(len(names))]
        calls += len(names)
        if names:
            assistant["tool_calls"] = [
                {
                    "id": i,
                    "type": "function",
                    "function": {"name": n, "arguments": orjson.dumps(draw(_ARGS)).decode()},
                }
                for i, n in zip(ids, names, strict=True)
            ]
        messages.append(assistant)
        messages += [{"role": "tool", "tool_call_id": i, "content": draw(_TEXT)} for i in ids]
    request: dict[str, Any] = {
        "model": draw(st.sampled_from(["m", "llama3:8b"])),
        "messages": messages,
    }
    optional = {
        "stream": st.booleans(),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "seed": st.integers(-(2**31), 2**31),
        "stop": st.lists(_TEXT.filter(bool), min_size=1, max_size=4),
        "frequency_penalty": st.floats(-2, 2),
        "presence_penalty": st.floats(-2, 2),
        "max_tokens": st.integers(1, 10_000),
        "reasoning_effort": st.sampled_from(["none", "low", "medium", "high"]),
        "response_format": st.sampled_from(
            [
                {"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            ]
        ),
        "tools": st.just(
            [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        ),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            request[key] = draw(strategy)
    return request


def _calls(message: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [
        (c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
        for c in message.get("tool_calls") or ()
    ]


@settings(max_examples=200)
@given(openai_requests())
def test_round_trip_openai_to_ollama_to_openai_keeps_every_mapped_field(
    request: dict[str, Any],
) -> None:
    native = chat_request_to_ollama(
        parse_openai_chat(orjson.dumps(request)), model=request["model"]
    )
    back = chat_to_openai(
        parse_chat_request(orjson.dumps(native)), model=request["model"], id_prefix="r"
    )[1]
    for key in ("model", "temperature", "top_p", "seed", "stop", "frequency_penalty"):
        assert back.get(key) == request.get(key)
    for key in ("presence_penalty", "max_tokens", "reasoning_effort", "tools"):
        assert back.get(key) == request.get(key)
    assert back["stream"] is request.get("stream", False)
    fmt = request.get("response_format")
    if fmt is None:
        assert "response_format" not in back
    elif fmt["type"] == "json_object":
        assert back["response_format"] == fmt
    else:
        assert back["response_format"]["json_schema"]["schema"] == fmt["json_schema"]["schema"]
    assert len(back["messages"]) == len(request["messages"])
    for original, copy in zip(request["messages"], back["messages"], strict=True):
        role = "system" if original["role"] == "developer" else original["role"]
        assert copy["role"] == role
        # A calls-only turn: "" and null are one thing on the native wire.
        assert (copy["content"] or "") == (original["content"] or "")
        assert _calls(copy) == _calls(original)
        assert copy.get("tool_call_id") == original.get("tool_call_id")


_JSON = st.recursive(
    _SCALARS | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_FIELDS = st.sampled_from(
    [
        *["model", "messages", "stream", "format", "options", "think", "keep_alive", "tools"],
        *["images", "prompt", "suffix", "system", "raw", "input", "dimensions", "context"],
        *["role", "content", "tool_calls", "function", "arguments", "name", "top_logprobs"],
    ]
)
_OBJECTS = st.dictionaries(_FIELDS, _JSON, max_size=6)
_ROLES = st.sampled_from(["user", "assistant", "tool", "system", "USER", "x"])
_MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": _ROLES},
        optional={
            "content": _JSON,
            "images": st.lists(st.sampled_from([PNG, "!!", ""]), max_size=2),
            "tool_name": _JSON,
            "tool_call_id": _JSON,
            "tool_calls": st.lists(
                st.fixed_dictionaries(
                    {
                        "function": st.fixed_dictionaries(
                            {"name": _JSON}, optional={"arguments": _JSON}
                        )
                    },
                    optional={"id": _JSON},
                ),
                max_size=3,
            ),
        },
    ),
    max_size=5,
)
_BODIES = st.one_of(
    st.binary(max_size=64),
    _JSON.map(orjson.dumps),
    _OBJECTS.map(lambda d: orjson.dumps({"model": "m", **d})),
    st.tuples(_OBJECTS, _MESSAGES).map(
        lambda pair: orjson.dumps({**pair[0], "model": "m", "messages": pair[1]})
    ),
)


@settings(max_examples=300)
@given(_BODIES)
def test_garbage_gives_a_request_or_invalid_request(raw: bytes) -> None:
    for parse in (
        parse_chat_request,
        parse_generate_request,
        parse_embed_request,
        parse_embeddings_request,
    ):
        try:
            req = parse(raw)
        except InvalidRequest:
            continue
        try:
            if isinstance(req, NativeChatRequest):
                chat_to_openai(req, model="t", id_prefix="p")
            elif hasattr(req, "raw"):
                generate_to_openai(req, model="t")  # type: ignore[arg-type]
            elif req.inputs:
                embed_to_openai(req, model="t")
        except InvalidRequest:
            pass
