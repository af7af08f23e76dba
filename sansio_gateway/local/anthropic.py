"""``POST /v1/messages/count_tokens``: answered from the gateway's estimate.

The gateway has no tokenizer for the backend's model, so the count is the
admission estimate of the prompt, an upper bound (docs/anthropic-compatibility.md,
"count_tokens").  Nothing reaches a backend and nothing is charged; a model
the caller could not send to is a 404, as on ``/v1/messages``.
"""

from __future__ import annotations

import orjson

from ..anthropic_over_chat.request import count_tokens_estimate
from ..flows.base import JSON_HEADERS, LocalAnswer
from ..http import Surface
from ..rendering import model_not_found
from ..wire.anthropic import parse_count_tokens_request
from .gateway import LocalFlow

__all__ = ["CountTokens"]


class CountTokens(LocalFlow):
    def answer(self) -> LocalAnswer:
        request = parse_count_tokens_request(self.request.body)
        if self.context.catalogue.resolve(request.model) is None or not self.visible(request.model):
            raise model_not_found(Surface.ANTHROPIC, request.model)
        body = orjson.dumps(count_tokens_estimate(request))
        return LocalAnswer(status=200, headers=JSON_HEADERS, body=body)
