"""Which route a model-addressed request reaches, for the caller who asks.

Theory of operation: the model name (the catalogue's spelling of what the
client asked for) resolves through the catalogue (``catalogue.py``).  A
name the catalogue does not know, but the caller's allow-list names, may be
a model pulled since the last discovery: :func:`worth_a_refresh` says so,
and the Exchange asks for one fresh discovery (at most every
``discovery_ttl``: the Gateway's ``may_refresh_on_miss``) before it
answers.  :func:`reach` then lets the allow-list judge the model reached,
not the spelling asked for (``may_use``: the Gateway's, which knows every
name of a model), and a missing model and a hidden one get the same 404,
so an allow-list reveals nothing.  The metrics label is the catalogue's own
name for the model, or :data:`UNKNOWN_MODEL_LABEL`: bounded by the
catalogue, whatever names clients send.
"""

from __future__ import annotations

from collections.abc import Callable

from ..http import Surface
from ..identity import Identity
from ..rendering import model_not_found
from .catalogue import Catalogue, Route

__all__ = ["UNKNOWN_MODEL_LABEL", "reach", "worth_a_refresh"]

# The metrics label of a model the catalogue does not name (see RequestSummary).
UNKNOWN_MODEL_LABEL = "unknown"


def worth_a_refresh(catalogue: Catalogue, identity: Identity, model: str) -> bool:
    """Is ``model`` unknown to ``catalogue`` and named by ``identity``'s
    allow-list: worth one fresh discovery before the 404?"""
    return catalogue.resolve(model) is None and identity.may_use(model)


def reach(
    catalogue: Catalogue,
    identity: Identity,
    model: str,
    surface: Surface,
    *,
    may_use: Callable[[Identity, Route], bool],
) -> tuple[Route, str]:
    """The route ``model`` reaches and its metrics label; raises the 404
    (``NotFound``, in ``surface``'s words) when it reaches none, or one
    ``identity`` may not use."""
    route = catalogue.resolve(model)
    if route is None or not may_use(identity, route):
        raise model_not_found(surface, model)
    return route, catalogue.known_name(route) or UNKNOWN_MODEL_LABEL
