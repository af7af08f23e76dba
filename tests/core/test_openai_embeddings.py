"""/v1/embeddings: request validation, the native /api/embed body, and the answer."""

from __future__ import annotations

import base64
import contextlib
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sansio_gateway.errors import InvalidRequest, UpstreamError
from sansio_gateway.openai_over_ollama.embeddings import (
    embeddings_request_to_ollama,
    ollama_embed_to_openai,
)
from sansio_gateway.wire.openai_embeddings import (
    MAX_INPUTS,
    EmbeddingsRequest,
    parse_embeddings_request,
)


def parse(**fields: Any) -> EmbeddingsRequest:
    return parse_embeddings_request(orjson.dumps({"model": "m", "input": "hello", **fields}))


def rejected(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(**fields)
    assert info.value.status_code == 400
    return info.value


def answer(resp: Any, count: int = 1, encoding_format: str = "float") -> dict[str, Any]:
    return ollama_embed_to_openai(
        resp, model="client-model", count=count, encoding_format=encoding_format
    )


def decode(text: str) -> list[float]:
    raw = base64.b64decode(text, validate=True)
    return [v for (v,) in struct.iter_unpack("<f", raw)]


def float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


# -- parsing ---------------------------------------------------------------------------------


def test_string_input_and_defaults() -> None:
    assert parse() == EmbeddingsRequest(model="m", inputs=("hello",))
    assert parse().encoding_format == "float"


def test_list_input_and_every_parameter() -> None:
    req = parse(
        input=["a", "b"],
        encoding_format="base64",
        dimensions=256,
        user="u",
        truncate=False,
        keep_alive="1m",
        options={"num_ctx": 512},
    )
    assert req.inputs == ("a", "b") and req.encoding_format == "base64"
    assert (req.dimensions, req.user, req.truncate, req.keep_alive) == (256, "u", False, "1m")
    assert req.options == {"num_ctx": 512}


def test_explicit_nulls_count_as_absent() -> None:
    keys = ("encoding_format", "dimensions", "user", "truncate", "keep_alive", "options")
    assert parse(**dict.fromkeys(keys)) == parse()


def test_the_largest_batch_is_accepted() -> None:
    assert len(parse(input=["x"] * MAX_INPUTS).inputs) == MAX_INPUTS


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"input": None}, "input", "Missing required parameter: 'input'."),
        ({"input": ""}, "input", "empty string"),
        ({"input": []}, "input", "empty array"),
        ({"input": ["a", ""]}, "input.[1]", "empty string"),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, "input", "array too long"),
        ({"input": [1, 2, 3]}, "input", "Token arrays"),
        ({"input": [[1, 2], [3]]}, "input", "Token arrays"),
        ({"input": ["a", 3]}, "input", "Token arrays"),
        ({"input": ["a", None]}, "input.[1]", "expected a string"),
        ({"input": 3}, "input", "expected a string or an array"),
        (
            {"encoding_format": "int8"},
            "encoding_format",
            "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
        ),
        ({"encoding_format": "FLOAT"}, "encoding_format", "Supported values"),
        ({"encoding_format": 1}, "encoding_format", "Supported values"),
        ({"dimensions": 0}, "dimensions", "below minimum"),
        ({"dimensions": "8"}, "dimensions", "expected an integer"),
        ({"dimensions": 2.0}, "dimensions", "expected an integer"),
        ({"user": 1}, "user", "expected a string"),
        ({"truncate": "no"}, "truncate", "expected a boolean"),
        ({"keep_alive": {}}, "keep_alive", "a string or a number"),
        ({"options": []}, "options", "expected an object"),
        ({"model": None}, "model", "you must provide a model parameter"),
        ({"prompt": "x"}, "prompt", "Unrecognized request argument supplied: prompt"),
    ],
)
def test_rejections_name_their_param(fields: dict[str, Any], param: str, words: str) -> None:
    err = rejected(**fields)
    assert err.param == param
    assert words in err.message


def test_missing_input_key() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_embeddings_request(b'{"model": "m"}')
    assert info.value.param == "input"


# -- the native body -------------------------------------------------------------------------


def test_native_body_minimal_is_always_a_list() -> None:
    assert embeddings_request_to_ollama(parse(), model="nomic:latest") == {
        "model": "nomic:latest",
        "input": ["hello"],
    }


def test_native_body_with_extensions() -> None:
    req = parse(
        input=["a", "b"],
        dimensions=8,
        truncate=True,
        keep_alive=0,
        options={"num_ctx": 1},
        encoding_format="base64",
        user="u",
    )
    assert embeddings_request_to_ollama(req, model="e") == {
        "model": "e",
        "input": ["a", "b"],
        "dimensions": 8,
        "truncate": True,
        "keep_alive": 0,
        "options": {"num_ctx": 1},
    }


