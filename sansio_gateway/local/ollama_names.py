"""Model names on the Ollama surface: the synthetic ``:latest`` tag.

Theory of operation: ``/api/tags`` lists every catalogue id with a tag,
``<id>:latest`` when the id has none, because Ollama's name parser and Open
WebUI default the tag to ``latest`` (docs/wire-notes.md, "Model names").
Clients then send that tagged name back.  :func:`catalogue_name` undoes it:
the tagged name when the catalogue knows it, else the untagged id when the
catalogue knows *that*.  (``Catalogue.resolve`` already handles the other
direction, ``llama3`` for an Ollama backend's ``llama3:latest``.)

Every model-addressed ``/api`` route maps the client's name with it
(``RouteDecl.model_name``, routes.py), and the Exchange resolves, limits
and records the catalogue name.  Nothing here raises for an unknown model: the Exchange
answers that 404, the same one it gives for a model the caller's key may
not use, so an allow-list does not reveal what else exists.
"""

from __future__ import annotations

from ..backends.catalogue import Catalogue

__all__ = [
    "LATEST",
    "catalogue_name",
    "is_listed",
    "listed_name",
]

LATEST = ":latest"


def listed_name(name: str) -> str:
    """The name ``/api/tags`` shows: ``<id>:latest`` when the id has no tag
    (a colon in its last path segment, as in ``hf.co/user/model:Q4``)."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + LATEST


def _known(catalogue: Catalogue) -> set[str]:
    return {name for name, _, _ in catalogue.models()}


def catalogue_name(catalogue: Catalogue, name: str) -> str:
    """The catalogue's name for what the client sent (see the module docstring)."""
    if name.endswith(LATEST):
        known = _known(catalogue)
        if name not in known and name[: -len(LATEST)] in known:
            return name[: -len(LATEST)]
    return name


def is_listed(catalogue: Catalogue, name: str) -> bool:
    """Whether ``/api/tags`` lists ``name`` (tagged or not)."""
    known = _known(catalogue)
    return any(n in known for n in (name, catalogue_name(catalogue, name), listed_name(name)))
