"""The one stream base (flows/stream.py): its STREAMING/DONE/FAILED machine,
whatever the decoder, per-record translator and encoder."""

from __future__ import annotations

from typing import Any

from sansio_gateway.accounting.usage import TokenUsage
from sansio_gateway.errors import GatewayError, UpstreamError
from sansio_gateway.flows.stream import TranslatedStream
from sansio_gateway.framing import NDJSONDecoder, encode_ndjson


class Echo:
    """Each line passes; ``{"end": true}`` ends the stream, ``{"bad": ...}`` fails it."""

    def __init__(self) -> None:
        self.done = False
        self.failed = False
        self.usage: TokenUsage | None = None
        self.finished = 0

    def feed(self, record: Any) -> list[Any]:
        if "bad" in record:
            return self.fail(UpstreamError(record["bad"]))
        if record.get("end"):
            self.done = True
            self.usage = TokenUsage(prompt_tokens=1, completion_tokens=2)
        return [record]

    def finish(self) -> list[Any]:
        self.finished += 1
        return self.fail(UpstreamError("cut short"))

    def fail(self, error: GatewayError) -> list[Any]:
        self.failed = True
        return [{"error": error.message}]


def stream(records: Echo, *, count_error: bool = True) -> TranslatedStream[Any]:
    return TranslatedStream(
        decoder=NDJSONDecoder(),
        records=records,
        encode=encode_ndjson,
        headers=((b"content-type", b"application/x-ndjson"),),
        prompt_bytes=40,
        trailer=b"END\n",
        count_error=count_error,
    )


def test_done_sends_the_trailer_once_and_then_nothing() -> None:
    records = Echo()
    s = stream(records)
    out = s.feed(b'{"a": 1}\n{"end": true}\n{"after": 1}\n')
    assert out == b'{"a":1}\n{"end":true}\nEND\n'
    assert s.done and not s.failed
    assert s.feed(b'{"more": 1}\n') == s.finish() == s.fail(UpstreamError("x")) == b""
    assert records.finished == 0
    assert s.usage == TokenUsage(prompt_tokens=1, completion_tokens=2)


def test_an_error_record_fails_the_stream_without_the_trailer() -> None:
    s = stream(Echo())
    assert s.feed(b'{"a": 1}\n{"bad": "boom"}\n{"a": 2}\n') == b'{"a":1}\n{"error":"boom"}\n'
    assert s.done and s.failed
    assert s.finish() == b""


def test_eof_before_the_end_is_the_translators_error() -> None:
    records = Echo()
    s = stream(records)
    assert s.feed(b'{"a": 1}\n') == b'{"a":1}\n'
    assert s.finish() == b'{"error":"cut short"}\n'
    assert s.failed and records.finished == 1


def test_a_torn_last_record_at_eof_is_a_framing_error() -> None:
    records = Echo()
    s = stream(records)
    assert s.feed(b'{"a"') == b""
    assert s.finish().startswith(b'{"error":"malformed stream from backend: invalid JSON')
    assert s.failed and records.finished == 0


def test_eof_completes_a_last_unterminated_record() -> None:
    records = Echo()
    s = stream(records)
    assert s.feed(b'{"end": true}') == b""
    assert s.finish() == b'{"end":true}\nEND\n'
    assert s.done and not s.failed and records.finished == 0


def test_a_framing_error_fails_the_stream() -> None:
    s = stream(Echo())
    out = s.feed(b"not json\n")
    assert out.startswith(b'{"error":"malformed stream from backend')
    assert s.failed


def test_an_upstream_failure_is_one_error_payload() -> None:
    s = stream(Echo())
    assert s.fail(UpstreamError("reset")) == b'{"error":"reset"}\n'
    assert s.fail(UpstreamError("again")) == b""
    assert s.failed


def test_the_estimate_counts_payloads_sent() -> None:
    s = stream(Echo())
    s.feed(b'{"a": 1}\n{"a": 2}\n')
    assert s.estimate_usage() == TokenUsage(prompt_tokens=11, completion_tokens=2)


def test_the_error_payload_counts_unless_told_otherwise() -> None:
    for count_error, expected in ((True, 2), (False, 1)):
        s = stream(Echo(), count_error=count_error)
        s.feed(b'{"a": 1}\n{"bad": "boom"}\n')
        assert s.estimate_usage().completion_tokens == expected
        s = stream(Echo(), count_error=count_error)
        s.feed(b'{"a": 1}\n')
        s.fail(UpstreamError("reset"))
        assert s.estimate_usage().completion_tokens == expected
