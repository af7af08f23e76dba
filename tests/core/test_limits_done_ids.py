"""DoneIds: an immutable mapping of committed ids that is cheap to extend."""

from __future__ import annotations

from sansio_gateway.limits.done_ids import CHUNK, DoneIds, add_done


def test_behaves_as_the_dict_it_replaces() -> None:
    done: DoneIds | dict[str, int] = {}
    reference: dict[str, int] = {}
    for i in range(3 * CHUNK + 5):
        done = add_done(done, f"r{i}", now=i, expiry=i + 10 * CHUNK)
        reference[f"r{i}"] = i + 10 * CHUNK
    assert done == reference and len(done) == len(reference)
    assert done.get("r7") == reference["r7"] and done.get("nope") is None


def test_adding_never_mutates_an_earlier_value() -> None:
    first = add_done({}, "a", now=0, expiry=100)
    second = add_done(first, "b", now=1, expiry=101)
    assert dict(first) == {"a": 100} and dict(second) == {"a": 100, "b": 101}


def test_wholly_expired_chunks_are_dropped_and_copies_stay_small() -> None:
    done: DoneIds | dict[str, int] = {}
    for i in range(5 * CHUNK):
        done = add_done(done, f"r{i}", now=i, expiry=i + CHUNK)  # each lives CHUNK ticks
    assert isinstance(done, DoneIds)
    assert len(done._chunks) <= 3  # bounded by the live ids, not by all ever committed
    assert all(len(chunk) <= CHUNK for _, chunk in done._chunks)
    assert "r0" not in done and f"r{5 * CHUNK - 1}" in done
