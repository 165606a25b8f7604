"""Records fetched and decoded by librdkafka under faust's group membership (``STREAM_KAFKA_FETCH=librdkafka``).

faust's aiokafka consumer keeps everything but the fetch: it joins the group with faust's assignor,
heartbeats, reads committed offsets, lists offsets for table recovery and commits (the ledger's
offsets, stream/kafka/transport.py). Its fetcher never sends a fetch: every partition it is
assigned stays paused in it (it still resolves positions, which nothing here reads).

A confluent-kafka consumer, without a group subscription, fetches the partitions faust assigns
(``incremental_assign``), in a thread of its own that waits inside librdkafka with the GIL
released, and decodes them in C. It mirrors every seek faust makes (committed offsets after a
rebalance, table recovery's changelog offsets) and faust's pauses (flow control, recovery), and
is told about revocations and assignments before faust's handlers run.

Seeks, revocations and pauses are applied by the fetch thread between two fetches, never during
one; each invalidation (seek, revocation, assignment) gives its partition a new epoch number, and
a fetch drops, once it is back on the event loop, the records of every partition invalidated
since the fetch started: those records were read from the partition's old position, and the
position the invalidation set is applied before the next fetch. A record whose partition faust
does not want at the moment (paused by recovery or by a full stream buffer) is kept, in order,
until faust asks for the partition again: librdkafka's position is already past it.

Like aiokafka's, the high watermark is the one of the last fetch response (librdkafka's cached
watermarks), and the read position is past the control records a fetch brought (librdkafka
advances it past a transaction's commit marker), so :func:`transport.more_waiting` holds.

The event loop never calls the librdkafka consumer: confluent-kafka serialises the calls on one
consumer, so a ``position()`` or ``get_watermark_offsets()`` made while the fetch thread waits in
``poll`` waits for that poll, and then for the rest of the fetch (the fetch thread takes the
consumer again at once). The event loop stood still for up to a second at every look at a
partition's backlog (``more_after``), and folds of article popularity waited behind it. The fetch
thread reads every assigned partition's position and cached high watermark at the end of each
fetch instead, and the event loop takes them, with the records, from that fetch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faust.types import ConsumerMessage

from stream.kafka import transport

log = logging.getLogger(__name__)

#: librdkafka's logical offset: the group's committed offset, else auto.offset.reset
OFFSET_STORED = -1000
#: how long one wait inside librdkafka lasts: the longest a seek or pause waits to be applied
POLL_STEP_S = 0.1
#: records one fetch returns at most (faust's broker_max_poll_records when set)
MAX_RECORDS = 10_000
#: per partition: (read position, cached high watermark), as librdkafka gives them (-1001: not known)
Marks = dict[Any, tuple[int, int]]
#: how often a fetch with records reads the marks of every assigned partition, not only of those
#: it has records of (a partition whose log grows by control records only moves without records)
MARKS_EVERY_S = 0.05


def client_config(conf: Any, *, in_transaction: bool, fetch_settings: tuple[int, int] | None) -> dict[str, Any]:
    """The librdkafka consumer's settings, from faust's (``conf``: the app's ``conf``).

    ``group.id`` is faust's group, only for the committed offsets of a partition fetched before
    faust seeks it (as aiokafka does); the consumer never subscribes, joins or commits.
    librdkafka's prefetch per partition is kept to a few fetches (its default, 64 MiB, would let a
    backlog on one topic queue far ahead of the others: docs/worker.md, "Article popularity").
    """
    min_bytes, max_wait_ms = fetch_settings or (1, 1500)
    fetch_bytes = int(conf.consumer_max_fetch_size)
    return {
        "group.id": conf.id,
        "client.id": f"{conf.broker_client_id}-fetch",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "auto.offset.reset": conf.consumer_auto_offset_reset,
        "isolation.level": "read_committed" if in_transaction else "read_uncommitted",
        "check.crcs": bool(conf.broker_check_crcs),
        "fetch.min.bytes": min_bytes,
        "fetch.wait.max.ms": max_wait_ms,
        "max.partition.fetch.bytes": fetch_bytes,
        "queued.max.messages.kbytes": max(64, 2 * fetch_bytes // 1024),
        "fetch.queue.backoff.ms": 20,
    }


class RdFetcher:
    """The librdkafka consumer: what faust wants (set on the event loop) and what librdkafka has (fetch thread).

    ``client`` is a confluent-kafka ``Consumer``. The event loop's thread calls :meth:`assign`,
    :meth:`revoke`, :meth:`seek`, :meth:`position` and :meth:`fetch`; :meth:`_fetch_blocking` runs
    in the single fetch thread, which alone changes librdkafka's assignment and pauses.
    """

    def __init__(self, client: Any, *, max_records: int = MAX_RECORDS) -> None:
        from confluent_kafka import TopicPartition

        self.client = client
        self.max_records = max_records
        self._ctp = TopicPartition
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        #: the assignment faust wants: partition -> epoch of its last invalidation
        self.epochs: dict[Any, int] = {}
        #: seeks not applied yet: partition -> offset (OFFSET_STORED: committed, or auto.offset.reset)
        self._seeks: dict[Any, int] = {}
        self._last_epoch = 0
        self._dirty = False
        self._closed = False
        #: the last offset each partition was sought to (its position until a record is read)
        self._sought: dict[Any, int] = {}
        #: librdkafka's assignment and pauses (fetch thread only)
        self._rd_assigned: set[Any] = set()
        self._rd_paused: set[Any] = set()
        self._ctps: dict[Any, Any] = {}
        #: per partition: high watermark of the last fetch response that returned its records
        self.highwaters: dict[Any, int] = {}
        #: per partition: librdkafka's read position and cached high watermark at the end of the
        #: last fetch (fetch thread's reading, taken over by the event loop with its records)
        self._positions: dict[Any, int] = {}
        self._watermarks: dict[Any, int] = {}
        self._marks_due = 0.0
        #: the positions the last marks gave (fetch thread only)
        self._marked: dict[Any, int] = {}
        #: records read from partitions faust did not want at the time, in order
        self.held: dict[Any, list[Any]] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="librdkafka-fetch")

    # -- the event loop's side ---------------------------------------------------------

    def _invalidate(self, tp: Any) -> None:
        self.epochs[tp] = self._last_epoch = next(self._counter)
        self.held.pop(tp, None)
        self._positions.pop(tp, None)  # of the old position: the sought offset stands until a fetch reads
        self._dirty = True

    def assign(self, tps: Iterable[Any]) -> None:
        """Partitions faust was assigned: fetched from the committed offset unless sought first."""
        with self._lock:
            for tp in tps:
                self._invalidate(tp)
                self._seeks[tp] = OFFSET_STORED
                self._sought.pop(tp, None)

    def revoke(self, tps: Iterable[Any]) -> None:
        """Partitions faust lost: none of their records is returned from now on."""
        with self._lock:
            for tp in tps:
                self.epochs.pop(tp, None)
                self._seeks.pop(tp, None)
                self._sought.pop(tp, None)
                self.held.pop(tp, None)
                self.highwaters.pop(tp, None)
                self._positions.pop(tp, None)
                self._watermarks.pop(tp, None)
            self._dirty = True

    def seek(self, tp: Any, offset: int) -> None:
        """Read ``tp`` from ``offset`` on (an assigned partition; others are ignored, as revoked)."""
        with self._lock:
            if tp not in self.epochs:
                return
            self._invalidate(tp)
            self._seeks[tp] = offset
            self._sought[tp] = offset

    def position(self, tp: Any) -> int | None:
        """The offset of the next record of ``tp`` to read (None: not known yet)."""
        if tp not in self.epochs:
            return None
        pending = self._seeks.get(tp)
        if pending is not None and pending >= 0:
            return pending
        if pending is None:
            got = self._positions.get(tp)
            if got is not None and got >= 0:
                return got
        sought = self._sought.get(tp)
        return sought if sought is not None and sought >= 0 else None

    def watermark(self, tp: Any) -> int | None:
        """librdkafka's high watermark of ``tp`` as of the last fetch (None: no fetch response yet)."""
        if tp not in self.epochs:
            return None
        high = self._watermarks.get(tp)
        if high is None or high < 0:
            return self.highwaters.get(tp)
        self.highwaters[tp] = high
        return high

    async def fetch(self, active: set[Any], timeout: float) -> tuple[list[Any], int]:
        """librdkafka's next records (messages, in order per partition) and the epoch they were read under.

        Takes over the positions and high watermarks the fetch thread read at the end of the fetch,
        except for partitions invalidated since it began (their reading is of the old position).
        """
        if self._closed:
            return [], self._last_epoch
        loop = asyncio.get_running_loop()
        messages, epoch, marks = await loop.run_in_executor(
            self._executor, self._fetch_blocking, frozenset(active), timeout
        )
        epochs = self.epochs
        positions = self._positions
        watermarks = self._watermarks
        for tp, (position, high) in marks.items():
            tp_epoch = epochs.get(tp)
            if tp_epoch is None or tp_epoch > epoch:
                continue
            positions[tp] = position
            watermarks[tp] = high
        return messages, epoch

    def close(self) -> None:
        """Stop fetching and close the librdkafka consumer (waits for a fetch under way, at most ``POLL_STEP_S``)."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=True)
        try:
            self.client.close()
        except Exception as exc:  # already closed
            log.debug("closing the fetch consumer: %s", exc)

    # -- the fetch thread's side ---------------------------------------------------------

    def _ctp_of(self, tp: Any, offset: int | None = None) -> Any:
        if offset is not None:
            return self._ctp(tp[0], tp[1], offset)
        ctp = self._ctps.get(tp)
        if ctp is None:
            ctp = self._ctps[tp] = self._ctp(tp[0], tp[1])
        return ctp

    def _apply(self, active: frozenset[Any]) -> int:
        """Bring librdkafka's assignment, positions and pauses to what faust wants; the epoch they reflect.

        What faust wants is read under the lock, and librdkafka is called after it is released
        (its calls wait for its own threads, which the event loop must never wait for); a change
        faust makes meanwhile has a later epoch and is applied the next time.
        """
        with self._lock:
            wanted = set(self.epochs)
            seeks, self._seeks = self._seeks, {}
            epoch = self._last_epoch
            self._dirty = False
        client = self.client
        gone = [tp for tp in self._rd_assigned if tp not in wanted]
        moved = [tp for tp in seeks if tp in self._rd_assigned]
        if gone or moved:
            # librdkafka keeps a partition's pause across its unassignment: resumed first, so that
            # a partition assigned again is fetched once faust wants it
            paused = [tp for tp in (*gone, *moved) if tp in self._rd_paused]
            if paused:
                client.resume([self._ctp_of(tp) for tp in paused])
            client.incremental_unassign([self._ctp_of(tp) for tp in (*gone, *moved)])
            self._rd_assigned.difference_update(gone)
            self._rd_assigned.difference_update(moved)
            self._rd_paused.difference_update(gone)
            self._rd_paused.difference_update(moved)
        if seeks:
            client.incremental_assign([self._ctp_of(tp, offset) for tp, offset in seeks.items()])
            self._rd_assigned.update(seeks)
        if gone or seeks:
            log.info(
                "librdkafka fetch: %d partitions left, %d (re)started (%s)",
                len(gone),
                len(seeks),
                ", ".join(f"{tp[0]}[{tp[1]}]@{offset}" for tp, offset in sorted(seeks.items())),
            )
        idle = self._rd_assigned - active
        pause = idle - self._rd_paused
        resume = self._rd_paused - idle
        if pause:
            client.pause([self._ctp_of(tp) for tp in pause])
            self._rd_paused |= pause
        if resume:
            client.resume([self._ctp_of(tp) for tp in resume])
            self._rd_paused -= resume
        return epoch

    def _marks(self, messages: list[Any]) -> Marks:
        """Read positions and cached high watermarks (-1001: none) after a fetch of ``messages``.

        Of the partitions ``messages`` has records of, and of every partition in librdkafka's
        assignment after a fetch without records or every :data:`MARKS_EVERY_S` (about 17 µs a
        partition on a loaded host: not for each of the many small fetches of a backlog).
        """
        client = self.client
        assigned = self._rd_assigned
        if not assigned:
            return {}
        now = time.monotonic()
        if not messages or now >= self._marks_due:
            self._marks_due = now + MARKS_EVERY_S
            tps = list(assigned)
        else:
            seen = {(m.topic(), m.partition()) for m in messages}
            tps = [tp for tp in assigned if (tp[0], tp[1]) in seen]
        try:
            positions = client.position([self._ctp_of(tp) for tp in tps])
        except Exception as exc:  # closed meanwhile
            log.debug("librdkafka positions: %s", exc)
            return {}
        marks: Marks = {}
        for tp, got in zip(tps, positions, strict=True):
            try:
                _, high = client.get_watermark_offsets(self._ctp_of(tp), cached=True)
            except Exception:  # no fetch response for it yet
                high = -1
            marks[tp] = (int(got.offset), int(high) if high is not None else -1)
            self._marked[tp] = int(got.offset)
        return marks

    def _moved(self) -> bool:
        """Whether a position moved since the last marks without a record (past control records:
        librdkafka moves it when a ``poll`` serves a fetch of a transaction's commit marker)."""
        tps = list(self._rd_assigned)
        try:
            positions = self.client.position([self._ctp_of(tp) for tp in tps])
        except Exception:  # closed meanwhile
            return False
        marked = self._marked
        return any(marked.get(tp, -1001) != got.offset for tp, got in zip(tps, positions, strict=True))

    def _fetch_blocking(self, active: frozenset[Any], timeout: float) -> tuple[list[Any], int, Marks]:
        client = self.client
        deadline = time.monotonic() + timeout
        if self._closed:
            return [], self._last_epoch, {}
        epoch = self._apply(active)
        if not self._rd_assigned:
            return [], epoch, {}
        messages = client.consume(self.max_records, 0)
        while not messages:
            left = deadline - time.monotonic()
            if left <= 0 or self._closed:
                return [], epoch, {} if self._closed else self._marks([])
            if self._dirty:
                epoch = self._apply(active)
            first = client.poll(min(POLL_STEP_S, left))  # waits in librdkafka, without the GIL
            if first is not None:
                messages = [first, *client.consume(self.max_records - 1, 0)]
            elif self._moved():  # the event loop learns it now, not at the end of the fetch's timeout
                return [], epoch, self._marks([])
        return messages, epoch, self._marks(messages)


class LibrdkafkaThread(transport.FetchThread):
    """faust's aiokafka consumer thread, with aiokafka's fetcher kept from fetching and a :class:`RdFetcher`."""

    fetcher: RdFetcher | None = None

    async def on_start(self) -> None:
        await super().on_start()
        _quiet_fetcher(self._consumer._fetcher)  # type: ignore[union-attr]  # noqa: SLF001 - created by start()
        factory: Callable[..., Any] | None = getattr(self.app, "fetch_consumer_factory", None)
        if factory is None:
            raise RuntimeError("STREAM_KAFKA_FETCH=librdkafka needs the app's fetch_consumer_factory")
        config = client_config(
            self.app.conf,
            in_transaction=bool(self.consumer.in_transaction),
            fetch_settings=getattr(self.app, "fetch_settings", None),
        )
        max_records = self.app.conf.broker_max_poll_records or MAX_RECORDS
        self.fetcher = RdFetcher(factory(**config), max_records=max_records)

    async def on_thread_stop(self) -> None:
        if self.fetcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.fetcher.close)
        await super().on_thread_stop()

    def verify_event_path(self, now: float, tp: Any) -> None:
        """Nothing: faust's check reads aiokafka's fetch state, which does not fetch (the worker's checks stay)."""

    def verify_recovery_event_path(self, now: float, tp: Any) -> None:
        """Nothing, as :meth:`verify_event_path`."""


