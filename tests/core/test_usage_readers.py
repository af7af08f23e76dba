"""One usage reader per dialect (accounting/usage.py), and what it reads.

Before, the OpenAI passthrough and the Ollama-over-OpenAI translators each
read OpenAI's ``usage`` object their own way, and disagreed: ``{}``, a
string count, a negative or a boolean one was "no report" to one and a
report of zero (or of a negative count, or of 1) to the other.  These
tests pin the one answer, and that every translator uses the one reader.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sansio_gateway.accounting.usage import TokenUsage, read_ollama_usage, read_openai_usage
from sansio_gateway.actions import UpstreamChunkReceived, UpstreamClosed, UpstreamResponseStarted
from sansio_gateway.gateway import Gateway
from sansio_gateway.ollama_over_openai import responses
from sansio_gateway.openai_over_ollama import chat_response

from ..helpers import ExchangeDriver, make_config


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            TokenUsage(prompt_tokens=9, completion_tokens=3),
        ),
        # Embeddings report no completion_tokens: 0, and still a report.
        ({"prompt_tokens": 3, "total_tokens": 3}, TokenUsage(prompt_tokens=3)),
        ({"prompt_tokens": 3, "completion_tokens": None}, TokenUsage(prompt_tokens=3)),
        ({"prompt_tokens": 0, "completion_tokens": 0}, TokenUsage()),
        # No report at all.
        (None, None),
        ("12", None),
        ([1, 2], None),
        # Where the two readers disagreed: each of these is no report now.
        ({}, None),  # was 0 + 0 to one of them
        ({"completion_tokens": 4}, None),  # was 0 + 4
        ({"prompt_tokens": "5", "completion_tokens": 1}, None),  # was 0 + 1
        ({"prompt_tokens": -5, "completion_tokens": 1}, None),  # was -5 + 1 to the other
        ({"prompt_tokens": True, "completion_tokens": 1}, None),  # was 1 + 1
        ({"prompt_tokens": 5, "completion_tokens": "2"}, None),  # was 5 + 0
        ({"prompt_tokens": 5, "completion_tokens": -2}, None),  # was 5 + 0 / 5 - 2
        ({"prompt_tokens": 5.0, "completion_tokens": 2}, None),
    ],
)
def test_what_the_openai_reader_reads(value: Any, expected: TokenUsage | None) -> None:
    assert read_openai_usage(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            {"prompt_eval_count": 11, "eval_count": 7},
            TokenUsage(prompt_tokens=11, completion_tokens=7),
        ),
        ({"eval_count": 7}, TokenUsage(completion_tokens=7)),  # a cached prompt: no count
        ({}, TokenUsage()),
        ({"prompt_eval_count": "3", "eval_count": -1}, TokenUsage()),
        ({"prompt_eval_count": True, "eval_count": 2.0}, TokenUsage()),
    ],
)
def test_what_the_ollama_reader_reads(value: dict[str, Any], expected: TokenUsage) -> None:
    assert read_ollama_usage(value) == expected


def test_the_translators_use_the_one_reader_of_their_dialect() -> None:
    assert responses.usage_from_openai is read_openai_usage
    assert chat_response.usage_from_ollama is read_ollama_usage


OPENAI_BACKEND = (
    '[[backends]]\nname = "o"\nkind = "openai"\nurl = "http://o.test/v1"\ndiscover = false\n'
)


def _answer(path: str, request: dict[str, Any], answer: dict[str, Any]) -> ExchangeDriver:
    d = ExchangeDriver(Gateway(make_config(OPENAI_BACKEND)))
    d.start("POST", path, request)
    d.handle(UpstreamResponseStarted(status=200, headers=()))
    d.handle(UpstreamChunkReceived(data=orjson.dumps(answer)))
    d.handle(UpstreamClosed())
    assert d.seen.status == 200
    return d


@pytest.mark.parametrize("usage", [{}, {"prompt_tokens": -5, "completion_tokens": 1}])
def test_both_directions_agree_that_a_malformed_usage_is_no_report(usage: Any) -> None:
    messages = [{"role": "user", "content": "hi"}]
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }
    passthrough = _answer("/v1/chat/completions", {"model": "m", "messages": messages}, completion)
    translated = _answer(
        "/api/chat", {"model": "m", "messages": messages, "stream": False}, completion
    )
    for d in (passthrough, translated):
        [record] = d.seen.usage
        assert not record.usage_reported
