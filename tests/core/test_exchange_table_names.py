"""The table names its handlers (exchange_table.py cannot import the
Exchange): each name must be a method the Exchange has."""

from __future__ import annotations

import inspect

from sansio_gateway.exchange import Exchange
from sansio_gateway.exchange_table import ExchangeState, handler_names, row


def test_every_named_handler_is_an_exchange_method() -> None:
    names = handler_names()
    assert "_on_head" in names and "_stay" in names
    for name in names:
        assert inspect.isfunction(getattr(Exchange, name, None)), name


def test_row_gives_the_name_and_the_next_states() -> None:
    from sansio_gateway.actions import UpstreamClosed

    assert row(ExchangeState.STREAMING, UpstreamClosed) == (
        "_on_stream_closed",
        frozenset({ExchangeState.DONE}),
    )
    assert row(ExchangeState.IDLE, UpstreamClosed) is None