def _quiet_fetcher(fetcher: Any) -> None:
    """Keep aiokafka's fetcher from fetching: every assigned partition is paused before it plans a fetch.

    It still resolves positions (a paused partition is skipped only after that), and waits on the
    pauses instead of polling.
    """
    plan = fetcher._get_actions_per_node  # noqa: SLF001 - aiokafka's per-iteration planning

    def paused_plan(assignment: Any) -> Any:
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            if not state.paused:
                state.pause()
        return plan(assignment)

    fetcher._get_actions_per_node = paused_plan  # noqa: SLF001


class LedgerConsumer(transport.LedgerConsumer):
    """The consumer of ``STREAM_KAFKA_FETCH=librdkafka``, with faust's hand-off (``STREAM_CONSUMER_HANDOFF=faust``)."""

    def _new_consumer_thread(self) -> Any:
        return LibrdkafkaThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def _rd_thread(self) -> LibrdkafkaThread:
        return self._thread  # type: ignore[return-value]  # _new_consumer_thread's

    @property
    def fetcher(self) -> RdFetcher:
        fetcher = self._rd_thread.fetcher
        if fetcher is None:
            from faust.exceptions import ConsumerNotStarted

            raise ConsumerNotStarted("Consumer thread not yet started")
        return fetcher

    def _tp(self, topic: str, partition: int) -> Any:
        key = (topic, partition)
        tp = self._tps.get(key)
        if tp is None:
            tp = self._tps[key] = self._new_topicpartition(topic, partition)
        return tp

    @property
    def _tps(self) -> dict[tuple[str, int], Any]:
        tps = self.__dict__.get("_rd_tps")
        if tps is None:
            tps = self.__dict__["_rd_tps"] = {}
        return tps

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        fetcher = self._rd_thread.fetcher
        if fetcher is not None:  # before faust's handlers: nothing of these is handed over any more
            fetcher.revoke(revoked)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        fetcher = self._rd_thread.fetcher
        if fetcher is not None:
            fetcher.assign(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    async def seek_to_committed(self) -> Mapping[Any, int]:
        committed = await self._thread.seek_to_committed()  # aiokafka reads the group's offsets
        fetcher = self.fetcher
        for tp, offset in committed.items():
            if offset and offset > 0:  # as aiokafka: no committed offset, no seek
                fetcher.seek(tp, offset)
        return committed

    async def seek_wait(self, partitions: Mapping[Any, int]) -> None:
        fetcher = self.fetcher
        read_offset = self._read_offset
        for tp, offset in partitions.items():  # faust's _seek_wait, on librdkafka
            fetcher.seek(tp, offset)
            if offset > 0:
                read_offset[tp] = offset
            else:
                read_offset.pop(tp, None)

    async def _seek(self, partition: Any, offset: int) -> None:
        self.fetcher.seek(partition, offset)

    async def position(self, tp: Any) -> int | None:
        return self.fetcher.position(tp)

    def highwater(self, tp: Any) -> int | None:  # type: ignore[override]  # None: no fetch response yet
        fetcher = self._rd_thread.fetcher
        if fetcher is None:
            return None
        highwater = fetcher.highwaters.get(tp)  # per record (faust's getmany): noted with each fetch's records
        return highwater if highwater is not None else fetcher.watermark(tp)  # a partition without records

    def more_after(self, tp: Any, offset: int) -> bool:
        """:meth:`transport.LedgerConsumer.more_after`, on librdkafka's watermark and position."""
        fetcher = self.fetcher
        highwater = fetcher.watermark(tp)
        return transport.more_waiting(offset, highwater, fetcher.position(tp), self.fetched_last.get(tp))

    def verify_event_path(self, now: float, tp: Any) -> None:
        self._rd_thread.verify_event_path(now, tp)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        if not self.flow_active:  # as faust's _fetch_records
            return {}
        fetcher = self.fetcher
        active = set(active_partitions or ())
        if any(tp in active for tp in fetcher.held):
            timeout = 0  # records held back are ready: only what librdkafka has at once comes with them
        # aiokafka's poll clock: its heartbeat leaves the group after max_poll_interval without one
        with self._rd_thread._ensure_consumer()._subscription.fetch_context():  # noqa: SLF001
            messages, epoch = await fetcher.fetch(active, timeout)
        return self._group(fetcher, messages, epoch)

    def _group(self, fetcher: RdFetcher, messages: list[Any], epoch: int) -> dict[Any, list[Any]]:
        """``messages`` per partition, without those of partitions invalidated after ``epoch``."""
        by_key: dict[tuple[str, int], list[Any]] = {}
        for m in messages:
            if m.error() is not None:
                log.warning("fetch error from librdkafka: %s", m.error())
                continue
            key = (m.topic(), m.partition())
            got = by_key.get(key)
            if got is None:
                by_key[key] = [m]
            else:
                got.append(m)
        epochs = fetcher.epochs
        held = fetcher.held
        wanted = self._active_partitions or set()  # now, not when the fetch began
        buffered = self._buffered_partitions
        last = self.fetched_last
        records: dict[Any, list[Any]] = {}
        for key, got in by_key.items():
            tp = self._tp(*key)
            tp_epoch = epochs.get(tp)
            if tp_epoch is None or tp_epoch > epoch:
                continue  # revoked or sought meanwhile: read from the old position
            if tp not in wanted and tp not in buffered:
                held.setdefault(tp, []).extend(got)
                continue
            records[tp] = got
        for tp in list(held):
            if tp in wanted or tp in buffered:
                records[tp] = held.pop(tp) + records.get(tp, [])
        highwaters = fetcher.highwaters
        for tp, got in records.items():
            offset = last[tp] = got[-1].offset()
            highwater = fetcher.watermark(tp)  # of the fetch response that brought these records
            if highwater is None or highwater <= offset:
                highwaters[tp] = offset + 1
        return records

    def _to_message(self, tp: Any, record: Any) -> ConsumerMessage:
        kind, stamp = record.timestamp()
        key = record.key()
        value = record.value()
        return ConsumerMessage(
            tp.topic,
            tp.partition,
            record.offset(),
            stamp / 1000.0 if kind else None,  # type: ignore[arg-type]  # faust's own type says float
            kind - 1 if kind else None,  # type: ignore[arg-type]  # librdkafka: 1 create, 2 log append; Kafka: 0, 1
            record.headers() or [],
            key,
            value,
            None,
            len(key) if key is not None else 0,
            len(value) if value is not None else 0,
            tp,
            generation_id=self.app.consumer_generation_id,
        )


class Consumer(LedgerConsumer, transport.Consumer):
    """The lean hand-off on librdkafka's fetch."""


class LedgerTransport(transport.LedgerTransport):
    Consumer = LedgerConsumer


class Transport(transport.Transport):
    Consumer = Consumer
