"""Committed request ids: an immutable set, bounded in bytes, cheap to extend.

Theory of operation: a user's state remembers each committed request id
until its lease would have expired (``now + lease_ttl_us``, half an hour by
default), so that a repeated commit is a no-op.  At hundreds of requests
per second that is hundreds of thousands of ids, and states are immutable
values, so three things matter: adding must not copy them all, memory must
stay bounded however long the gateway runs, and the idle sweep must not
read them all.

* **Compact.**  An id is kept as the 64-bit BLAKE2b digest of its text
  (8 bytes, however long the id) plus its expiry (8 bytes).  Two distinct
  ids of one user collide with probability about n**2 / 2**65 (n the ids
  remembered: below 1e-10 at the bound); a collision can only make a first
  commit of an id whose lease had already expired look like a repeat.
* **Cheap to extend.**  The newest ids sit in a small dict (at most
  ``FRESH`` entries, copied on add).  A full dict is frozen into a sorted
  segment (two ``array`` columns, 16 bytes an id); ``FANOUT`` small
  segments are merged into one of ``FRESH * FANOUT``.  Adding is amortised
  O(1); a lookup is one dict probe plus a binary search per segment (at
  most ``FANOUT`` small and ``max_ids / (FRESH * FANOUT)`` large ones).
* **Expiry.**  Segments are oldest first; one whose newest expiry has
  passed is dropped whole.  Lookups still compare each id's own expiry, so
  what is kept behaves exactly like a dict of id -> expiry.
* **The bound.**  Past ``max_ids`` ids (``MAX_IDS``, 65,536: about 1 MiB a
  user), the oldest segment is dropped early.  The guarantee: a repeated
  commit is recognised while the id has not expired *and* fewer than
  ``max_ids - FRESH * FANOUT`` ids (61,440) of the same user were committed
  after it.  Past that, the repeat is treated as a commit whose lease has
  expired: it may charge its surcharge (``actual > estimate``) to the
  tokens-per-minute TATs again, and nothing else (no refund, no day
  counter, no lease).  It never admits more than the limits allow.
* **O(1) reads for the sweep.**  ``newest`` is the latest expiry held: once
  it has passed, every id is dead (:func:`~.memory.is_idle`).
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left

__all__ = [
    "FANOUT",
    "FRESH",
    "MAX_IDS",
    "DoneIds",
    "add_digest",
    "add_done",
    "id_digest",
    "newest_expiry",
    "trim_done",
]

FRESH = 256
FANOUT = 16
MAX_IDS = 65_536

# A frozen segment: (newest expiry, sorted digests, their expiries).
Segment = tuple[int, "array[int]", "array[int]"]


def id_digest(request_id: str) -> int:
    """The 64-bit digest a request id is remembered by."""
    digest = hashlib.blake2b(request_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _freeze(entries: dict[int, int]) -> Segment:
    keys = sorted(entries)
    exps = array("q", [entries[k] for k in keys])
    return max(exps, default=0), array("Q", keys), exps


def _merge(segments: tuple[Segment, ...]) -> Segment:
    entries: dict[int, int] = {}
    for _, keys, exps in segments:  # oldest first: a later expiry wins
        entries.update(zip(keys, exps, strict=True))
    return _freeze(entries)


class DoneIds:
    """request id -> until when a repeated commit is ignored (us).  Immutable:
    :func:`add_done` returns a new value and shares what it did not change."""

    __slots__ = ("_fresh", "_frozen", "_small", "count", "max_ids", "newest")

    def __init__(
        self,
        fresh: dict[int, int] | None = None,
        frozen: tuple[Segment, ...] = (),
        *,
        small: int = 0,
        max_ids: int = MAX_IDS,
        count: int | None = None,
        newest: int | None = None,
    ) -> None:
        self._fresh: dict[int, int] = fresh if fresh is not None else {}
        self._frozen = frozen  # oldest first; the last ``small`` are unmerged
        self._small = small
        self.max_ids = max_ids
        if count is None:
            count = len(self._fresh) + sum(len(seg[1]) for seg in frozen)
        if newest is None:
            newest = max([seg[0] for seg in frozen] + list(self._fresh.values()), default=0)
        self.count = count
        self.newest = newest  # the latest expiry ever added (and not all dropped)

    def expiry(self, request_id: str) -> int:
        """Until when ``request_id`` counts as committed (0: it does not)."""
        return self.lookup(id_digest(request_id))

    def get(self, request_id: str, default: int = 0) -> int:
        return self.lookup(id_digest(request_id)) or default

    def __contains__(self, request_id: object) -> bool:
        return isinstance(request_id, str) and self.lookup(id_digest(request_id)) != 0

    def lookup(self, digest: int) -> int:
        """:meth:`expiry` of the id whose :func:`id_digest` is ``digest``."""
        found = self._fresh.get(digest)
        if found is not None:
            return found
        for _, keys, exps in reversed(self._frozen):
            i = bisect_left(keys, digest)
            if i < len(keys) and keys[i] == digest:
                return exps[i]
        return 0

    def __len__(self) -> int:
        return self.count

    def nbytes(self) -> int:
        """The ids' payload in bytes (16 an id; the fresh dict costs more)."""
        return 16 * self.count

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DoneIds):
            return NotImplemented
        return self is other or (
            self._fresh == other._fresh
            and self._frozen == other._frozen
            and self.max_ids == other.max_ids
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DoneIds(count={self.count}, newest={self.newest})"


def _live(frozen: tuple[Segment, ...], small: int, now: int) -> tuple[tuple[Segment, ...], int]:
    """Drop the leading segments that have wholly expired."""
    drop = 0
    while drop < len(frozen) and frozen[drop][0] <= now:
        drop += 1
    return frozen[drop:], min(small, len(frozen) - drop)


def add_done(done: DoneIds, request_id: str, now: int, expiry: int) -> DoneIds:
    """``done`` plus one id; what has expired by ``now`` or lies past the
    bound is dropped.  Amortised O(1)."""
    return add_digest(done, id_digest(request_id), now, expiry)


def add_digest(done: DoneIds, digest: int, now: int, expiry: int) -> DoneIds:
    """:func:`add_done` of the id whose :func:`id_digest` is ``digest`` (for
    a caller that has hashed it already)."""
    frozen, small = done._frozen, done._small
    recount = False
    if frozen and frozen[0][0] <= now:
        before = len(frozen)
        frozen, small = _live(frozen, small, now)
        recount = len(frozen) != before
    count = done.count + (digest not in done._fresh)
    fresh = {**done._fresh, digest: expiry}
    if len(fresh) >= FRESH:
        frozen, small, fresh = (*frozen, _freeze(fresh)), small + 1, {}
        if small >= FANOUT:
            frozen, small = (*frozen[:-small], _merge(frozen[-small:])), 0
            recount = True  # a merge folds repeated digests together
    if recount:
        count = len(fresh) + sum(len(seg[1]) for seg in frozen)
    while count > done.max_ids and frozen:
        count -= len(frozen[0][1])
        frozen, small = frozen[1:], min(small, len(frozen) - 1)
    newest = max(done.newest, expiry) if count else 0
    return DoneIds(fresh, frozen, small=small, max_ids=done.max_ids, count=count, newest=newest)


def trim_done(done: DoneIds, most: int) -> DoneIds:
    """``done`` with its oldest segments dropped until at most ``most`` ids
    remain (or only the fresh dict is left): the store-wide budget's trim,
    with the same guarantee as the per-user bound."""
    if done.count <= most or not done._frozen:
        return done
    frozen, small, count = done._frozen, done._small, done.count
    while count > most and frozen:
        count -= len(frozen[0][1])
        frozen, small = frozen[1:], min(small, len(frozen) - 1)
    newest = done.newest if count else 0
    return DoneIds(
        done._fresh, frozen, small=small, max_ids=done.max_ids, count=count, newest=newest
    )


def newest_expiry(done: DoneIds) -> int:
    """The latest expiry in ``done`` (0 when empty), in O(1)."""
    return done.newest
