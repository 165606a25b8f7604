"""Micro-batches of a faust stream: up to ``max_n`` events or ``max_s`` seconds, whichever first.

This replaces faust's ``Stream.take_events`` in both agents, for three reasons:

* Every event is held (:func:`stream.worker.delivery.hold`) the moment it arrives, so no ack of
  faust's (when the iteration moves on, or when a rebalance cancels the actor) can make its offset
  committable before ``handle`` has acked it (:meth:`stream.worker.delivery.Acks.ack`). Events
  of an abandoned batch stay uncommitted, and the partition's next owner reads them again.
* A batch is exactly the events the stream yielded, in order: no pairing of buffered values with
  ``stream.current_event``.
* The time limit counts from the batch's first event, on an injected clock
  (:mod:`stream.clock`; the unit tests move a virtual one).

One task iterates the stream and fills the buffer; a second one hands the buffer to ``handle``
when it is full or its first event is ``max_s`` old. While ``handle`` runs, the next buffer
fills, up to ``max_n`` events; then the iterating task waits, which stops the stream and, through
faust's flow control, the fetching of that partition.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from faust.streams import _current_event

from stream.clock import SYSTEM, Clock, wait_event
from stream.worker.delivery import hold
from stream.worker.parsing import Record

Handler = Callable[[list[Any]], Awaitable[None]]


async def run_batches(
    stream: Any,
    max_n: int,
    max_s: float,
    handle: Handler,
    clock: Clock = SYSTEM,
    idle_s: float = 0.0,
    behind: Callable[[Any], bool] | None = None,
    closed: Callable[[str], None] | None = None,
    urgent: Callable[[Any], bool] | None = None,
    backlog_s: float = 0.0,
) -> None:
    """Feed ``handle`` the stream's events in batches until the stream ends or the task is cancelled.

    ``idle_s`` > 0 also closes a batch once no event has arrived for that long: a live stream's
    records come a fetch at a time, and its batch need not wait out ``max_s`` for more
    (docs/worker.md, "Latency"). ``behind(event)``: whether the partition has records after the
    buffer's last event that the stream has not yielded yet (a backlog); then quiet is no sign
    that the fetch is in (the other partitions' batches held the event loop), and the batch waits
    for ``max_n`` or ``max_s`` as without the idle limit, unless a later look, after another
    ``idle_s`` of quiet, finds nothing more waiting. ``closed(reason)`` is told why each
    batch closed: ``"size"`` (``max_n``), ``"window"`` (``max_s``), ``"idle"`` (``idle_s``) or
    ``"urgent"`` (below) or ``"backlog"`` (``backlog_s``, below).

    ``urgent(event)``: the batch closes as soon as it holds such an event (an ``ad_request``,
    whose decision an ad server waits for) and the partition has nothing more at the broker
    (``behind``): at once, or with the last record of the fetch it came in. Under a backlog
    batches stay full, and the event's wait is the backlog's anyway.

    ``backlog_s`` > ``max_s``: a batch whose partition has a backlog (``behind``) when ``max_s``
    is up stays open for ``max_n`` events, up to ``backlog_s`` after its first event, and closes
    as soon as a look (every ``idle_s``, or at ``max_s`` steps without the idle limit) finds
    nothing more waiting. Its events already wait for the backlog ahead of them, and the events
    behind them wait less with full batches: per-batch work (one state write per user, one
    predict per model, the publish) is shared by ``max_n`` events instead of ``max_s``'s worth
    (``"backlog"``).

    An exception from ``handle`` ends the loop at once and propagates, even while no event
    arrives: the failed batch and the buffered events stay held (uncommitted).
    """
    buf: list[Any] = []
    first_at = last_at = 0.0
    hot = False  # the buffer holds an urgent event
    arrived = asyncio.Event()  # the buffer has at least one event
    full = asyncio.Event()  # the buffer has max_n events (or an urgent one): hand it over now
    taken = asyncio.Event()  # the flusher took the buffer: there is room again

    async def flusher() -> None:
        nonlocal buf, hot
        while True:
            await arrived.wait()
            reason = "window"
            window = first_at + max_s
            if idle_s <= 0:
                while not full.is_set():  # until full or the window ends (extended under a backlog)
                    left = window - clock.monotonic()
                    if left <= 0:
                        if not extend():
                            break
                        window = min(window + max_s, first_at + backlog_s)
                        reason = "backlog"
                        continue
                    await wait_event(full, left, clock)
            else:
                # Quiet counts from the later of the last event and now: while ``handle`` ran, the
                # loop was busy and no event could arrive, which is no sign that none is waiting.
                since = clock.monotonic()
                while not full.is_set():  # until full, the window's end, or idle_s of quiet
                    quiet = max(last_at, since) + idle_s
                    left = min(window, quiet) - clock.monotonic()
                    if left <= 0:
                        if quiet >= window and not extend():
                            break
                        if quiet >= window:  # a backlog: the window grows, looked at every idle_s
                            window, reason = first_at + backlog_s, "backlog"
                        elif not more():
                            reason = "idle" if reason == "window" else reason
                            break
                        # more is there: quiet means nothing yet; look again after another idle_s
                        since = clock.monotonic()
                        continue
                    await wait_event(full, left, clock)
            if full.is_set():
                reason = "size" if len(buf) >= max_n else "urgent"
            batch, buf, hot = buf, [], False
            arrived.clear()
            full.clear()
            taken.set()
            if closed is not None:
                closed(reason)
            await handle(batch)

    def more() -> bool:
        return behind is not None and bool(buf) and behind(buf[-1])

    def extend() -> bool:
        """Whether the window, now ended, stays open: a backlog, and ``backlog_s`` not yet up."""
        return clock.monotonic() < first_at + backlog_s and more()

    task = asyncio.ensure_future(flusher())
    me = asyncio.current_task()
    seen = False  # the loop below found the handler's error itself

    def interrupt(flushed: asyncio.Future[None]) -> None:
        if me is not None and not seen and not flushed.cancelled() and flushed.exception() is not None:
            me.cancel()  # the loop may be waiting for an event that never comes

    task.add_done_callback(interrupt)
    room: asyncio.Future[Any] | None = None
    try:
        async for event in stream.events():
            hold(event)  # see the module docstring
            last_at = clock.monotonic()
            if not buf:
                first_at = last_at
                arrived.set()
            buf.append(event)
            if urgent is not None and not full.is_set():
                hot = hot or urgent(event)
                if hot and not (behind is not None and behind(event)):
                    full.set()  # close it now; no wait for room: the buffer is not full
            if len(buf) >= max_n:
                taken.clear()
                full.set()
                room = asyncio.ensure_future(taken.wait())
                await asyncio.wait([task, room], return_when=asyncio.FIRST_COMPLETED)
                room.cancel()
            if task.done():
                seen = True
                task.result()  # the handler failed: raise it here
    except asyncio.CancelledError:
        if me is not None and task.done() and not task.cancelled() and task.exception() is not None:
            me.uncancel()
            task.result()  # the cancel came from interrupt(): raise the handler's error instead
        raise
    finally:
        for t in (room, task):
            if t is not None and not t.done():
                t.cancel()
        await asyncio.gather(task, return_exceptions=True)


def records_of(batch: Sequence[Any]) -> list[Record]:
    """The input records of a batch of faust events."""
    out = []
    for ev in batch:
        msg = ev.message
        ts = msg.timestamp
        out.append(Record(msg.key, msg.value, msg.topic, msg.partition, msg.offset, int(ts * 1000) if ts else None))
    return out


def enter_partition(event: Any) -> None:
    """Make ``event`` the current event of this task, as faust does inside ``async for``.

    faust derives a table write's changelog partition from the current event, which the batch
    handler (a task of its own, see :func:`run_batches`) does not have. With
    ``isolated_partitions`` every event of a batch comes from the same partition, so any event of
    the batch is the right one.
    """
    _current_event.set(weakref.ref(event))
