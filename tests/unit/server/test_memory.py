"""Tests for sendgate.server.memory: a worker's budget for message content."""

from __future__ import annotations

import asyncio
import contextlib

from sendgate.server.memory import MemoryBudget, return_freed_memory


def test_take_counts_only_what_fits() -> None:
    budget = MemoryBudget(100)
    assert budget.take(60)
    assert not budget.take(41)
    assert budget.used == 60
    assert budget.take(40)
    budget.give(100)
    assert budget.used == 0
    budget.give(5)  # never below zero
    assert budget.used == 0


def test_a_waiter_gets_room_once_it_is_given_back() -> None:
    async def main() -> tuple[bool, int]:
        budget = MemoryBudget(100)
        assert budget.take(80)
        waiter = asyncio.ensure_future(budget.wait_to_take(50, timeout=10))
        await asyncio.sleep(0)
        assert not waiter.done()
        budget.give(80)
        return await waiter, budget.used

    assert asyncio.run(main()) == (True, 50)


def test_a_waiter_gives_up_at_its_deadline() -> None:
    async def main() -> tuple[bool, int]:
        budget = MemoryBudget(100)
        assert budget.take(80)
        return await budget.wait_to_take(50, timeout=0.05), budget.used

    assert asyncio.run(main()) == (False, 80)


def test_return_freed_memory_is_harmless_to_call_again() -> None:
    return_freed_memory()
    return_freed_memory()
    block = bytearray(4 << 20)  # allocations still work with the fixed threshold
    assert len(block) == 4 << 20


def test_a_waiter_cancelled_as_room_comes_takes_nothing() -> None:
    async def main() -> tuple[bool, int]:
        budget = MemoryBudget(100)
        assert budget.take(80)
        waiter = asyncio.ensure_future(budget.wait_to_take(50, timeout=10))
        await asyncio.sleep(0)
        budget.give(80)  # the waiter could go on at the next step...
        waiter.cancel()  # ...but its connection has gone in the same one
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        return waiter.cancelled(), budget.used

    assert asyncio.run(main()) == (True, 0)
