"""faust's aiokafka transport: commits that the worker decides, and a cheaper hand-off of fetched records.

:class:`LedgerConsumer` commits, on the topics the app's ledger tracks, the offsets the ledger
allows (stream/worker/delivery.py) instead of those faust's acks would give; faust still moves
the commits to the broker, on its schedule and at rebalances.

faust's ``Consumer._drain_messages`` hands every fetched record over with
``wait_first(callback(message), suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per
record, so that a rebalance (which sets ``suspend_flow``), a stop or a crash can interrupt a
hand-off blocked on a full stream buffer.

:class:`Consumer` keeps faust's loop line for line and replaces only that call (see
:class:`_Interrupt`): the hand-off still runs as its own task on the next turn of the event loop
and is still raced against the same three events, so records reach the streams in the same
order and with the same interleaving with rebalances as in faust.

It also notes when each record reached the worker's event loop (``message.time_in``, wall
clock; faust's ``Monitor`` sensor, which the worker does not run, is its only other writer): the
``fetch`` and ``queue`` stages of ``stream_stage_seconds`` (docs/worker.md, "Latency").

Both consumers also tell whether a partition has records after a given one that the worker has
not been handed yet (:meth:`LedgerConsumer.more_after`, the batch idle limit's backlog check):
unlike ``offset + 1 < highwater``, it does not count control records (a transactional producer's
commit markers, which the consumer skips), so a topic written in transactions is caught up once
its last record is delivered.

Two faster replacements that ran the hand-off inline were tried and dropped: under load they
let a record through after a seek had reset its partition's read offset, and the rebalance test
then missed a record in about one run in five (docs/worker.md, "Rebalances").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver


class _Interrupt:
    """faust's ``wait_first(callback(message), suspend_flow.wait())``, at one task per record.

    ``wait_first`` starts four tasks per record: the hand-off, and one waiting on each of
    ``suspend_flow``, ``_stopped`` and ``_crashed``. Those three waits are the same for every
    record, so one long-lived task waits on all of them here; per record only the hand-off runs
    as a task, raced against it exactly as faust races it: the hand-off starts on the next turn of
    the event loop, and if the flow is suspended (or the consumer stops or crashes) first, the
    hand-off is cancelled and the loop goes on.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *events: Any) -> None:
        self.loop = loop
        self.events = events
        self.fired = loop.create_future()
        self._task: asyncio.Task[Any] | None = None

    async def _watch(self) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in self.events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not self.fired.done():
            self.fired.set_result(None)

    def _arm(self) -> None:
        if self.fired.done() and not any(e.is_set() for e in self.events):
            self.fired = self.loop.create_future()  # the flow resumed: watch again
            self._task = None
        if self._task is None and not self.fired.done():
            self._task = asyncio.ensure_future(self._watch())

    async def race(self, coro: Awaitable[Any]) -> bool:
        """Run the hand-off ``coro`` unless the flow stops first; whether it ran to the end."""
        self._arm()
        task = asyncio.ensure_future(coro)
        if not self.fired.done():
            waiter = self.loop.create_future()

            def wake(_: Any) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            task.add_done_callback(wake)
            self.fired.add_done_callback(wake)
            try:
                await waiter
            except BaseException:  # the loop itself is cancelled: so is its hand-off, as in wait_first
                task.cancel()
                raise
            finally:
                self.fired.remove_done_callback(wake)
                task.remove_done_callback(wake)
        else:
            # faust's wait_first when a waited event is already set: both finish in the next
            # turn; the hand-off still gets its first step.
            await asyncio.sleep(0)
        if not task.done():
            task.cancel()
            return False
        if task.cancelled():
            return False
        if task.exception() is not None:
            task.result()  # propagate, as wait_first does
        return True

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


def more_waiting(offset: int, highwater: int | None, position: int | None, last_fetched: int | None) -> bool:
    """Whether a partition has a record after ``offset`` that the consumer has not handed over yet.

    ``highwater``: the broker's, as of the consumer's last fetch (None: nothing known, nothing
    waiting); ``position``: the consumer's read position, past every record its fetches returned
    and the control records after them (which are never returned; None: not known, more
    waiting); ``last_fetched``: the offset of the last record its fetches returned (None: none).
    A record past ``offset`` below ``highwater`` is either still at the broker (``position`` below
    ``highwater``), or fetched and not yet handed over (``last_fetched`` past ``offset``), or a
    control record.

    >>> more_waiting(9, 10, 10, 9)  # the last record
    False
    >>> more_waiting(9, 11, 11, 9)  # followed by a transaction's commit marker only
    False
    >>> more_waiting(9, 11, 10, 9)  # a record at the broker
    True
    >>> more_waiting(9, 11, 11, 10)  # a record fetched, not yet handed over
    True
    >>> more_waiting(9, 11, 11, None)  # read to the end (after a restart at 10) and no record found
    False
    """
    if highwater is None or offset + 1 >= highwater:
        return False
    if position is None or position < highwater:
        return True
    return last_fetched is not None and last_fetched > offset


