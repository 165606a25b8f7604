"""stream.clickhouse.sink.ClickHouseSink against a fake ClickHouse (the sink's logic, not ClickHouse).

The sink calls ``insert_records(ch, table, records)`` (for archived events ``insert_events``), i.e.
``ch.insert_data(sql, json)`` (after one ``DESCRIBE`` of the table per connection), in a worker thread, and
``ch.close()`` after a failed insert (it reconnects with ``connect()`` on the next try) and at
``stop()``. The fake records every call. The flush interval and the backoff run on
a virtual clock (tests/support/clock.py): the schedules asserted are exact, and no test sleeps.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from stream.clickhouse import INSERT_EVENTS_SQL
from stream.clickhouse.sink import ClickHouseSink
from tests.support.aio import settle
from tests.support.clock import VirtualClock

T0 = 1_736_000_000_000


class FakeServer:
    """What the fake connections write to; thread-safe (inserts run in a worker thread)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.rows: dict[str, list[int]] = {}
        self.batches: list[tuple[str, int]] = []
        self.failing = False
        self.failed_attempts: list[float] = []  # virtual times of failed inserts
        self.connects = 0
        self.closes = 0
        self.gate: threading.Event | None = None  # when set: inserts wait for it
        self.insert_started = threading.Event()
        self.inserting = 0
        self.closed_while_inserting = 0

    def connect(self) -> FakeClickHouse:
        with self.lock:
            self.connects += 1
        return FakeClickHouse(self)

    def ids(self, table: str) -> list[int]:
        with self.lock:
            return list(self.rows.get(table, []))


