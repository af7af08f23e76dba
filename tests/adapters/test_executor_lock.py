"""The executor's per-request lock (adapters/executor.py ``_Lock``): free
acquisitions never wait, holders are served in order, and a waiter
cancelled as the lock reaches it passes it on instead of leaking it."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from sansio_gateway.adapters.executor import _Lock

BACKENDS = ["asyncio", "trio"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_waiters_are_served_one_at_a_time_in_order(backend: str) -> None:
    order: list[int] = []
    inside = 0

    async def main() -> None:
        lock = _Lock()

        async def take(i: int, started: anyio.Event) -> None:
            nonlocal inside
            started.set()
            async with lock:
                inside += 1
                assert inside == 1
                order.append(i)
                await anyio.lowlevel.checkpoint()
                inside -= 1

        async with anyio.create_task_group() as tg, lock:  # every taker queues behind this
            for i in range(5):
                started = anyio.Event()
                tg.start_soon(take, i, started)
                await started.wait()
            assert lock.locked()
        assert not lock.locked()

    anyio.run(main, backend=backend)
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_waiter_never_keeps_the_lock(backend: str) -> None:
    async def main() -> None:
        lock = _Lock()
        got: list[str] = []

        async def waiter(name: str, scope_box: list[anyio.CancelScope]) -> None:
            with anyio.CancelScope() as scope:
                scope_box.append(scope)
                async with lock:
                    got.append(name)

        async with anyio.create_task_group() as tg:
            first: list[anyio.CancelScope] = []
            second: list[anyio.CancelScope] = []
            async with lock:
                tg.start_soon(waiter, "first", first)
                tg.start_soon(waiter, "second", second)
                await anyio.wait_all_tasks_blocked()
                first[0].cancel()  # queued, and cancelled before its turn
            # The release hands the lock to "first" if it is still queued;
            # either way "second" must get it, and nobody keeps it.
        assert got == ["second"]
        assert not lock.locked()

        # Handed over and cancelled in the same step: passed on, not leaked.
        async with anyio.create_task_group() as tg:
            third: list[anyio.CancelScope] = []
            async with lock:
                tg.start_soon(waiter, "third", third)
                tg.start_soon(waiter, "fourth", [])
                await anyio.wait_all_tasks_blocked()
            third[0].cancel()
        assert "fourth" in got
        assert not lock.locked()

    anyio.run(main, backend=backend)