class FetchThread(driver.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, with the fetch settings of the app (``fetch_settings``).

    faust hard-codes ``fetch_max_wait_ms=1500`` and leaves ``fetch_min_bytes`` at 1: a live
    stream then gets a fetch answered for every few records (a round trip and a response per
    fetch, for the worker and the broker), while a fetch of an idle consumer waits 1.5 s.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        settings = getattr(self.app, "fetch_settings", None)
        if settings is not None:  # read by AIOKafkaConsumer.start(), which builds the fetcher
            consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = settings  # noqa: SLF001
        return consumer

    def read_position(self, tp: Any) -> int | None:
        """aiokafka's read position of ``tp`` (None: not known), read from the app's thread.

        aiokafka advances it when its ``getmany`` returns records, and past control records when a
        fetch brings them (also when nothing is returned): the int it replaces is read as is.
        """
        try:
            state = self._consumer._subscription.subscription.assignment.state_value(tp)  # type: ignore[union-attr]  # noqa: SLF001
            return None if state is None else state._position  # noqa: SLF001 - None until a position is known
        except AttributeError:  # no consumer, subscription or assignment (yet, or any more)
            return None


class LedgerConsumer(driver.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: per partition: the offset of the last record the consumer's fetches returned (:meth:`more_after`)
        self.fetched_last: dict[Any, int] = {}

    def _new_consumer_thread(self) -> Any:
        return FetchThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        records = await super()._getmany(active_partitions, timeout)
        last = self.fetched_last
        for tp, got in records.items():
            if got:
                last[tp] = got[-1].offset
        return records

    def more_after(self, tp: Any, offset: int) -> bool:
        """Whether ``tp`` has a record after ``offset`` not handed to the worker yet (:func:`more_waiting`).

        The position is aiokafka's as its thread leaves it; ``fetched_last`` is what this loop has
        received. For the one hand-over between the threads after aiokafka's ``getmany``, the
        position is past records ``fetched_last`` does not show yet: a batch that looks then may
        close one fetch early. Under a backlog the position is below the high watermark but for
        its last fetch, so no run of batches is cut short.
        """
        highwater = self.highwater(tp)
        thread: FetchThread = self._thread  # type: ignore[assignment]  # _new_consumer_thread's
        return more_waiting(offset, highwater, thread.read_position(tp), self.fetched_last.get(tp))

    def _new_offset(self, tp: Any) -> int | None:
        ledger = getattr(self.app, "ledger", None)
        if ledger is None or not ledger.tracks(tp.topic):
            return super()._new_offset(tp)
        # faust's acks of these partitions only count what is in flight (Consumer.unacked).
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        self._gap[tp].clear()
        return ledger.committable((tp.topic, tp.partition))

    async def rejoin(self) -> None:
        """Leave the current assignment and join the group again: a rebalance of the whole group.

        aiokafka's coordinator re-joins once asked; the new assignment gives every partition a
        fresh fetch state in aiokafka, and faust runs its assignment, recovery and seek again.
        """

        async def request(consumer: Any) -> None:
            consumer._coordinator.request_rejoin()  # noqa: SLF001 - aiokafka's way to ask for a rejoin

        thread = self._thread  # faust runs aiokafka on this thread's loop
        await thread.call_thread(request, thread._ensure_consumer())  # noqa: SLF001 - faust's aiokafka consumer


class LedgerTransport(driver.Transport):
    Consumer = LedgerConsumer


class Consumer(LedgerConsumer):
    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - run by the worker tests
        # faust's loop (faust/transport/consumer.py) with only its wait_first replaced.
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set  # noqa: SLF001 - faust's own loop, copied
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        loop = asyncio.get_running_loop()
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        interrupt = _Interrupt(loop, self.suspend_flow, self._stopped, self._crashed)
        now = time.time
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)  # getmany can return at once many times in a row
                if not self.should_stop:
                    async for tp, message in ait:
                        message.time_in = now()  # fetched: the latency stages (module docstring)
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            # Only a delivered record advances the read offset. faust advances it
                            # either way, so a record whose hand-off its flow control interrupted
                            # was dropped for good: the seek that ends a recovery refetches it,
                            # and the drop rule (offset below the read offset) discarded it.
                            if await interrupt.race(callback(message)):
                                set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            interrupt.close()
            unset_flag(CONSUMER_FETCHING)


class Transport(driver.Transport):
    Consumer = Consumer
