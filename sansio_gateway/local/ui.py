"""``GET /ui`` and ``/ui/*``: the status page's static files.

Theory of operation: the page is three files shipped as package data in
``sansio_gateway/local/ui/`` (no build step, no CDN).  This module decides
everything about them -- which paths exist, their content types, and the
security headers every ``/ui`` answer carries -- and :class:`UiAsset` asks
the adapter only to read a file it names (``LoadAsset``), since reading
package data is I/O.  Unknown paths under ``/ui/`` get a 404 with the same
headers.

The headers (docs/status-page.md, "Security"): a CSP that allows scripts,
styles and fetches from this origin only, no inline code, no framing, no
forms; ``X-Frame-Options: DENY`` for browsers without ``frame-ancestors``;
``nosniff``; no referrer; and ``no-store``, so an admin's page never lands
in a shared cache.
"""

from __future__ import annotations

from ..actions import AssetLoaded, LoadAsset
from ..backends.catalogue import Route
from ..config import BackendConfig
from ..flows.base import AdapterAnswer, AdapterData, LocalAnswer, Plan
from ..http import Headers
from .gateway import LocalFlow

__all__ = [
    "ASSETS",
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "UiAsset",
]

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

SECURITY_HEADERS: Headers = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

# Request path -> (file in sansio_gateway/local/ui/, content type).
ASSETS: dict[str, tuple[str, bytes]] = {
    "/ui": ("index.html", b"text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", b"text/css; charset=utf-8"),
}


def _answer(status: int, content_type: bytes, body: bytes) -> LocalAnswer:
    return LocalAnswer(
        status=status, headers=((b"content-type", content_type), *SECURITY_HEADERS), body=body
    )


class UiAsset(LocalFlow):
    def plan(self, route: Route | None, backend: BackendConfig | None) -> Plan:
        asset = ASSETS.get(self.request.path)
        if asset is None:
            return _answer(404, b"text/plain; charset=utf-8", b"Not found\n")
        return AdapterAnswer(ask=LoadAsset(name=asset[0]), render=self._render)

    def _render(self, result: AdapterData) -> LocalAnswer:
        if not isinstance(result, AssetLoaded) or result.body is None:
            # The installed package lacks its own file: a broken install.
            return _answer(500, b"text/plain; charset=utf-8", b"Status page files missing\n")
        return _answer(200, ASSETS[self.request.path][1], result.body)
