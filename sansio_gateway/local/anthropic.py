"""``POST /v1/messages/count_tokens`` from the gateway's estimate.

The route is model-addressed (routes.py): the model is resolved, refreshed
on a miss and checked against the key's allow-list as on ``/v1/messages``
(a 404 otherwise).  A backend of ``kind = "anthropic"`` counts with its own
tokenizer (passthrough/anthropic.py); every other kind gets this flow, which
answers from the admission estimate of the prompt, an upper bound rather
than the model's tokenizer count (docs/anthropic-compatibility.md,
"count_tokens").  Nothing reaches a backend and nothing is charged.
"""

from __future__ import annotations

import orjson

from ..anthropic_over_chat.request import count_tokens_estimate
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..flows.base import JSON_HEADERS, LocalAnswer, Plan
from ..flows.context import FlowContext
from ..over_chat.requests import CountTokensRequest

__all__ = ["CountTokensEstimate"]


class CountTokensEstimate:
    """The estimate, whatever the backend's kind."""

    def __init__(self, context: FlowContext, request: CountTokensRequest, model: str) -> None:
        self._request = request

    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        body = orjson.dumps(count_tokens_estimate(self._request.original))
        return LocalAnswer(status=200, headers=JSON_HEADERS, body=body)
