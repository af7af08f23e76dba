"""Third-party backend kinds, from the ``sansio_gateway.backends`` entry points.

A package adds a kind by declaring, in its ``pyproject.toml``::

    [project.entry-points."sansio_gateway.backends"]
    tgi = "my_package.kind:TGI_KIND"

where the object is a :class:`sansio_gateway.backends.registry.BackendKind`, or a
zero-argument callable returning one.  Reading entry points reads package
metadata from disk, so it happens here, in the adapters, and the result is
registered into the Gateway's own registry.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from sansio_gateway.backends.registry import BackendKind, Registry, builtin_registry

__all__ = ["ENTRY_POINT_GROUP", "load_registry"]

ENTRY_POINT_GROUP = "sansio_gateway.backends"
log = logging.getLogger("sansio_gateway.plugins")


def load_registry() -> Registry:
    """The built-in kinds plus every installed plugin kind."""
    registry = builtin_registry()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        kind = obj() if callable(obj) and not isinstance(obj, BackendKind) else obj
        if not isinstance(kind, BackendKind):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not a BackendKind")
        registry.register(kind)
        log.info("backend kind %r from %s", kind.name, ep.value)
    return registry
