"""stream.worker.agents.batching.run_batches: size and time limits, order, holds, backpressure, errors.

The stream is a stand-in with faust's ``events()`` interface (a unit test of the batching logic;
the agents' tests drive the real thing through faust's ``test_context``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from stream.worker.agents.batching import run_batches


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


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_full_batches_go_at_once_and_the_rest_after_the_time_limit() -> None:
    stream = FakeStream()
    batches: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()

    async def handle(batch: list[Ev]) -> None:
        batches.append((loop.time(), [e.message.offset for e in batch]))

    start = loop.time()
    task = asyncio.ensure_future(run_batches(stream, 4, 0.2, handle))
    stream.put(*range(10))
    await _settle()
    assert [b for _, b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(t - start < 0.1 for t, _ in batches)  # full batches do not wait for the timer
    await asyncio.sleep(0.3)
    assert [b for _, b in batches][2:] == [[8, 9]]
    assert batches[2][0] - start >= 0.2 - 0.01  # a partial batch waits for its first event's deadline
    stream.queue.put_nowait(None)
    await asyncio.wait_for(task, 1)


async def test_every_event_is_held_until_the_handler_acks_it() -> None:
    stream = FakeStream()
    seen: list[Ev] = []

    async def handle(batch: list[Ev]) -> None:
        seen.extend(batch)

    task = asyncio.ensure_future(run_batches(stream, 3, 0.05, handle))
    evs = stream.put(*range(7))
    await asyncio.sleep(0.15)
    assert seen == evs  # each event exactly once, in order
    # faust's ack on moving on leaves each message with the batcher's reference only
    assert [e.message.refcount for e in evs[:-1]] == [1] * 6
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_slow_handler_stops_the_stream_after_one_more_full_buffer() -> None:
    stream = FakeStream()
    release = asyncio.Event()
    handled: list[list[int]] = []

    async def handle(batch: list[Ev]) -> None:
        handled.append([e.message.offset for e in batch])
        await release.wait()

    task = asyncio.ensure_future(run_batches(stream, 5, 0.01, handle))
    stream.put(*range(30))
    await asyncio.sleep(0.1)
    assert handled == [[0, 1, 2, 3, 4]]
    # one batch in the handler, one full buffer waiting: the stream is not read any further
    assert stream.yielded == 10
    release.set()
    await asyncio.sleep(0.1)
    assert [o for b in handled for o in b] == list(range(30))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_handler_error_ends_the_loop_with_that_error() -> None:
    stream = FakeStream()

    async def handle(batch: list[Ev]) -> None:
        raise RuntimeError("output not delivered")

    task = asyncio.ensure_future(run_batches(stream, 2, 0.01, handle))
    stream.put(0, 1)
    await asyncio.sleep(0.05)
    stream.put(2)  # the next event surfaces the failure
    with pytest.raises(RuntimeError, match="output not delivered"):
        await asyncio.wait_for(task, 1)


async def test_a_handler_error_ends_the_loop_even_when_no_event_follows() -> None:
    """Before, the error surfaced only with the next event: on a quiet partition, never."""
    stream = FakeStream()

    async def handle(batch: list[Ev]) -> None:
        raise RuntimeError("output not delivered")

    task = asyncio.ensure_future(run_batches(stream, 2, 0.01, handle))
    evs = stream.put(0)  # a batch cut by the time limit: the loop waits for the stream
    with pytest.raises(RuntimeError, match="output not delivered"):
        await asyncio.wait_for(task, 1)
    assert all(e.message.refcount >= 1 for e in evs)  # still held: never committed


async def test_cancelling_stops_the_flusher_and_leaves_the_buffer_unacked() -> None:
    stream = FakeStream()
    handled: list[int] = []
    started = asyncio.Event()

    async def handle(batch: list[Ev]) -> None:
        started.set()
        await asyncio.sleep(10)
        handled.extend(e.message.offset for e in batch)  # pragma: no cover - cancelled first

    task = asyncio.ensure_future(run_batches(stream, 2, 0.01, handle))
    evs = stream.put(0, 1, 2)
    await asyncio.wait_for(started.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handled == []
    assert all(e.message.refcount >= 1 for e in evs)  # still held: never committed
