"""Who is calling: the result of authentication (:mod:`sansio_gateway.auth`).

A module of its own so that both ``auth`` (which produces it) and ``http``
(whose :class:`~sansio_gateway.http.IncomingRequest` carries it) import it,
and neither imports the other's importer.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

__all__ = ["ANONYMOUS", "Identity"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    key_id: str | None
    user: str
    models: tuple[str, ...] = ("*",)
    admin: bool = False

    def may_use(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


ANONYMOUS = Identity(key_id=None, user="anonymous", admin=True)
