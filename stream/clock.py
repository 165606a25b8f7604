"""Time as a dependency: the code that waits or paces takes a ``Clock``, and tests pass a virtual one.

``SYSTEM`` is the real clock and the default everywhere. Only the modules whose behaviour *is*
timing (batching, the ClickHouse sink's flush interval and backoff, replay pacing) take a clock;
timestamps written into records keep reading the wall clock where they are made.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for intervals, wall time for timestamps, and an awaitable sleep on the same time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and deadlines)."""
        ...

    def time(self) -> float:
        """Seconds since the epoch (for timestamps)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM: Clock = SystemClock()


async def wait_event(event: asyncio.Event, timeout: float, clock: Clock) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds of ``clock`` time passed; True if it is set.

    ``asyncio.wait_for`` would time out on the event loop's own clock, which a test cannot move.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        timer.cancel()
    return event.is_set()
