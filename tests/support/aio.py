"""Async test helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` on the event loop until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def settle(rounds: int = 20) -> None:
    """Let every task that is ready run until it blocks again (no time passes, no thread is waited for)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
