"""The access log's batched handler (adapters/metrics.py): every line
arrives, in order, in far fewer writes than lines, and nothing is lost at
close."""

from __future__ import annotations

import io
import logging

import orjson
from sansio_gateway.adapters import metrics
from sansio_gateway.adapters.metrics import BatchedStreamHandler, log_request

from sansio_gateway.accounting.report import RequestSummary
from tests.helpers import wait_for


class _Stream(io.StringIO):
    """A buffered stream, as stdout on a pipe or a file: what is written
    shows (``getvalue``) only once flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.pending: list[str] = []

    def write(self, text: str) -> int:
        self.pending.append(text)
        return len(text)

    def flush(self) -> None:
        self.flushes += 1
        super().write("".join(self.pending))
        self.pending.clear()


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.access.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def test_lines_leave_in_batches_and_all_arrive() -> None:
    stream = _Stream()
    handler = BatchedStreamHandler(stream, interval=0.05)
    logger = _logger(handler)
    for i in range(200):
        logger.info("line %d", i)
    wait_for(lambda: stream.getvalue().count("\n") == 200)
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(200)]
    assert 1 <= stream.flushes < 20
    logger.info("later")  # a quiet spell, then one line: it still arrives
    wait_for(lambda: stream.getvalue().endswith("later\n"))
    handler.close()


def test_close_writes_what_is_pending() -> None:
    stream = _Stream()
    handler = BatchedStreamHandler(stream, interval=3600)  # the flusher never gets to it
    logger = _logger(handler)
    logger.info("last words")
    assert stream.flushes == 0
    handler.close()
    assert stream.flushes == 1 and stream.getvalue() == "last words\n"


def test_a_full_batch_leaves_without_waiting() -> None:
    stream = _Stream()
    handler = BatchedStreamHandler(stream, interval=3600, max_pending=8)
    logger = _logger(handler)
    for i in range(8):
        logger.info("line %d", i)
    assert stream.flushes == 1 and stream.getvalue().count("\n") == 8
    handler.close()


def _summary(request_id: str) -> RequestSummary:
    return RequestSummary(
        request_id=request_id, key_id="k1", user="ann", surface="openai", route="chat",
        model="m", model_label="m", backend="ollama", resolved_model="m:latest", status=200,
        prompt_tokens=3, completion_tokens=5, latency=0.0123456, ttft=None, retries=0,
        client_disconnected=False,
    )  # fmt: skip


def test_the_direct_path_writes_the_line_logging_would() -> None:
    """``write_access_lines_to``: the serve command's handler takes the line
    without a LogRecord, byte for byte what the logger would have written;
    once another handler joins the logger, lines go through logging again."""
    direct, logged = _Stream(), _Stream()
    handler = BatchedStreamHandler(direct, interval=3600)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = metrics.access_log
    saved = (access.handlers[:], access.propagate, access.level)
    access.handlers[:] = [handler]
    access.propagate = False
    access.setLevel(logging.INFO)
    try:
        metrics.write_access_lines_to(None)
        log_request(_summary("via-logging"))
        metrics.write_access_lines_to(handler)
        log_request(_summary("direct"))
        handler.flush()
        first, second = direct.getvalue().splitlines()
        assert second == first.replace("via-logging", "direct")
        assert orjson.loads(second)["latency_ms"] == 12.346

        other = logging.StreamHandler(logged)
        access.addHandler(other)
        log_request(_summary("both"))
        handler.flush()
        other.flush()
        assert direct.getvalue().splitlines()[-1] == logged.getvalue().splitlines()[-1]
    finally:
        metrics.write_access_lines_to(None)
        access.handlers[:], access.propagate = saved[0], saved[1]
        access.setLevel(saved[2])
        handler.close()
