"""sansio-gateway: the pure core of an LLM API gateway.

Nothing in this package performs I/O, reads a clock, or draws random numbers:
bytes, results, times and ids are passed in, and events, actions and decisions
come out.  The ``adapters`` package executes them.
"""

from __future__ import annotations

__version__ = "0.1.0"
