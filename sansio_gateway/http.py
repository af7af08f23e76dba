"""HTTP-level values that cross the core/adapter boundary.

The adapter parses HTTP (h11, ASGI, ...) and hands the core an
:class:`IncomingRequest` with the whole body already read (under the
configured size limit).  Header names are lower-case bytes, as h11 gives
them, so lookups need no normalisation on the hot path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .identity import Identity

__all__ = ["Headers", "IncomingRequest", "Surface", "header_value"]

Headers = tuple[tuple[bytes, bytes], ...]


class Surface(enum.Enum):
    """Which API dialect a request speaks; decides how errors are rendered."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"  # /v1/messages*
    OLLAMA = "ollama"
    GATEWAY = "gateway"


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingRequest:
    method: str
    path: str
    query: str = ""
    headers: Headers = ()
    body: bytes = b""
    client: str | None = field(default=None)
    # Set by the Exchange once the caller is authenticated.  Flows read the
    # caller from their FlowContext (flows/context.py), not from here.
    identity: Identity | None = None


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of a (lower-case) header, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None
