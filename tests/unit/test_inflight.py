"""The publisher's in-flight budget: input events whose outputs are not confirmed yet."""

from __future__ import annotations

import asyncio

import pytest

from stream.worker.publisher import InFlight


async def test_small_batches_pass_until_the_events_reach_the_limit() -> None:
    budget = InFlight(10)
    assert [await budget.acquire(n) for n in (3, 3, 4)] == [3, 3, 4]
    blocked = asyncio.ensure_future(budget.acquire(1))
    await asyncio.sleep(0)
    assert not blocked.done()  # 10 of 10 in flight
    budget.release(3)
    assert await asyncio.wait_for(blocked, 1) == 1
    assert budget.used == 8


async def test_waiters_are_served_in_order_and_a_large_batch_takes_the_whole_budget() -> None:
    budget = InFlight(10)
    await budget.acquire(8)
    big = asyncio.ensure_future(budget.acquire(500))  # more than the limit: waits for all of it
    small = asyncio.ensure_future(budget.acquire(1))  # would fit now, but comes after the big one
    await asyncio.sleep(0)
    assert not big.done() and not small.done()
    budget.release(8)
    assert await asyncio.wait_for(big, 1) == 10
    await asyncio.sleep(0)
    assert not small.done()
    budget.release(10)
    assert await asyncio.wait_for(small, 1) == 1
    assert budget.used == 1


async def test_a_cancelled_waiter_takes_nothing_and_holds_no_one_back() -> None:
    budget = InFlight(4)
    await budget.acquire(4)
    gone = asyncio.ensure_future(budget.acquire(3))
    after = asyncio.ensure_future(budget.acquire(2))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    budget.release(4)
    assert await asyncio.wait_for(after, 1) == 2
    assert budget.used == 2


async def test_a_waiter_cancelled_after_its_grant_gives_it_back() -> None:
    budget = InFlight(4)
    await budget.acquire(4)
    granted = asyncio.ensure_future(budget.acquire(2))
    await asyncio.sleep(0)
    budget.release(4)  # grants 2 to the waiter, which has not run yet
    granted.cancel()
    with pytest.raises(asyncio.CancelledError):
        await granted
    assert budget.used == 0
