"""Committed request ids, as an immutable mapping that is cheap to extend.

Theory of operation: a user's state remembers every committed request id
until its lease would have expired (half an hour by default), so that a
repeated commit is a no-op.  At hundreds of requests per second that is
hundreds of thousands of ids, and states are immutable values: copying one
dict per commit made each commit O(ids) -- the gateway slowed down the
longer it ran.  :class:`DoneIds` keeps the ids in chunks of at most
``CHUNK`` entries, oldest first; adding copies only the newest chunk, and a
chunk whose newest expiry has passed is dropped whole.  Lookups check the
chunks newest first.  Ids go in in (roughly) expiry order, which is what
makes whole-chunk expiry exact enough: a lookup still compares the expiry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

__all__ = ["CHUNK", "DoneIds", "add_done", "newest_expiry"]

CHUNK = 1024


class DoneIds(Mapping[str, int]):
    """request id -> until when a repeated commit is ignored (µs)."""

    __slots__ = ("_chunks", "newest")

    def __init__(self, chunks: tuple[tuple[int, dict[str, int]], ...] = ()) -> None:
        # (newest expiry in the chunk, the chunk); chunks are never mutated.
        self._chunks = chunks
        # the newest expiry of all: the ids are all dead once it has passed
        self.newest = max((c[0] for c in chunks), default=0)

    def __getitem__(self, key: str) -> int:
        for _, chunk in reversed(self._chunks):
            if key in chunk:
                return chunk[key]
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for _, chunk in reversed(self._chunks):
            for key in chunk:
                if key not in seen:
                    seen.add(key)
                    yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"DoneIds({dict(self.items())!r})"


def add_done(done: Mapping[str, int], request_id: str, now: int, expiry: int) -> DoneIds:
    """``done`` plus one id, chunks that have wholly expired dropped."""
    if isinstance(done, DoneIds):
        chunks = [c for c in done._chunks if c[0] > now]
    else:
        live = {k: v for k, v in done.items() if v > now}
        chunks = [(max(live.values()), live)] if live else []
    if chunks and len(chunks[-1][1]) < CHUNK:
        newest, chunk = chunks[-1]
        chunks[-1] = (max(newest, expiry), {**chunk, request_id: expiry})
    else:
        chunks.append((expiry, {request_id: expiry}))
    return DoneIds(tuple(chunks))


def newest_expiry(done: Mapping[str, int]) -> int:
    """The latest expiry in ``done`` (0 when empty); O(1) for :class:`DoneIds`."""
    if isinstance(done, DoneIds):
        return done.newest
    return max(done.values(), default=0)
