"""ollama_chat_to_completion / usage_from_ollama: native body -> chat.completion."""

from __future__ import annotations

from typing import Any

import pytest

from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.errors import UpstreamError
from sansio_gateway.openai_over_ollama.chat_response import (
    finish_reason,
    ollama_chat_to_completion,
    tool_call_id,
    usage_from_ollama,
)
from sansio_gateway.wire.openai_chat import ForcedTool

NAMED = ForcedTool(name="get", names=("get", "put"))
REQUIRED = ForcedTool(name=None, names=("get", "put"))


def resp(message: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "llama3:8b",
        "created_at": "2026-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": "", **(message or {})},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 11,
        "eval_count": 7,
    }
    body.update(fields)
    return body


def complete(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return ollama_chat_to_completion(
        body, completion_id="chatcmpl-abc123", created=1700000000, model="gpt-alias", **kw
    )


def choice(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = complete(body, **kw)["choices"][0]
    return out


def native_call(name: str, arguments: Any, call_id: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"function": {"index": 0, "name": name, "arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    return call


def test_envelope() -> None:
    out = complete(resp({"content": "Hello"}))
    assert out == {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-alias",
        "system_fingerprint": "fp_sansio",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


def test_empty_content_is_an_empty_string() -> None:
    assert choice(resp())["message"]["content"] == ""


def test_missing_message_is_empty() -> None:
    body = resp()
    del body["message"]
    assert choice(body)["message"]["content"] == ""


def test_thinking_goes_to_the_reasoning_field() -> None:
    body = resp({"content": "4", "thinking": "2+2"})
    assert choice(body)["message"]["reasoning_content"] == "2+2"
    message = choice(body, reasoning_field="reasoning")["message"]
    assert message["reasoning"] == "2+2" and "reasoning_content" not in message


def test_empty_thinking_adds_no_key() -> None:
    assert "reasoning_content" not in choice(resp({"content": "x", "thinking": ""}))["message"]


def test_tool_calls_keep_native_ids_and_synthesize_stable_ones() -> None:
    body = resp(
        {
            "tool_calls": [
                native_call("get", {"city": "Paris", "n": [1, 2]}, "call_native"),
                native_call("put", {}),
                native_call("put", '{"raw": true}'),
                {"function": {"name": "bare"}},
            ]
        }
    )
    out = choice(body)
    assert out["message"]["content"] is None
    assert out["finish_reason"] == "tool_calls"
    assert out["message"]["tool_calls"] == [
        {
            "id": "call_native",
            "type": "function",
            "function": {"name": "get", "arguments": '{"city":"Paris","n":[1,2]}'},
        },
        {"id": "call_abc123_1", "type": "function", "function": {"name": "put", "arguments": "{}"}},
        {
            "id": "call_abc123_2",
            "type": "function",
            "function": {"name": "put", "arguments": '{"raw": true}'},
        },
        {
            "id": "call_abc123_3",
            "type": "function",
            "function": {"name": "bare", "arguments": "{}"},
        },
    ]


def test_content_next_to_tool_calls_is_kept() -> None:
    out = choice(resp({"content": "Let me check.", "tool_calls": [native_call("get", {})]}))
    assert out["message"]["content"] == "Let me check."


def test_tool_call_id_derivation() -> None:
    assert tool_call_id("chatcmpl-xyz", 3) == "call_xyz_3"
    assert tool_call_id("plain", 0) == "call_plain_0"


@pytest.mark.parametrize(
    ("done_reason", "calls", "expected"),
    [
        ("stop", False, "stop"),
        ("stop", True, "tool_calls"),
        ("", False, "stop"),
        ("", True, "tool_calls"),
        ("length", False, "length"),
        ("length", True, "length"),
        ("load", False, "load"),
        ("unload", False, "unload"),
    ],
)
def test_finish_reason_table(done_reason: str, calls: bool, expected: str) -> None:
    assert finish_reason(done_reason, calls) == expected
    tool_calls = [native_call("get", {})] if calls else []
    body = resp({"tool_calls": tool_calls}, done_reason=done_reason)
    assert choice(body)["finish_reason"] == expected


def test_missing_done_reason_is_stop() -> None:
    body = resp()
    del body["done_reason"]
    assert choice(body)["finish_reason"] == "stop"


def test_logprobs_are_openai_entries() -> None:
    logprobs = [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
        {"token": "!", "logprob": -2.0, "top_logprobs": [{"token": "!", "logprob": -2.0}]},
    ]
    assert choice(resp({"content": "Hi!"}, logprobs=logprobs))["logprobs"] == {
        "content": [
            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []},
            {
                "token": "!",
                "logprob": -2.0,
                "bytes": None,
                "top_logprobs": [{"token": "!", "logprob": -2.0, "bytes": None}],
            },
        ]
    }


def test_usage_from_ollama() -> None:
    assert usage_from_ollama(resp()) == TokenUsage(prompt_tokens=11, completion_tokens=7)
    assert usage_from_ollama({}) == TokenUsage()
    assert usage_from_ollama({"prompt_eval_count": "3", "eval_count": -1}) == TokenUsage()


def test_missing_counts_are_zero_in_usage() -> None:
    body = resp()
    del body["prompt_eval_count"], body["eval_count"]
    assert complete(body)["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
    }


# -- forced tool_choice ---------------------------------------------------------------


def test_named_forced_output_becomes_the_call() -> None:
    out = choice(resp({"content": ' {"city": "Paris"} '}), forced_tool=NAMED)
    assert out["message"]["content"] is None
    assert out["message"]["tool_calls"] == [
        {
            "id": "call_abc123_0",
            "type": "function",
            "function": {"name": "get", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert out["finish_reason"] == "tool_calls"


def test_required_forced_output_picks_name_and_arguments() -> None:
    content = '{"name": "put", "arguments": {"k": 1}}'
    out = choice(resp({"content": content}), forced_tool=REQUIRED)
    assert out["message"]["tool_calls"][0]["function"] == {"name": "put", "arguments": '{"k":1}'}


@pytest.mark.parametrize(
    ("forced", "content"),
    [
        (NAMED, '{"city": "Par'),
        (NAMED, "[1, 2]"),
        (REQUIRED, '{"name": "other", "arguments": {}}'),
        (REQUIRED, '{"name": "get", "arguments": "x"}'),
        (REQUIRED, "not json"),
    ],
)
def test_forced_output_that_is_not_the_call_stays_content(forced: ForcedTool, content: str) -> None:
    out = choice(resp({"content": content}, done_reason="length"), forced_tool=forced)
    assert out["message"]["content"] == content
    assert "tool_calls" not in out["message"]
    assert out["finish_reason"] == "length"


def test_forced_with_native_calls_keeps_them_first() -> None:
    body = resp({"content": '{"a": 1}', "tool_calls": [native_call("put", {}, "n1")]})
    calls = choice(body, forced_tool=NAMED)["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in calls] == [
        ("n1", "put"),
        ("call_abc123_1", "get"),
    ]


def test_forced_with_empty_content_is_plain() -> None:
    out = choice(resp({"content": ""}), forced_tool=NAMED)
    assert out["message"]["content"] == "" and out["finish_reason"] == "stop"


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"error": "model 'x' not found"}, "model 'x' not found"),
        ({"error": {"message": "nested"}}, "nested"),
        ({"error": 5}, "upstream error"),
        ({"message": "hi"}, "message is not an object"),
        ({"message": {"content": 5}}, "content is not a string"),
        ({"message": {"thinking": []}}, "thinking is not a string"),
        ({"message": {"tool_calls": {}}}, "tool_calls is not an array"),
        ({"message": {"tool_calls": [{}]}}, "without a function name"),
        ({"message": {"tool_calls": [{"function": {"name": 1}}]}}, "without a function name"),
        ({"message": {"tool_calls": [{"id": 3, "function": {"name": "f"}}]}}, "id is not"),
        ({"message": {}, "done": "yes"}, "bad done"),
        ({"message": {}, "done_reason": 1}, "bad done"),
        ({"message": {}, "logprobs": [1]}, "logprob entry"),
        ({"message": {}, "logprobs": [{"top_logprobs": [1]}]}, "top_logprobs entry"),
    ],
)
def test_errors_and_malformed_bodies_raise_upstream_error(body: dict[str, Any], text: str) -> None:
    with pytest.raises(UpstreamError) as info:
        complete(body)
    assert text in info.value.message
    assert info.value.type == "api_error"


def test_non_object_raises() -> None:
    with pytest.raises(UpstreamError):
        complete([])  # type: ignore[arg-type]


def test_unencodable_arguments_raise() -> None:
    body = resp({"tool_calls": [native_call("f", {"n": 2**70})]})
    with pytest.raises(UpstreamError):
        complete(body)