class FakeClickHouse:
    """Implements the ``stream.clickhouse.ClickHouse`` protocol; the sink only inserts and closes."""

    database = "fake"

    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        raise AssertionError("the sink does not run statements")

    def query_df(self, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        assert sql.startswith("DESCRIBE TABLE {db}."), "the sink only asks for a table's columns"
        cols = {"id": "UInt64", "event_time": "DateTime64(3, 'UTC')", "model_name": "String", "score": "Float64"}
        return pd.DataFrame({"name": list(cols), "type": list(cols.values()), "default_type": [""] * len(cols)})

    def query_arrow(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        raise AssertionError("the sink does not query")

    def insert_df(self, table: str, df: pd.DataFrame) -> int:
        raise AssertionError("the sink inserts JSON")

    def insert_data(self, sql: str, data: bytes, settings: dict[str, Any] | None = None) -> None:
        if sql == INSERT_EVENTS_SQL:  # the archive's JSON insert, flattened by ClickHouse
            table = "events"
        else:  # records: their epoch-ms times converted by ClickHouse
            table = sql.split()[2].removeprefix("{db}.")
            assert "fromUnixTimestamp64Milli(event_time, 'UTC')" in sql
        self._store(table, [int(ev["id"]) for ev in orjson.loads(data)])

    def _store(self, table: str, ids: list[int]) -> int:
        s = self.server
        with s.lock:
            s.inserting += 1
        try:
            s.insert_started.set()
            if s.gate is not None:
                s.gate.wait(10)
            with s.lock:
                if s.failing:
                    s.failed_attempts.append(s.clock.monotonic())
                    raise ConnectionError("ClickHouse is down")
                s.rows.setdefault(table, []).extend(ids)
                s.batches.append((table, len(ids)))
            return len(ids)
        finally:
            with s.lock:
                s.inserting -= 1

    def close(self) -> None:
        with self.server.lock:
            self.server.closes += 1
            if self.server.inserting:
                self.server.closed_while_inserting += 1


def rows(ids: range) -> list[dict[str, Any]]:
    return [{"id": i, "event_time": T0 + i, "model_name": "churn", "score": 0.5} for i in ids]


T = 1000.0  # the virtual clock's start


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=T)


@pytest.fixture
def server(clock: VirtualClock) -> FakeServer:
    return FakeServer(clock)


@pytest.fixture
def running() -> Iterator[Callable[[ClickHouseSink], Awaitable[asyncio.Task[None]]]]:
    """Start ``sink.run()`` in the background; the test stops the sink, this checks the loop ended."""
    tasks: list[asyncio.Task[None]] = []

    async def start(sink: ClickHouseSink) -> asyncio.Task[None]:
        task = asyncio.create_task(sink.run())
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        if not task.done():
            task.cancel()


# --- (a) batched inserts, futures ---------------------------------------------------------------


async def test_rows_are_inserted_in_batches_every_flush_s_and_futures_resolve(
    server: FakeServer, clock: VirtualClock, running: Any
) -> None:
    inserted: list[tuple[str, int]] = []
    sink = ClickHouseSink(
        server.connect,
        flush_rows=10_000,
        flush_s=0.5,
        clock=clock,
        on_insert=lambda table, n, secs: inserted.append((table, n)),
    )
    await running(sink)
    await clock.sleeping()
    futs = [await sink.put("predictions", rows(range(i * 10, i * 10 + 10))) for i in range(8)]
    futs.append(await sink.put("bandit_decisions", rows(range(1000, 1005))))
    assert sink.pending_rows == 85
    await clock.advance(0.375)
    assert server.batches == []  # not before flush_s
    await clock.advance(0.125)
    await asyncio.wait_for(asyncio.gather(*futs), 5)

    assert server.ids("predictions") == list(range(80))  # once each, in order
    assert server.ids("bandit_decisions") == list(range(1000, 1005))
    # Queued between two flushes: one insert per table, not one per put.
    assert sorted(server.batches) == [("bandit_decisions", 5), ("predictions", 80)]
    assert sorted(inserted) == sorted(server.batches)
    assert sink.inserted == 85
    assert sink.pending_rows == 0
    await clock.sleeping()
    assert clock.pending() == [T + 1.0]  # the next flush: flush_s after this one
    await sink.stop()


async def test_archived_events_go_as_json_cut_into_inserts_of_at_most_100_days(
    server: FakeServer, clock: VirtualClock, running: Any
) -> None:
    day = 86_400_000
    sink = ClickHouseSink(server.connect, flush_rows=10_000, flush_s=0.5, clock=clock)
    await running(sink)
    await clock.sleeping()
    events = [{"id": i, "event_time": T0 + (i % 150) * day, "event_id": f"e{i}"} for i in range(300)]
    futs = [await sink.put("events", events[:200]), await sink.put("events", events[200:])]
    await clock.advance(0.5)
    await asyncio.wait_for(asyncio.gather(*futs), 5)
    assert server.batches == [("events", 200), ("events", 100)]  # days 0-99, then days 100-149
    assert sorted(server.ids("events")) == list(range(300))
    assert sink.inserted == 300
    await sink.stop()


async def test_future_resolves_only_once_the_rows_are_inserted(
    server: FakeServer, clock: VirtualClock, running: Any
) -> None:
    server.gate = threading.Event()
    sink = ClickHouseSink(server.connect, flush_rows=10_000, flush_s=0.25, clock=clock)
    await running(sink)
    await clock.sleeping()
    fut = await sink.put("predictions", rows(range(5)))
    await clock.advance(0.25)
    await asyncio.to_thread(server.insert_started.wait, 5)
    await settle()
    assert not fut.done()  # the insert is in progress, not finished
    assert server.ids("predictions") == []
    server.gate.set()
    await asyncio.wait_for(fut, 5)
    assert server.ids("predictions") == [0, 1, 2, 3, 4]
    await sink.stop()


async def test_flush_rows_triggers_an_insert_before_flush_s(
    server: FakeServer, clock: VirtualClock, running: Any
) -> None:
    sink = ClickHouseSink(server.connect, flush_rows=50, flush_s=30.0, clock=clock)
    await running(sink)
    await clock.sleeping()
    small = await sink.put("predictions", rows(range(10)))
    await clock.advance(29.875)
    assert not small.done()  # below flush_rows and before flush_s
    big = await sink.put("predictions", rows(range(10, 50)))  # 50 queued now
    await asyncio.wait_for(asyncio.gather(small, big), 2)
    assert clock.monotonic() == T + 29.875  # at once, not at flush_s
    assert server.ids("predictions") == list(range(50))
    await sink.stop()


async def test_put_of_no_rows_resolves_at_once(server: FakeServer) -> None:
    sink = ClickHouseSink(server.connect)
    fut = await sink.put("predictions", [])
    assert fut.done()
    assert sink.pending_rows == 0
    assert server.connects == 0


# --- (b) outage: retries, backoff, backpressure, no loss ----------------------------------------


async def test_outage_retries_with_backoff_applies_backpressure_and_loses_nothing(
    server: FakeServer, clock: VirtualClock, running: Any
) -> None:
    backpressure: list[bool] = []
    errors: list[str] = []
    sink = ClickHouseSink(
        server.connect,
        flush_rows=10_000,
        flush_s=1.0,
        max_pending=100,
        backoff_s=(0.25, 2.0),
        clock=clock,
        on_error=lambda table, exc: errors.append(table),
        on_backpressure=backpressure.append,
    )
    server.failing = True
    await running(sink)
    await clock.sleeping()
    f1 = await sink.put("predictions", rows(range(0, 60)))
    f2 = await sink.put("predictions", rows(range(60, 120)))  # 120 >= max_pending: the next put waits
    blocked = asyncio.create_task(sink.put("predictions", rows(range(120, 130))))
    await settle()
    assert backpressure == [True]  # the queue is full
    await clock.advance(1.0)  # the first flush, at T + 1
    # Backoff doubles from 0.25 s and stays at the 2 s cap.
    for delay in (0.25, 0.5, 1.0, 2.0, 2.0):
        await clock.sleeping()
        assert clock.pending() == [clock.monotonic() + delay]
        assert not blocked.done()
        assert not f1.done() and not f2.done()
        await clock.advance(delay)
    await clock.sleeping()
    assert server.failed_attempts == [T + 1.0, T + 1.25, T + 1.75, T + 2.75, T + 4.75, T + 6.75]
    assert server.ids("predictions") == []
    assert backpressure == [True]  # one pause for the whole outage, not one per attempt

    server.failing = False
    await clock.advance(2.0)  # the retry at T + 8.75 succeeds
    f3 = await asyncio.wait_for(blocked, 5)
    await asyncio.wait_for(asyncio.gather(f1, f2), 5)
    assert backpressure == [True, False]
    await clock.sleeping()
    await clock.advance(1.0)  # the blocked put's rows go with the next flush
    await asyncio.wait_for(f3, 5)
    assert errors == ["predictions"] * 6
    assert clock.sleeps == [1.0, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 1.0, 1.0]
    # Each failure dropped its connection; every retry connected anew.
    assert server.closes == 6
    assert server.connects == 7
    ids = server.ids("predictions")
    assert Counter(ids) == Counter(range(130))  # every row exactly once
    assert ids == list(range(130))  # and in order
    assert sink.pending_rows == 0
    assert sink.inserted == 130
    await sink.stop()


async def test_backpressure_releases_as_soon_as_space_frees(
    server: FakeServer, clock: VirtualClock, running: Any
) -> None:
    """A put that does not reach ``max_pending`` is never blocked, even during an outage."""
    backpressure: list[bool] = []
    sink = ClickHouseSink(
        server.connect,
        flush_rows=10_000,
        flush_s=0.25,
        max_pending=100,
        backoff_s=(0.25, 1.0),
        clock=clock,
        on_backpressure=backpressure.append,
    )
    server.failing = True
    await running(sink)
    await clock.sleeping()
    futs = [await asyncio.wait_for(sink.put("predictions", rows(range(i * 33, i * 33 + 33))), 1) for i in range(3)]
    await clock.advance(0.25)
    await clock.sleeping()
    await clock.advance(0.25)
    await clock.sleeping()
    assert len(server.failed_attempts) == 2  # 99 rows < 100: no put waited
    server.failing = False
    await clock.advance(0.5)
    await asyncio.wait_for(asyncio.gather(*futs), 5)
    assert server.ids("predictions") == list(range(99))
    assert backpressure == [True, False]  # on for the failing inserts, not for the queue
    await sink.stop()


async def test_backpressure_is_on_while_inserts_fail_far_below_max_pending(
    server: FakeServer, clock: VirtualClock, running: Any
) -> None:
    """The worker holds a few batches in flight, far fewer rows than ``max_pending``: during an
    outage it stops consuming because its batches cannot settle, and the gauge must say so."""
    backpressure: list[bool] = []
    sink = ClickHouseSink(
        server.connect,
        flush_rows=10_000,
        flush_s=0.25,
        backoff_s=(0.25, 1.0),
        clock=clock,
        on_backpressure=backpressure.append,
    )  # max_pending: the default 50,000
    await running(sink)
    await clock.sleeping()
    first = await sink.put("predictions", rows(range(10)))
    await clock.advance(0.25)
    await asyncio.wait_for(first, 5)
    assert backpressure == []  # inserts succeed: no backpressure
    server.failing = True
    fut = await sink.put("predictions", rows(range(10, 20)))
    await clock.sleeping()
    await clock.advance(0.25)
    await clock.sleeping()
    assert len(server.failed_attempts) == 1
    assert backpressure == [True]
    assert sink.backpressure
    for delay in (0.25, 0.5):
        await clock.advance(delay)
        await clock.sleeping()
    assert len(server.failed_attempts) == 3
    assert backpressure == [True]  # one pause per outage, not one per failed attempt
    server.failing = False
    await clock.advance(1.0)
    await asyncio.wait_for(fut, 5)
    assert backpressure == [True, False]
    assert not sink.backpressure
    assert server.ids("predictions") == list(range(20))
    await sink.stop()


# --- (c) stop -----------------------------------------------------------------------------------


async def test_stop_flushes_what_is_pending(server: FakeServer) -> None:
    sink = ClickHouseSink(server.connect, flush_rows=10_000, flush_s=30.0)
    f1 = await sink.put("predictions", rows(range(7)))
    f2 = await sink.put("bandit_decisions", rows(range(100, 103)))
    assert server.ids("predictions") == []
    await sink.stop()
    assert f1.done() and f2.done()
    assert server.ids("predictions") == list(range(7))
    assert server.ids("bandit_decisions") == [100, 101, 102]
    assert sink.pending_rows == 0
    assert server.closes == server.connects == 1  # the connection is closed at stop


async def test_stop_ends_the_background_loop(server: FakeServer, clock: VirtualClock, running: Any) -> None:
    sink = ClickHouseSink(server.connect, flush_rows=10_000, flush_s=30.0, clock=clock)
    task = await running(sink)
    fut = await sink.put("predictions", rows(range(3)))
    await sink.stop()
    await asyncio.wait_for(task, 2)
    assert fut.done()
    assert server.ids("predictions") == [0, 1, 2]


async def test_stop_waits_for_an_insert_in_progress(server: FakeServer, clock: VirtualClock, running: Any) -> None:
    server.gate = threading.Event()
    sink = ClickHouseSink(server.connect, flush_rows=10, flush_s=30.0, clock=clock)
    await running(sink)
    fut = await sink.put("predictions", rows(range(20)))
    await asyncio.to_thread(server.insert_started.wait, 5)  # run() has taken the batch and is inserting it
    stopping = asyncio.create_task(sink.stop())
    await settle()  # stop() has run as far as it can without the insert finishing
    try:
        assert not stopping.done(), "stop() returned while rows were still being inserted"
        assert server.closed_while_inserting == 0, "stop() closed the connection of an insert in progress"
    finally:
        server.gate.set()
        await asyncio.wait_for(asyncio.gather(stopping, fut), 5)
    assert server.ids("predictions") == list(range(20))
