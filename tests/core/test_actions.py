"""The per-chunk constructors of actions.py build the same frozen values."""

from __future__ import annotations

import dataclasses

import pytest

from sansio_gateway.actions import SendBody, UpstreamChunkReceived, chunk_received, send_body


@pytest.mark.parametrize(
    ("fast", "kind"), [(send_body, SendBody), (chunk_received, UpstreamChunkReceived)]
)
def test_the_fast_constructors_build_the_dataclass_value(fast: object, kind: type) -> None:
    value = fast(b"data: x\n\n")  # type: ignore[operator]
    assert type(value) is kind
    assert value == kind(data=b"data: x\n\n")
    assert hash(value) == hash(kind(data=b"data: x\n\n"))
    assert repr(value) == repr(kind(data=b"data: x\n\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.data = b""