# -- the answer --------------------------------------------------------------------------------

NATIVE = {
    "model": "e",
    "embeddings": [[0.1, -0.2, 0.3], [1, 0, 0]],
    "total_duration": 5,
    "prompt_eval_count": 4,
}


def test_float_answer() -> None:
    assert answer(NATIVE, count=2) == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, -0.2, 0.3]},
            {"object": "embedding", "index": 1, "embedding": [1, 0, 0]},
        ],
        "model": "client-model",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }


def test_base64_answer_matches_the_reference_example() -> None:
    # docs/wire-notes.md, "Embeddings in base64": [0.1, -0.2, 0.3] -> "zczMPc3MTL6amZk+".
    body = answer(NATIVE, count=2, encoding_format="base64")
    assert body["data"][0]["embedding"] == "zczMPc3MTL6amZk+"
    assert decode(body["data"][1]["embedding"]) == [1.0, 0.0, 0.0]


def test_missing_usage_is_zero() -> None:
    body = answer({"embeddings": [[0.5]], "prompt_eval_count": -1})
    assert body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}


@pytest.mark.parametrize(
    ("resp", "count", "words"),
    [
        ({"error": "model not loaded"}, 1, "model not loaded"),
        ({"error": 5}, 1, "upstream error"),
        ([[0.1]], 1, "not a JSON object"),
        ({}, 1, "expected 1 embeddings"),
        ({"embeddings": None}, 1, "expected 1 embeddings"),
        ({"embeddings": [[0.1]]}, 2, "expected 2 embeddings"),
        ({"embeddings": [[0.1], [0.2]]}, 1, "expected 1 embeddings"),
        ({"embeddings": ["0.1"]}, 1, "not an array of numbers"),
        ({"embeddings": [[0.1, "x"]]}, 1, "not an array of numbers"),
        ({"embeddings": [[True]]}, 1, "not an array of numbers"),
    ],
)
def test_error_and_malformed_answers(resp: Any, count: int, words: str) -> None:
    for encoding_format in ("float", "base64"):
        with pytest.raises(UpstreamError) as info:
            answer(resp, count, encoding_format)
        assert words in info.value.message and info.value.status_code == 502


def test_value_outside_float32_is_an_upstream_error_in_base64() -> None:
    with pytest.raises(UpstreamError, match="float32"):
        answer({"embeddings": [[1e39]]}, encoding_format="base64")
    assert answer({"embeddings": [[1e39]]})["data"][0]["embedding"] == [1e39]


# -- properties ----------------------------------------------------------------------------------

_vector = st.lists(st.floats(-1e30, 1e30, allow_nan=False) | st.integers(-1000, 1000), max_size=16)


@settings(max_examples=300, deadline=None)
@given(st.lists(_vector, min_size=1, max_size=5))
def test_base64_decodes_to_the_float32_rounded_vectors(vectors: list[list[float]]) -> None:
    resp = {"embeddings": vectors, "prompt_eval_count": 3}
    floats = answer(resp, len(vectors))
    packed = answer(resp, len(vectors), "base64")
    assert [d["index"] for d in packed["data"]] == list(range(len(vectors)))
    for vector, as_float, as_b64 in zip(vectors, floats["data"], packed["data"], strict=True):
        assert as_float["embedding"] == vector
        assert decode(as_b64["embedding"]) == [float32(v) for v in vector]
    assert floats["usage"] == packed["usage"]


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    _json | st.fixed_dictionaries({}, optional={"embeddings": _json, "error": _json}),
    st.integers(1, 3),
    st.sampled_from(["float", "base64"]),
)
def test_arbitrary_answers_give_a_list_or_an_upstream_error(
    resp: Any, count: int, encoding_format: str
) -> None:
    with contextlib.suppress(UpstreamError):
        body = answer(resp, count, encoding_format)
        assert len(body["data"]) == count
        orjson.dumps(body)


_near_request = st.fixed_dictionaries(
    {},
    optional={
        key: _json | st.sampled_from(["m", "base64", 3, [1], ["a"]])
        for key in ("model", "input", "encoding_format", "dimensions", "truncate")
    },
)


@settings(max_examples=300, deadline=None)
@given(_json | _near_request)
def test_arbitrary_json_bodies_parse_or_400(value: Any) -> None:
    with contextlib.suppress(InvalidRequest):
        embeddings_request_to_ollama(parse_embeddings_request(orjson.dumps(value)), model="x")
