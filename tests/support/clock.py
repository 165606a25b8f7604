"""A virtual :class:`stream.clock.Clock`: time moves only when the test advances it.

Code under test sleeps on the clock; the test waits until it does (:meth:`VirtualClock.sleeping`),
checks what it asked for (:attr:`VirtualClock.sleeps`) and moves time on (:meth:`VirtualClock.advance`),
waking the sleepers due by then in deadline order. Timings are exact: nothing depends on how fast
the machine runs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

from stream.clock import Clock
from tests.support.aio import settle

#: the default start: far from 0, so a stray ``0.0`` in the code under test shows
START = 1000.0
#: the wall time at START (2025-01-04T14:13:20Z)
WALL_AT_START = 1_736_000_000.0


class VirtualClock(Clock):
    def __init__(self, start: float = START, wall_at_start: float = WALL_AT_START) -> None:
        self.now = start
        self._wall_offset = wall_at_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        #: every duration asked of sleep(), in order
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)  # a zero sleep still yields, as asyncio.sleep(0) does
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._seq), fut))
        await fut

    def pending(self) -> list[float]:
        """The deadlines of the sleeps in progress, earliest first."""
        return sorted(d for d, _, f in self._sleepers if not f.done())

    async def sleeping(self, n: int = 1, timeout_s: float = 5.0) -> None:
        """Wait (in real time) until ``n`` sleeps are in progress: the code under test is idle on this clock."""
        deadline = time.monotonic() + timeout_s
        while len(self.pending()) < n:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{n} sleeps on the virtual clock within {timeout_s} s; {len(self.pending())} in progress"
                )
            await asyncio.sleep(0.001)

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``; each sleeper due by then wakes at its own deadline, in order."""
        target = self.now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():  # cancelled
                continue
            self.now = max(self.now, deadline)
            fut.set_result(None)
            await settle()
        self.now = target
        await settle()

    def advance_sync(self, seconds: float) -> None:
        """Move time on without waking anyone: a synchronous wait (e.g. replay pacing) on this clock."""
        assert not self.pending(), "advance_sync with async sleepers pending; use advance()"
        self.now += seconds
