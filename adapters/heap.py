"""The serve command's cyclic-GC settings, made once the process is built.

What a request leaves behind is freed by reference counting; the cyclic
collector only has to find reference cycles, and the gateway's request
path makes none (tests/adapters/test_heap.py holds it to that).  With
CPython's defaults it still ran several times a second under load, each
time walking every object the process had made at start (modules, config,
the core's tables): about 8% of the gateway's CPU at 1,000 requests a
second on a 2-vCPU VM (docs/benchmarks.md, "Garbage collection").

* ``gc.freeze()`` once the app is built moves everything made so far out of
  the collector's sight: it lives as long as the process anyway.
* A first-generation threshold of 7,000 allocations (CPython's is 700)
  lets the collector run about a tenth as often.  Cycles a library might
  still make are found as before, just later: a few thousand young objects
  at most, well under a MiB.
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_THRESHOLD", "settle_heap"]

GEN0_THRESHOLD = 7000


def settle_heap() -> None:
    """Collect what start-up left, freeze the rest, and space out collections."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
