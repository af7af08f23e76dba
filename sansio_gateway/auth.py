"""API-key authentication and per-key model allow-lists.

Theory of operation: keys are configured by their sha256 (or by an env var
holding the key, hashed when the config is loaded), never stored in clear.
A presented key (``Authorization: Bearer <key>`` as the OpenAI SDKs send
it, or ``x-api-key``) is hashed and compared with every stored digest using
``hmac.compare_digest``.

With no keys configured the gateway is open: every request runs as the
anonymous identity.  The CLI refuses to listen on a non-loopback address in
that state unless the operator says ``--allow-anonymous``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from .config import AuthConfig
from .errors import GatewayError, Unauthorized
from .http import Headers, header_value
from .identity import ANONYMOUS, Identity

__all__ = [
    "ANONYMOUS",
    "Authenticator",
    "Forbidden",
    "Identity",
    "anonymous_bind_problem",
    "hash_key",
    "is_loopback",
]


class Forbidden(GatewayError):
    status_code = 403
    type = "invalid_request_error"
    code = "forbidden"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _presented_key(headers: Headers) -> str | None:
    value = header_value(headers, b"authorization")
    if value is not None:
        scheme, _, token = value.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    value = header_value(headers, b"x-api-key")
    return value.decode("latin-1").strip() or None if value is not None else None


class Authenticator:
    """Built once from the config."""

    def __init__(self, config: AuthConfig) -> None:
        self._entries: list[tuple[bytes, Identity]] = []
        for entry in config.keys:
            # parse_config turns key_env keys into sha256 ones.
            if entry.sha256 is None:
                continue
            digest = entry.sha256.lower()
            identity = Identity(
                key_id=entry.id, user=entry.user, models=entry.models, admin=entry.admin
            )
            self._entries.append((digest.encode("ascii"), identity))

    @property
    def open(self) -> bool:
        return not self._entries

    def authenticate(self, headers: Headers) -> Identity:
        """The caller's identity; raises ``Unauthorized`` (401)."""
        if self.open:
            return ANONYMOUS
        key = _presented_key(headers)
        if key is None:
            raise Unauthorized(
                "You didn't provide an API key. Provide it in the Authorization header"
                " (Authorization: Bearer YOUR_KEY) or in x-api-key."
            )
        digest = hash_key(key).encode("ascii")
        found: Identity | None = None
        # Every stored digest is compared, each in constant time, so the
        # time taken says nothing about which key (if any) matched.
        for stored, identity in self._entries:
            if hmac.compare_digest(stored, digest):
                found = identity
        if found is None:
            raise Unauthorized("Incorrect API key provided.")
        return found


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``; False for anything that
    other machines can reach, including the wildcard addresses."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: assume it is reachable from elsewhere


def anonymous_bind_problem(host: str, authenticator: Authenticator) -> str | None:
    """Why serving on ``host`` would be unsafe, or None: an open gateway
    (no keys) must not listen where other machines can reach it."""
    if authenticator.open and not is_loopback(host):
        return (
            f"refusing to listen on {host} with no API keys configured: anyone who can reach"
            " it could use every model. Add [[auth.keys]] (sansio-gateway new-key), bind to"
            " 127.0.0.1, or pass --allow-anonymous if that is really what you want."
        )
    return None
