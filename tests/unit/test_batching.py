"""stream.worker.agents.batching.run_batches: size and time limits, order, holds, backpressure, errors.

The stream is a stand-in with faust's ``events()`` interface (a unit test of the batching logic;
the agents' tests drive the real thing through faust's ``test_context``). Time is a virtual clock
(tests/support/clock.py): the timings asserted are exact, and no test sleeps.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from stream.worker.agents.batching import run_batches
from tests.support.aio import settle
from tests.support.clock import VirtualClock


@dataclass
class Msg:
    offset: int
    refcount: int = 1

    def incref(self) -> None:
        self.refcount += 1


@dataclass
class Ev:
    message: Msg


@dataclass
class FakeStream:
    """Yields queued events; ``None`` in the queue ends the stream. Acks each event as faust does."""

    queue: asyncio.Queue[Ev | None] = field(default_factory=asyncio.Queue)
    yielded: int = 0

    async def events(self) -> Any:
        while (ev := await self.queue.get()) is not None:
            self.yielded += 1
            yield ev
            ev.message.refcount -= 1  # faust's ack when the iteration moves on

    def put(self, *offsets: int) -> list[Ev]:
        evs = [Ev(Msg(o)) for o in offsets]
        for ev in evs:
            self.queue.put_nowait(ev)
        return evs


T = 1000.0  # the virtual clock's start


def offsets(batch: list[Ev]) -> list[int]:
    return [e.message.offset for e in batch]


async def test_full_batches_go_at_once_and_the_rest_exactly_at_the_time_limit() -> None:
    clock = VirtualClock(start=T)
    stream = FakeStream()
    batches: list[tuple[float, list[int]]] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))

    task = asyncio.ensure_future(run_batches(stream, 4, 0.25, handle, clock))
    stream.put(*range(10))
    await clock.sleeping()
    assert batches == [(T, [0, 1, 2, 3]), (T, [4, 5, 6, 7])]  # full batches do not wait for the timer
    assert clock.sleeps == [0.25]  # the partial batch waits for its first event's deadline
    await clock.advance(0.125)
    assert len(batches) == 2
    await clock.advance(0.125)
    assert batches[2:] == [(T + 0.25, [8, 9])]
    stream.queue.put_nowait(None)
    await asyncio.wait_for(task, 1)


async def test_the_time_limit_counts_from_the_first_event_of_the_batch() -> None:
    clock = VirtualClock(start=T)
    stream = FakeStream()
    batches: list[tuple[float, list[int]]] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))

    task = asyncio.ensure_future(run_batches(stream, 10, 0.5, handle, clock))
    await clock.advance(2.0)  # idle before the first event: does not count
    stream.put(0)
    await clock.sleeping()
    await clock.advance(0.25)
    stream.put(1)  # a later event does not push the deadline back
    await settle()
    await clock.advance(0.125)
    stream.put(2)
    await settle()
    assert batches == []
    await clock.advance(0.125)
    assert batches == [(T + 2.5, [0, 1, 2])]
    assert clock.sleeps == [0.5]  # one timer for the batch, not one per event
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_events_that_arrive_during_a_slow_handler_keep_their_first_events_deadline() -> None:
    clock = VirtualClock(start=T)
    stream = FakeStream()
    release = asyncio.Event()
    batches: list[tuple[float, list[int]]] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))
        if len(batches) == 1:
            await release.wait()

    task = asyncio.ensure_future(run_batches(stream, 3, 0.5, handle, clock))
    stream.put(0, 1, 2)  # a full batch: into the handler at once, which holds it
    await settle()
    await clock.advance(0.25)
    stream.put(3)  # first event of the next batch: due at T + 0.75
    await settle()
    await clock.advance(0.25)
    stream.put(4)
    await settle()
    await clock.advance(0.125)
    release.set()  # at T + 0.625: the next batch waits only what is left of event 3's time
    await clock.sleeping()
    assert clock.sleeps == [0.125]
    await clock.advance(0.125)
    assert batches == [(T, [0, 1, 2]), (T + 0.75, [3, 4])]
    stream.put(5)
    await clock.sleeping()
    release.clear()
    await clock.advance(0.5)
    assert batches[2:] == [(T + 1.25, [5])]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_every_event_is_held_until_the_handler_acks_it() -> None:
    clock = VirtualClock()
    stream = FakeStream()
    seen: list[Ev] = []

    async def handle(batch: list[Ev]) -> None:
        seen.extend(batch)

    task = asyncio.ensure_future(run_batches(stream, 3, 0.05, handle, clock))
    evs = stream.put(*range(7))
    await clock.sleeping()
    await clock.advance(0.05)
    assert seen == evs  # each event exactly once, in order
    # faust's ack on moving on leaves each message with the batcher's reference only
    assert [e.message.refcount for e in evs[:-1]] == [1] * 6
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_slow_handler_stops_the_stream_after_one_more_full_buffer() -> None:
    clock = VirtualClock()
    stream = FakeStream()
    release = asyncio.Event()
    handled: list[list[int]] = []

    async def handle(batch: list[Ev]) -> None:
        handled.append(offsets(batch))
        await release.wait()

    task = asyncio.ensure_future(run_batches(stream, 5, 0.01, handle, clock))
    stream.put(*range(30))
    await settle()
    await clock.advance(1.0)
    assert handled == [[0, 1, 2, 3, 4]]
    # one batch in the handler, one full buffer waiting: the stream is not read any further
    assert stream.yielded == 10
    release.set()
    await settle()
    assert [o for b in handled for o in b] == list(range(30))
    assert clock.sleeps == []  # only full batches: the timer never ran
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_handler_error_ends_the_loop_with_that_error() -> None:
    clock = VirtualClock()
    stream = FakeStream()

    async def handle(batch: list[Ev]) -> None:
        raise RuntimeError("output not delivered")

    task = asyncio.ensure_future(run_batches(stream, 2, 0.01, handle, clock))
    stream.put(0, 1)
    await settle()
    stream.put(2)  # the next event surfaces the failure
    with pytest.raises(RuntimeError, match="output not delivered"):
        await asyncio.wait_for(task, 1)


async def test_a_handler_error_ends_the_loop_even_when_no_event_follows() -> None:
    """Before, the error surfaced only with the next event: on a quiet partition, never."""
    clock = VirtualClock()
    stream = FakeStream()

    async def handle(batch: list[Ev]) -> None:
        raise RuntimeError("output not delivered")

    task = asyncio.ensure_future(run_batches(stream, 2, 0.01, handle, clock))
    evs = stream.put(0)  # a batch cut by the time limit: the loop waits for the stream
    await clock.sleeping()
    await clock.advance(0.01)
    with pytest.raises(RuntimeError, match="output not delivered"):
        await asyncio.wait_for(task, 1)
    assert all(e.message.refcount >= 1 for e in evs)  # still held: never committed


async def test_cancelling_stops_the_flusher_and_leaves_the_buffer_unacked() -> None:
    clock = VirtualClock()
    stream = FakeStream()
    handled: list[int] = []
    started = asyncio.Event()

    async def handle(batch: list[Ev]) -> None:
        started.set()
        await clock.sleep(10)  # never advanced: a handler that does not finish
        handled.extend(e.message.offset for e in batch)  # pragma: no cover - cancelled first

    task = asyncio.ensure_future(run_batches(stream, 2, 0.01, handle, clock))
    evs = stream.put(0, 1, 2)
    await asyncio.wait_for(started.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handled == []
    assert all(e.message.refcount >= 1 for e in evs)  # still held: never committed
    assert clock.pending() == []  # the handler's sleep was cancelled with the flusher, nothing left behind


async def test_with_an_idle_limit_a_batch_closes_once_its_partition_is_quiet() -> None:
    clock = VirtualClock(start=T)
    stream = FakeStream()
    batches: list[tuple[float, list[int]]] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))

    reasons: list[str] = []
    task = asyncio.ensure_future(run_batches(stream, 10, 0.5, handle, clock, idle_s=0.01, closed=reasons.append))
    stream.put(0, 1)
    await settle()
    await clock.advance(0.005)
    stream.put(2)  # within the idle limit of the last event: the batch waits for more
    await settle()
    await clock.advance(0.005)
    assert batches == []
    await clock.advance(0.005)
    assert batches == [(T + 0.015, [0, 1, 2])]  # 10 ms after its last event, long before 0.5 s
    for i in range(3, 53):  # a steady stream, never quiet for 10 ms: batches fill up as without the limit
        stream.put(i)
        await settle()
        await clock.advance(0.009)
    assert [b for _, b in batches[1:]] == [list(range(k, k + 10)) for k in range(3, 53, 10)]
    assert reasons == ["idle"] + ["size"] * 5
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_idle_limit_counts_quiet_only_from_when_the_handler_is_free_again() -> None:
    """While ``handle`` runs the loop is busy and nothing can arrive (a backlog waits in the
    consumer): the batch after it must not close at once as if its partition had been quiet."""
    clock = VirtualClock(start=T)
    stream = FakeStream()
    release = asyncio.Event()
    batches: list[tuple[float, list[int]]] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))
        if len(batches) == 1:
            await release.wait()

    task = asyncio.ensure_future(run_batches(stream, 10, 0.5, handle, clock, idle_s=0.01))
    stream.put(0)
    await settle()
    await clock.advance(0.01)
    assert batches == [(T + 0.01, [0])]
    stream.put(1)  # arrives while the first batch is handled
    await settle()
    await clock.advance(0.1)  # the handler runs on: 100 ms without an event
    release.set()
    await settle()
    assert len(batches) == 1  # not closed at once: quiet counts from now
    await clock.advance(0.005)
    stream.put(2)
    await settle()
    await clock.advance(0.01)
    assert batches[1:] == [(T + 0.125, [1, 2])]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_under_a_backlog_the_idle_limit_does_not_cut_batches_short() -> None:
    """Quiet while the partition has more records at the broker (the other partitions' batches held
    the loop) does not close a batch: it waits for the size or time limit as without the idle limit."""
    clock = VirtualClock(start=T)
    stream = FakeStream()
    highwater = [100]  # the broker has offsets up to 99
    batches: list[tuple[float, list[int]]] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))

    def behind(ev: Ev) -> bool:
        return ev.message.offset + 1 < highwater[0]

    reasons: list[str] = []
    task = asyncio.ensure_future(
        run_batches(stream, 10, 0.5, handle, clock, idle_s=0.01, behind=behind, closed=reasons.append)
    )
    stream.put(0, 1)
    await settle()
    await clock.advance(0.2)  # 200 ms of quiet, but offsets 2..99 wait at the broker
    assert batches == []
    stream.put(*range(2, 10))
    await settle()
    assert batches == [(T + 0.2, list(range(10)))]  # full
    stream.put(10)
    await settle()
    await clock.advance(0.5)
    assert batches[1:] == [(T + 0.7, [10])]  # the time limit, not the idle one
    highwater[0] = 12  # caught up but for offset 11
    stream.put(11)
    await settle()
    await clock.advance(0.01)
    assert batches[2:] == [(T + 0.71, [11])]  # its partition is quiet and nothing more is there
    assert reasons == ["size", "window", "idle"]  # what closed each batch (stream_score_batches_total)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_batch_that_found_more_waiting_closes_once_a_later_look_finds_none() -> None:
    """More waiting at the first look (the consumer had the new high watermark, not yet its position
    past a transaction's commit marker): another look after each idle_s of quiet; the batch closes
    at the first that finds nothing more, not at the time limit."""
    clock = VirtualClock(start=T)
    stream = FakeStream()
    more = [True]
    looks: list[float] = []
    batches: list[tuple[float, list[int]]] = []
    reasons: list[str] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))

    def behind(ev: Ev) -> bool:
        looks.append(clock.monotonic())
        return more[0]

    task = asyncio.ensure_future(
        run_batches(stream, 10, 0.5, handle, clock, idle_s=0.01, behind=behind, closed=reasons.append)
    )
    stream.put(0)
    await settle()
    await clock.advance(0.02)
    assert batches == [] and looks == [T + 0.01, T + 0.02]
    more[0] = False
    await clock.advance(0.01)
    assert batches == [(T + 0.03, [0])] and reasons == ["idle"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_urgent_event_closes_its_batch_at_once_unless_its_partition_has_a_backlog() -> None:
    """An ``ad_request``'s decision waits for nothing else in its batch: the batch goes as soon as
    it is in (or the rest of its fetch), not after the idle or time limit; under a backlog batches
    stay full."""
    clock = VirtualClock(start=T)
    stream = FakeStream()
    highwater = [0]
    release = asyncio.Event()
    batches: list[tuple[float, list[int]]] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))
        if len(batches) == 2:
            await release.wait()

    def behind(ev: Ev) -> bool:
        return ev.message.offset + 1 < highwater[0]

    def urgent(ev: Ev) -> bool:
        return ev.message.offset % 10 == 7

    reasons: list[str] = []
    task = asyncio.ensure_future(
        run_batches(stream, 5, 0.5, handle, clock, idle_s=0.01, behind=behind, closed=reasons.append, urgent=urgent)
    )
    stream.put(5, 6)
    await settle()
    await clock.advance(0.005)
    assert batches == []  # within the idle limit: waits for more
    stream.put(7)
    await settle()
    assert batches == [(T + 0.005, [5, 6, 7])]  # closed by 7 at once, no idle or time wait
    stream.put(17)
    await settle()
    assert batches[1:] == [(T + 0.005, [17])]  # alone, at once; its handler now runs until released
    stream.put(18, 27, 28)  # 27 arrives while the handler runs: its batch goes the moment it is free
    await settle()
    await clock.advance(0.1)
    assert len(batches) == 2
    release.set()
    await settle()
    assert batches[2:] == [(pytest.approx(T + 0.105), [18, 27, 28])]
    highwater[0] = 100  # a backlog: an urgent event does not cut the batch short
    stream.put(30, 37, 38)
    await settle()
    await clock.advance(0.2)
    assert len(batches) == 3
    stream.put(39, 40)
    await settle()
    assert batches[3:] == [(pytest.approx(T + 0.305), [30, 37, 38, 39, 40])]  # full
    highwater[0] = 50  # a fetch up to offset 49: 47 is urgent, 48 and 49 came with it
    stream.put(47)
    await settle()
    assert len(batches) == 4  # more of its fetch is on its way
    stream.put(48, 49)
    await settle()
    assert batches[4:] == [(pytest.approx(T + 0.305), [47, 48, 49])]  # closed with the fetch's last record
    assert reasons == ["urgent", "urgent", "urgent", "size", "urgent"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("idle_s", [0.01, 0.0])
async def test_under_a_backlog_a_batch_outlasts_its_window_up_to_the_backlog_limit(idle_s: float) -> None:
    """With ``backlog_s``, a batch whose partition still has records waiting when ``max_s`` is up
    stays open for ``max_n`` events (its events wait for the backlog anyway), closes once a look
    finds nothing more waiting, and at the latest ``backlog_s`` after its first event."""
    clock = VirtualClock(start=T)
    stream = FakeStream()
    highwater = [100]
    batches: list[tuple[float, list[int]]] = []
    reasons: list[str] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))

    def behind(ev: Ev) -> bool:
        return ev.message.offset + 1 < highwater[0]

    task = asyncio.ensure_future(
        run_batches(stream, 10, 0.5, handle, clock, idle_s=idle_s, behind=behind, closed=reasons.append, backlog_s=2.0)
    )
    stream.put(0, 1)
    await settle()
    await clock.advance(0.7)  # past the window, offsets 2..99 still wait
    assert batches == []
    stream.put(*range(2, 10))
    await settle()
    assert batches == [(T + 0.7, list(range(10)))]  # full: one batch where the window would have made two
    stream.put(10)
    await settle()
    await clock.advance(0.6)  # the window is up at T + 1.2
    assert len(batches) == 1
    highwater[0] = 11  # caught up: the next look closes it
    await clock.advance(0.5)
    assert len(batches) == 2
    at, got = batches[1]
    assert got == [10] and T + 1.2 < at <= T + 1.7  # after the window, at a look, not at the backlog limit
    highwater[0] = 100
    stream.put(11)  # at T + 1.8, with a backlog behind it that never ends
    await settle()
    await clock.advance(1.99)
    assert len(batches) == 2
    await clock.advance(0.02)
    assert batches[2:] == [(pytest.approx(T + 1.8 + 2.0), [11])]  # the backlog limit, from its first event
    assert reasons == ["size", "backlog", "backlog"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_without_a_backlog_limit_the_window_closes_batches_as_before() -> None:
    clock = VirtualClock(start=T)
    stream = FakeStream()
    batches: list[tuple[float, list[int]]] = []
    reasons: list[str] = []

    async def handle(batch: list[Ev]) -> None:
        batches.append((clock.monotonic(), offsets(batch)))

    task = asyncio.ensure_future(
        run_batches(stream, 10, 0.5, handle, clock, idle_s=0.01, behind=lambda ev: True, closed=reasons.append)
    )
    stream.put(0)
    await settle()
    await clock.advance(0.5)
    assert batches == [(T + 0.5, [0])] and reasons == ["window"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
