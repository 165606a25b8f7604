"""The ClickHouse sink: batched columnar inserts, retries with backoff, bounded (backpressure).

Contract, in the spirit of a batching sink with backpressure:

1. ``await sink.put(table, records)`` queues rows and returns a future that resolves when they
   are in ClickHouse. It *waits* while more than ``max_pending`` rows are queued, so a slow or
   dead ClickHouse pauses the caller instead of growing memory.
2. A background task inserts one batch per table every ``flush_s`` (or at ``flush_rows``).
3. A failed insert is retried with exponential backoff, forever: rows are never dropped. The
   futures resolve only after success, and the worker acks the source events only then.
4. Backpressure (``on_backpressure``) is on from the first failed insert until an insert
   succeeds, and while a ``put()`` waits for room. The worker stops consuming long before
   ``max_pending``: its batches wait for these futures, and it holds at most a few batches in
   flight (``Publisher.max_inflight_events``), so a failing insert is what pauses it.

The flush interval, the backoff and the insert durations run on an injected clock
(:mod:`stream.clock`), so the unit tests check the exact schedule on a virtual one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.clickhouse import ClickHouse, insert_events, insert_records
from stream.clock import SYSTEM, Clock, wait_event

log = logging.getLogger(__name__)

#: tables whose rows are not flat records: archived session events go as JSON that ClickHouse flattens, cut by day
_INSERTERS: dict[str, Callable[[ClickHouse, Sequence[Mapping[str, Any]]], int]] = {"events": insert_events}


@dataclass
class _Pending:
    records: list[Mapping[str, Any]] = field(default_factory=list)
    futures: list[asyncio.Future[None]] = field(default_factory=list)


class ClickHouseSink:
    def __init__(
        self,
        connect: Callable[[], ClickHouse],
        *,
        flush_rows: int = 5000,
        flush_s: float = 1.0,
        max_pending: int = 50_000,
        backoff_s: tuple[float, float] = (0.2, 10.0),
        on_error: Callable[[str, BaseException], None] | None = None,
        on_backpressure: Callable[[bool], None] | None = None,
        on_insert: Callable[[str, int, float], None] | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self._connect = connect
        self._clock = clock
        self._ch: ClickHouse | None = None
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.backoff_s = backoff_s
        self._pending: dict[str, _Pending] = {}
        self._rows = 0
        self._space = asyncio.Condition()
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._on_error = on_error
        self._on_backpressure = on_backpressure
        self._on_insert = on_insert
        self._stopping = False
        self._failing = False  # the last insert attempt failed; its rows wait for a retry
        self._waiting_puts = 0  # put() calls waiting for room
        self._backpressure = False
        self.inserted = 0

    @property
    def pending_rows(self) -> int:
        return self._rows

    @property
    def backpressure(self) -> bool:
        """True while ClickHouse does not take the rows (inserts failing, or the queue full)."""
        return self._backpressure

    def _update_backpressure(self) -> None:
        active = self._failing or self._waiting_puts > 0
        if active != self._backpressure:
            self._backpressure = active
            if self._on_backpressure:
                self._on_backpressure(active)

    async def put(self, table: str, records: Sequence[Mapping[str, Any]]) -> asyncio.Future[None]:
        """Queue rows; wait while the sink is full. The returned future resolves once inserted."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not records:
            fut.set_result(None)
            return fut
        async with self._space:
            if self._rows >= self.max_pending:
                log.warning("ClickHouse sink full (%d rows pending): pausing consumption", self._rows)
                self._waiting_puts += 1
                self._update_backpressure()
                try:
                    await self._space.wait_for(lambda: self._rows < self.max_pending)
                finally:
                    self._waiting_puts -= 1
                    self._update_backpressure()
            pending = self._pending.setdefault(table, _Pending())
            pending.records.extend(records)
            pending.futures.append(fut)
            self._rows += len(records)
        if self._rows >= self.flush_rows:
            self._wake.set()
        return fut

    def _insert(self, table: str, records: list[Mapping[str, Any]]) -> None:
        if self._ch is None:
            self._ch = self._connect()
        try:
            inserter = _INSERTERS.get(table)
            if inserter is not None:
                inserter(self._ch, records)
            else:
                insert_records(self._ch, table, records)
        except BaseException:
            # Reconnect on the next try: the connection may be what broke.
            ch, self._ch = self._ch, None
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                ch.close()
            raise

    async def flush(self) -> None:
        """Insert everything queued now (retrying until it succeeds or the sink stops).

        One flush at a time: ``stop()`` waits for the one ``run()`` may have started, so it
        neither returns before those rows are in nor closes the connection under them.
        """
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        for table in list(self._pending):
            batch = self._pending.pop(table)
            delay = self.backoff_s[0]
            while True:
                t0 = self._clock.monotonic()
                try:
                    await asyncio.to_thread(self._insert, table, batch.records)
                    break
                except Exception as exc:
                    if self._on_error:
                        self._on_error(table, exc)
                    self._failing = True
                    self._update_backpressure()
                    log.warning("ClickHouse insert into %s failed (%s); retrying in %.1fs", table, exc, delay)
                    if self._stopping and delay >= self.backoff_s[1]:
                        raise
                    await self._clock.sleep(delay)
                    delay = min(delay * 2, self.backoff_s[1])
            self._failing = False
            self._update_backpressure()
            if self._on_insert:
                self._on_insert(table, len(batch.records), self._clock.monotonic() - t0)
            self.inserted += len(batch.records)
            async with self._space:
                self._rows -= len(batch.records)
                self._space.notify_all()
            for fut in batch.futures:
                if not fut.done():
                    fut.set_result(None)

    async def run(self) -> None:
        """Background loop: flush every ``flush_s`` or as soon as ``flush_rows`` are queued."""
        while not self._stopping:
            await wait_event(self._wake, self.flush_s, self._clock)
            self._wake.clear()
            await self.flush()

    async def stop(self) -> None:
        self._stopping = True
        await self.flush()
        if self._ch is not None:
            self._ch.close()
            self._ch = None
