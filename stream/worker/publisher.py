"""The worker's output publisher: it produces each batch's outputs and acks the batch once they are confirmed.

:class:`Publisher` queues a batch's predictions, decisions, dead letters and forwarded article
events on one confluent-kafka producer and its rows on the ClickHouse sink, then hands the batch
to the commit protocol (stream/worker/delivery.py), which acks it once all of them are confirmed
and the partition's earlier batches are acked. It also holds what the agents share: settings,
tables, topics, models, the processor, the sink and metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException

from stream.clickhouse.sink import ClickHouseSink
from stream.config import Settings
from stream.errors import InfraError
from stream.events.records import DecisionRecord
from stream.events.schema import fit_dead_letter
from stream.kafka.faust_producer import DeliveryError
from stream.kafka.limits import record_budget
from stream.kafka.partitioner import partition_for
from stream.models.scoring import ModelSet
from stream.worker.agents.gaps import GapFiller, find_gaps
from stream.worker.delivery import Acks, Ledger, Partition, Span
from stream.worker.metrics import WorkerMetrics, observe_many, observe_n
from stream.worker.parsing import Record
from stream.worker.processor import BatchProcessor, Outputs
from stream.worker.scores import LatestScores

log = logging.getLogger(__name__)


class OutputError(InfraError):
    """An output Kafka did not take: the worker stops, and its batch stays uncommitted.

    ``error`` is librdkafka's name for the error (e.g. ``MSG_SIZE_TOO_LARGE``).
    """

    def __init__(self, topic: str, error: str, detail: str) -> None:
        super().__init__(f"output to topic {topic!r} not delivered: {error} ({detail})")
        self.topic = topic
        self.error = error


def produce_error(topic: str, err: KafkaError, max_message_bytes: int) -> OutputError | None:
    """What a librdkafka error on an output record means: ``None`` to retry, else the error that stops the worker.

    Only a full local queue is retried here: librdkafka itself retries what the broker reports as
    transient until ``message.timeout.ms``, so any error it reports is final. Per-record causes
    cannot occur: every record is fitted under the limit before it is produced (dead letters
    shrunk, article events chunked by size; predictions and decisions are a few KB by schema).
    A size error therefore means that the cluster accepts less than the worker was told.

    >>> produce_error("t", KafkaError(KafkaError._QUEUE_FULL), 1024) is None
    True
    >>> str(produce_error("t", KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), 1024))  # doctest: +ELLIPSIS
    "output to topic 't' not delivered: MSG_SIZE_TOO_LARGE (...; the topic's max.message.bytes is below \
STREAM_MAX_MESSAGE_BYTES=1024)"
    """
    if err.code() == KafkaError._QUEUE_FULL:  # noqa: SLF001 - librdkafka's local error code
        return None
    detail = err.str()
    if err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        detail += f"; the topic's max.message.bytes is below STREAM_MAX_MESSAGE_BYTES={max_message_bytes}"
    return OutputError(topic, err.name(), detail)


#: how long decisions made on the API's thread gather before they are handed to the sink (s)
SINK_HANDOVER_S = 0.01


def _consume_sink_wait(queued: concurrent.futures.Future[asyncio.Future[None]]) -> None:
    """Mark a sink wait's outcome as seen: the sink counts and logs its own failures."""
    if queued.cancelled() or queued.exception() is not None:
        return
    queued.result().add_done_callback(lambda f: f.cancelled() or f.exception())


class _Reports:
    """One batch's Kafka delivery reports: resolves ``future`` on the event loop once all are acknowledged.

    Called by librdkafka's delivery reports, which only the publisher's poll thread serves.
    ``on_acked`` gets the seconds from :meth:`start` (the first record queued) to the last report, on that thread.
    """

    __slots__ = ("error", "future", "loop", "max_message_bytes", "on_acked", "queued_at", "remaining")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        n: int,
        max_message_bytes: int,
        on_acked: Callable[[float], None] | None = None,
    ) -> None:
        self.loop = loop
        self.on_acked = on_acked
        self.queued_at = 0.0
        self.remaining = n
        self.max_message_bytes = max_message_bytes
        self.error: OutputError | None = None
        self.future: asyncio.Future[None] = loop.create_future()
        if n == 0:
            self.future.set_result(None)

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None and self.error is None:
            self.error = produce_error(msg.topic(), err, self.max_message_bytes) or OutputError(
                msg.topic(), err.name(), err.str()
            )
        self.remaining -= 1
        if self.remaining == 0:
            if self.on_acked is not None and self.error is None:
                self.on_acked(max(time.time() - self.queued_at, 0.0))
            with contextlib.suppress(RuntimeError):  # its loop closed (the API's, stopped): nobody waits
                self.loop.call_soon_threadsafe(self._resolve)

    def start(self) -> None:
        """The records are about to be queued (before the first one: no report can come earlier)."""
        self.queued_at = time.time()

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(None)


#: most forwarded article events per repartition record
ARTICLE_CHUNK = 500


def article_messages(events: Sequence[tuple[str, bytes]], partitions: int, max_bytes: int) -> list[tuple[int, bytes]]:
    """Forwarded article events as (partition, JSON array) records, one per partition and chunk.

    Each event goes to the partition its ``article_id`` key would get from a Java producer, so an
    article still has a single writer, but one record carries many events: the article agent's
    per-record framework cost is paid once per batch and partition instead of once per event.
    The values are the validated original bytes, so joining them makes a valid JSON array. A
    chunk holds at most :data:`ARTICLE_CHUNK` events and ``max_bytes`` bytes (an event is at most
    ``STREAM_MAX_EVENT_BYTES``, which the settings keep below one record).

    >>> article_messages([("a1", b'{"n":1}'), ("a1", b'{"n":2}')], 1, 1024)
    [(0, b'[{"n":1},{"n":2}]')]
    >>> article_messages([("a1", b'{"n":1}'), ("a1", b'{"n":2}')], 1, 10)
    [(0, b'[{"n":1}]'), (0, b'[{"n":2}]')]
    """
    groups: dict[int, list[bytes]] = {}
    for article_id, raw in events:
        groups.setdefault(partition_for(article_id.encode(), partitions), []).append(raw)
    return [
        (p, b"[" + b",".join(chunk) + b"]")
        for p, raws in groups.items()
        for chunk in _chunks(raws, ARTICLE_CHUNK, max_bytes)
    ]


def _chunks(raws: list[bytes], max_n: int, max_bytes: int) -> Iterator[list[bytes]]:
    """Consecutive runs of ``raws`` whose JSON array is at most ``max_bytes`` (and ``max_n`` long)."""
    chunk: list[bytes] = []
    size = 1  # "[" and "]", less the comma the first element does not need
    for raw in raws:
        if chunk and (len(chunk) == max_n or size + len(raw) + 1 > max_bytes):
            yield chunk
            chunk, size = [], 1
        chunk.append(raw)
        size += len(raw) + 1
    if chunk:
        yield chunk


#: full batches (``STREAM_SCORE_BATCH_SIZE`` events) whose outputs may be in flight at once
INFLIGHT_BATCHES = 8


class InFlight:
    """At most ``limit`` input events whose outputs are not confirmed yet, over all partitions.

    It bounds what a worker holds while Kafka or ClickHouse does not confirm (a ClickHouse outage
    stops consumption here). It counts events, not batches: small batches (a live stream, short
    batch windows) do not wait for ClickHouse's flush of earlier ones, where a bound of 8 batches
    made every batch after the 8th wait for one (docs/worker.md, "Latency"). A batch larger than
    ``limit`` takes the whole budget. Waiters are served in order.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1)
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, n: int) -> int:
        """Take ``n`` events of the budget (at most all of it), waiting for room; returns what was taken."""
        n = min(max(n, 1), self.limit)
        if not self._waiters and self.used + n <= self.limit:
            self.used += n
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # granted, then the waiter was cancelled
                self.release(n)
            raise
        return n

    def release(self, n: int) -> None:
        """Give back what :meth:`acquire` returned; wake the waiters that fit now, in order."""
        self.used -= n
        while self._waiters:
            m, fut = self._waiters[0]
            if fut.done():  # its waiter was cancelled
                self._waiters.popleft()
                continue
            if self.used + m > self.limit:
                break
            self._waiters.popleft()
            self.used += m
            fut.set_result(None)


def _partition_of(batch: Sequence[Any]) -> Partition:
    msg = batch[0].message
    return msg.topic, msg.partition


@dataclass
class Publisher:
    settings: Settings
    metrics: WorkerMetrics
    models: ModelSet
    processor: BatchProcessor
    sink: ClickHouseSink | None
    topics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    #: last offset handed to the processor, per (topic, partition): for the lag gauge
    positions: dict[Partition, int] = field(default_factory=dict)
    #: highest input offset handed to the processor per partition since it was assigned (holes: agents/gaps.py)
    delivered: dict[Partition, int] = field(default_factory=dict)
    #: reads input records faust's consumer fetched but never delivered (set by the app)
    gap_filler: GapFiller | None = None
    #: the input offsets whose outputs are confirmed: what the consumer commits (set by the app)
    ledger: Ledger = field(default_factory=lambda: Ledger(()))
    producer: Any = None
    #: the producer of ``POST /v1/decide``'s decisions (no linger: a request waits for its
    #: acknowledgement), with its own delivery thread; None: ``producer``
    api_producer: Any = None
    #: the kernel ids of ``api_producer``'s own threads (STREAM_PROCESSING_NICE leaves them as they are)
    api_producer_threads: frozenset[int] = frozenset()
    #: ``api_producer``'s delivery reports are polled by its caller's loop (the API's thread), not
    #: by a delivery thread of its own
    api_polled_by_caller: bool = False
    topic_names: dict[str, str] = field(default_factory=dict)
    #: the challengers scored in shadow (``STREAM_SHADOW_ALIAS``), or None
    shadow: ModelSet | None = None
    #: the faust consumer that input offsets are acked to (set by the app)
    consumer: Callable[[], Any] | None = None
    #: called once with the error that stops the worker (the app crashes itself: stream/worker/app.py)
    on_fatal: Callable[[BaseException], None] | None = None
    #: input events whose outputs may be in flight at once, over all partitions (None:
    #: :data:`INFLIGHT_BATCHES` full batches)
    max_inflight_events: int | None = None
    _inflight: InFlight | None = None
    _failure: BaseException | None = None
    _poller: threading.Thread | None = None
    _api_poller: threading.Thread | None = None
    #: decisions from another loop (the API's) not yet handed to the sink (``hand_over_rows``)
    _api_rows: list[DecisionRecord] = field(default_factory=list)
    _closing: bool = False
    #: the commit protocol's settle and ack of published batches (made from ``ledger`` and ``consumer``)
    acks: Acks = field(init=False)
    _stall_logged: dict[Partition, float] = field(default_factory=dict)
    #: the partitions the lag gauge has a series for
    _lagging: set[Partition] = field(default_factory=set)
    #: per input partition, where reading it began since it was assigned (:meth:`start_offset`)
    _starts: dict[Partition, int] = field(default_factory=dict)
    #: the latest score per user and model, for the HTTP API (stream/worker/api/)
    latest: LatestScores = field(default_factory=LatestScores)

    def __post_init__(self) -> None:
        self.acks = Acks(self.ledger, self.consumer)

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the worker, if any."""
        return self._failure

    @property
    def closing(self) -> bool:
        """:meth:`close` has begun: nothing more is produced."""
        return self._closing

    def start_polling(self) -> None:
        """Serve the producer's delivery reports on one thread (they resolve each batch's future)."""
        if self._poller is None and self.producer is not None:
            self._poller = threading.Thread(target=self._poll, name="output-delivery", daemon=True)
            self._poller.start()

    def _poll(self, producer: Any = None) -> None:
        producer = producer or self.producer
        while not self._closing:
            producer.poll(0.05)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the poll thread and flush what is still queued (at shutdown)."""
        self._closing = True
        for poller in (self._poller, self._api_poller):
            if poller is not None:
                poller.join()
        self._poller = self._api_poller = None
        if self.api_producer is not None:
            self.api_producer.flush(timeout_s)
        if self.gap_filler is not None:
            self.gap_filler.close()
        if self.producer is not None:
            left = self.producer.flush(timeout_s)
            if left:
                log.warning(
                    "%d output records still undelivered after %.0f s at shutdown; their batches stay "
                    "uncommitted and are read again after a restart",
                    left,
                    timeout_s,
                )

    def fail(self, exc: BaseException) -> None:
        """Stop the worker for an error no single record explains (first call only).

        The batch stays unacked, and so do the later batches of its partition
        (see :meth:`_settle`), so nothing past it is committed: a restart reads it again.
        """
        if self._failure is not None:
            return
        self._failure = exc
        if isinstance(exc, (OutputError, DeliveryError)):  # a record Kafka did not take
            self.metrics.fatal_errors.labels(topic=exc.topic, error=exc.error).inc()
            log.error("stopping the worker: %s; its batch stays uncommitted and is read again after a restart", exc)
        else:
            self.metrics.fatal_errors.labels(topic="", error=type(exc).__name__).inc()
            log.error(
                "stopping the worker: a batch failed with %s: %s; it stays uncommitted and is read again "
                "after a restart",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def on_revoked(self, revoked: Any) -> None:
        """Forget per-partition caches, gauges and positions of partitions another worker now owns.

        faust revokes every partition at each rebalance (the group protocol is eager), also those
        assigned again right after: their gauges come back at the next :meth:`export_lag` and
        :meth:`check_stalls`. A batch of a revoked partition still unconfirmed here is no longer
        reported as stalled: faust's wait for it has given up (logged), and the new owner reads it again.
        """
        for tp in revoked:
            self._forget((tp.topic, tp.partition))
        events = self.topics["events"].get_topic_name()
        articles = self.topics["article_events"].get_topic_name()
        self.processor.forget_partitions({tp.partition for tp in revoked if tp.topic == events})
        gone = {tp.partition for tp in revoked if tp.topic == articles}
        for a in gone:
            self.processor.article_progress.pop(a, None)  # the table's copy, from its next owner, is read instead
        if gone:
            owned = self.processor.owned_articles
            partitions = self.settings.topic_partitions
            for aid in [a for a in owned if partition_for(a.encode(), partitions) in gone]:
                del owned[aid]  # its partition is where article_messages sent its events

    def _forget(self, tp: Partition) -> None:
        self.positions.pop(tp, None)
        self.delivered.pop(tp, None)
        self.acks.forget(tp)
        self._starts.pop(tp, None)
        self._stall_logged.pop(tp, None)
        self._lagging.discard(tp)
        for gauge in (self.metrics.lag, self.metrics.unconfirmed_age):
            gauge.remove(tp[0], str(tp[1]))

    def export_lag(
        self,
        assigned: Iterable[Partition],
        highwater: Callable[[Any], int | None],
        committed: Callable[[Any], int | None],
        more_after: Callable[[Any, int], bool] | None = None,
    ) -> dict[Partition, int]:
        """Set the lag gauge of each assigned input partition whose lag is known; drop every other series.

        The lag counts from the last offset handed to the processor or, on a partition that has
        had no batch since it was assigned, from its committed offset, or where reading it
        started (:meth:`learn_starts`) in a group that has committed none: a partition that is
        stuck after a rebalance still shows its lag. ``more_after(tp, offset)``: whether the
        consumer has a record after ``offset``; when not, the offsets up to the high watermark are
        control records (a transaction's commit marker) and the lag is 0.
        """
        events = self.topic_names.get("events")
        lags: dict[Partition, int] = {}
        for tp in assigned:
            if tp[0] != events or (hw := highwater(tp)) is None:
                continue
            pos = self.positions.get((tp[0], tp[1]))
            if pos is None:
                if (pos := committed(tp)) is None and (pos := self._starts.get((tp[0], tp[1]))) is None:
                    continue
                pos -= 1  # the offset before the next one to read
            lag = max(hw - pos - 1, 0)
            if lag and more_after is not None and not more_after(tp, pos):
                lag = 0
            lags[(tp[0], tp[1])] = lag
        for topic, partition in self._lagging - lags.keys():
            self.metrics.lag.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            self.metrics.lag.labels(topic=topic, partition=str(partition)).set(lag)
        self._lagging = set(lags)
        return lags

    async def fill(self, records: list[Record]) -> tuple[list[Record], Span]:
        """A batch of one partition made whole: with the records faust skipped before or inside it.

        Returns the records in offset order and the span of offsets the batch completes: from the
        one after the partition's previous batch to its highest offset. On a partition's first
        batch since it was assigned, the span begins where the worker started reading it
        (:meth:`start_offset`): a record faust skipped at the head is read too, and the ledger
        starts there.
        """
        tp = (records[0].topic, records[0].partition)
        last = self.delivered.get(tp)
        if last is None:
            start = await self.start_offset(tp)
            if start is not None:
                self.ledger.assign(tp, start)
                last = start - 1
        gaps, high = find_gaps(last, (r.offset for r in records))
        if high is None or high == last:
            return records, None  # only records delivered again
        self.delivered[tp] = high
        span = (records[0].offset if last is None else last + 1, high)
        if not gaps or self.gap_filler is None:
            return records, span
        extra = await asyncio.get_running_loop().run_in_executor(None, self.gap_filler.fetch, tp[0], tp[1], gaps)
        if not extra:
            return records, span  # offsets without a record (transaction markers, compaction)
        self.metrics.refetched.inc(len(extra))
        log.warning(
            "%s[%d]: %d record(s) at offsets %s were fetched but not delivered by the consumer; "
            "read again from the broker",
            tp[0],
            tp[1],
            len(extra),
            [r.offset for r in extra],
        )
        return sorted([*records, *extra], key=lambda r: r.offset), span

    async def learn_starts(self, assigned: Iterable[Partition]) -> None:
        """Find where reading began on each assigned input partition that has had no batch yet.

        One broker round trip per partition and assignment; a partition whose lookup fails is
        tried again at the next call.
        """
        events = self.topic_names.get("events")
        for tp in assigned:
            key = (tp[0], tp[1])
            if tp[0] == events and key not in self.positions and key not in self._starts:
                try:
                    await self.start_offset(key)
                except Exception as exc:  # the broker is away: the lag stays unknown meanwhile
                    log.debug("cannot read where %s[%d] starts: %s", tp[0], tp[1], exc)

    async def start_offset(self, tp: Partition) -> int | None:
        """Where the worker started reading ``tp``: its committed offset, or the log start if there is none.

        Asked of the broker (:meth:`GapFiller.reading_start`). ``None`` when there is no gap
        filler (unit tests of the agents) and faust knows no committed offset (it records 0 as
        unknown).
        """
        if self.gap_filler is None:
            consumer = self.consumer() if self.consumer is not None else None
            if consumer is None:
                return None
            from faust.types import TP

            committed: int | None = getattr(consumer, "_committed_offset", {}).get(TP(*tp))
            return committed
        loop = asyncio.get_running_loop()
        start = self._starts[tp] = await loop.run_in_executor(None, self.gap_filler.reading_start, tp[0], tp[1])
        return start

    def arrived(self, batch: Sequence[Any], started: float) -> None:
        """Observe the ``fetch`` and ``queue`` stages of a batch's events, which starts at ``started``.

        The consumer notes when it fetched each record (``message.time_in``, stream/kafka/transport.py);
        faust's own hand-off (``STREAM_CONSUMER_HANDOFF=faust``) does not, and then nothing is observed.
        """
        fetch: list[float] = []
        queue: list[float] = []
        for ev in batch:
            msg = ev.message
            fetched = msg.time_in
            if fetched is None:
                continue
            if msg.timestamp:
                fetch.append(max(fetched - msg.timestamp, 0.0))
            queue.append(max(started - fetched, 0.0))
        stage = self.metrics.stage
        observe_many(stage["fetch"], fetch)
        observe_many(stage["queue"], queue)

    async def publish(
        self, out: Outputs, batch: Sequence[Any], span: Span = None, started: float | None = None
    ) -> None:
        """Produce every output of a held batch (see agents/batching.py); ack its input once they are confirmed.

        Returns as soon as the outputs are queued, so the next batch is processed while these are
        in flight (at most ``max_inflight_events`` input events, :class:`InFlight`). The batch's
        offsets become committable only when Kafka acknowledged every record, the rows are in
        ClickHouse and the partition's earlier batches are acked: at-least-once delivery. Outputs
        go through one confluent-kafka producer (librdkafka: a few µs per record, where a faust
        ``send`` costs tens); table
        changelogs stay with faust. Every record is fitted under ``STREAM_MAX_MESSAGE_BYTES``
        first (stream/kafka/limits.py). ``started``: when the batch's handling began (wall clock),
        for the latency stages (``stream_stage_seconds``).
        """
        if self._failure is not None:
            raise self._failure  # crash the agent rather than carry on as if outputs existed
        assert self.producer is not None
        if self._inflight is None:
            limit = self.max_inflight_events or INFLIGHT_BATCHES * self.settings.score_batch_size
            self._inflight = InFlight(limit)
            self.start_polling()
        tp = _partition_of(batch)
        token = self.acks.hold(tp)
        n = len(batch)
        stage = self.metrics.stage
        waited = time.time()
        inflight = self._inflight
        try:
            taken = await inflight.acquire(n)
        except BaseException:
            self.acks.release(tp, token)
            raise
        try:
            ready = time.time()
            observe_n(stage["inflight"], max(ready - waited, 0.0), n)
            t0 = time.perf_counter()
            waits = await self._send(out, self._on_acked(out, n))
            self.metrics.loop_step["publish"].observe(time.perf_counter() - t0)  # awaits only a full sink
            queued = time.time()
            if started is not None:
                observe_n(stage["process"], max(queued - started, 0.0), n)
        except BaseException as exc:  # e.g. cancelled by a rebalance: no settle task will release the slot
            inflight.release(taken)
            self.acks.release(tp, token)
            if isinstance(exc, OutputError):
                self.fail(exc)
            raise
        self.acks.settle(
            tp, token, batch, span, lambda: self._confirmed(waits, taken), lambda: self._count(out, queued, n)
        )

    async def forward(self, article_events: list[tuple[str, bytes]]) -> list[asyncio.Future[None]]:
        """Produce article events (and watermark markers) now, ahead of the rest of their batch.

        Returns the futures that resolve once Kafka has them; the batch is acked later by
        :meth:`publish`, which must come after they resolved.
        """
        self.start_polling()  # delivery reports resolve the futures
        return await self._send(Outputs(article_events=article_events))

    async def _send(self, out: Outputs, on_acked: Callable[[float], None] | None = None) -> list[asyncio.Future[None]]:
        """Queue a batch's outputs; the futures resolve once Kafka and ClickHouse have them.

        ``on_acked`` (on the poll thread) gets the seconds until Kafka acknowledged the last record.
        """
        names = self.topic_names
        limit = self.settings.max_message_bytes
        budget = record_budget(limit)
        articles = article_messages(out.article_events, self.settings.topic_partitions, budget)
        n = len(out.dead_letters) + len(articles) + len(out.predictions) + len(out.decisions)
        n += len(out.shadow_predictions) + len(out.recommendations)
        report = _Reports(asyncio.get_running_loop(), n, limit, on_acked)
        report.start()
        produce = self._produce
        for key, envelope in out.dead_letters:
            dl_key, value, shrunk = fit_dead_letter(envelope, key, budget)
            if shrunk:
                self.metrics.dead_letters_shrunk.inc()
            produce(names["dead_letter"], value, dl_key, report)
        for partition, value in articles:
            produce(names["article_events"], value, None, report, partition)
        # predictions and decisions are a few KB by schema: far below the smallest limit allowed
        for p in out.predictions:
            produce(names["predictions"], orjson.dumps(p), p["user_id"].encode(), report)
        for d in out.decisions:
            produce(names["decisions"], orjson.dumps(d), d["user_id"].encode(), report)
        for p in out.shadow_predictions:
            produce(names["predictions_shadow"], orjson.dumps(p), p["user_id"].encode(), report)
        # at most 100 articles (STREAM_RECOMMEND_K): far below the smallest limit allowed
        for r in out.recommendations:
            produce(names["recommendations"], orjson.dumps(r), r["user_id"].encode(), report)
        waits: list[asyncio.Future[None]] = [report.future]
        if self.sink is not None:
            if out.predictions:
                waits.append(await self.sink.put("predictions", out.predictions))
            if out.decisions:
                waits.append(await self.sink.put("bandit_decisions", out.decisions))
            if out.shadow_predictions:
                waits.append(await self.sink.put("predictions_shadow", out.shadow_predictions))
            if out.events and self.settings.archive_events:
                waits.append(await self.sink.put("events", out.events))
        return waits

    async def log_decisions(
        self,
        decisions: list[DecisionRecord],
        timeout_s: float,
        sink_loop: asyncio.AbstractEventLoop | None = None,
        on_acked: Callable[[float], None] | None = None,
    ) -> None:
        """Produce decisions made outside a batch (``POST /v1/decide``) like a batch's; return once Kafka has them.

        Their ClickHouse rows go with the sink's next flush (not awaited). Raises
        :class:`OutputError` (or ``TimeoutError``) when Kafka did not confirm them in ``timeout_s``.
        Called from another loop's thread (the API's), ``sink_loop`` is the loop of the sink
        (the stream's); the producer then must be :attr:`api_producer`. ``on_acked`` gets the
        seconds from the produce to Kafka's acknowledgement, on the thread that serves the
        delivery reports, before the caller's loop takes the answer up.
        """
        if self._failure is not None or self._closing:
            raise OutputError(self.topic_names["decisions"], "WORKER_STOPPING", "the worker is stopping")
        if self.api_producer is None:
            self.start_polling()  # delivery reports resolve the future
            waits = await self._send(Outputs(decisions=decisions))
        else:
            if self._api_poller is None and not self.api_polled_by_caller:
                self._api_poller = threading.Thread(
                    target=self._poll, args=(self.api_producer,), name="api-delivery", daemon=True
                )
                self._api_poller.start()
            report = _Reports(asyncio.get_running_loop(), len(decisions), self.settings.max_message_bytes, on_acked)
            report.start()
            topic = self.topic_names["decisions"]
            for d in decisions:  # a few hundred bytes each: far below any size limit
                self.api_producer.produce(topic, orjson.dumps(d), d["user_id"].encode(), on_delivery=report)
            waits = [report.future]
            if self.sink is not None:
                if sink_loop is None or sink_loop is asyncio.get_running_loop():
                    waits.append(await self.sink.put("bandit_decisions", decisions))
                else:  # the sink lives on the stream's loop: handed over there, not awaited here
                    if not self._api_rows:  # one hand-over per SINK_HANDOVER_S: each wakes the stream's loop
                        asyncio.get_running_loop().call_later(SINK_HANDOVER_S, self.hand_over_rows, sink_loop)
                    self._api_rows += decisions
        for sink_wait in waits[1:]:  # a sink failure is counted and logged by the sink itself
            sink_wait.add_done_callback(lambda f: f.cancelled() or f.exception())
        # The acknowledgement's future itself, under a deadline: the handler resumes in the loop's
        # turn after the one that resolves it. wait_for(shield(...)) chained two futures more, each
        # resolved a turn later, and on a busy loop each turn can hold a batch's step.
        async with asyncio.timeout(timeout_s):
            await waits[0]  # only this call waits for it: cancelling it at the deadline is harmless

    def hand_over_rows(self, sink_loop: asyncio.AbstractEventLoop) -> None:
        """Queue the API's decisions gathered since the last hand-over in the sink, on its loop."""
        rows, self._api_rows = self._api_rows, []
        if rows and self.sink is not None and not sink_loop.is_closed():
            queued = asyncio.run_coroutine_threadsafe(self.sink.put("bandit_decisions", rows), sink_loop)
            queued.add_done_callback(_consume_sink_wait)

    def ack(self, batch: Sequence[Any], span: Span = None) -> None:
        """The batch is done: ``span``, the input offsets it completes (:meth:`fill`), becomes committable."""
        self.acks.ack(batch, span)

    def _produce(self, topic: str, value: bytes, key: bytes | None, report: _Reports, partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition, on_delivery=report)
                return
            except BufferError:  # librdkafka's queue is full: let the poll thread drain it
                time.sleep(0.01)
            except KafkaException as exc:
                error = produce_error(topic, exc.args[0], self.settings.max_message_bytes)
                if error is not None:
                    raise error from None
                time.sleep(0.01)

    async def _confirmed(self, waits: list[asyncio.Future[None]], taken: int) -> bool:
        """Whether Kafka and ClickHouse confirmed a batch's outputs; an error stops the worker.

        Its batch then stays unacked, and so do its partition's later ones (delivery.py).
        ``taken``: its share of the in-flight budget, given back here.
        """
        try:
            await asyncio.gather(*waits)
        except Exception as exc:
            self.fail(exc)
            return False
        finally:
            assert self._inflight is not None
            self._inflight.release(taken)
        return True

    def _on_acked(self, out: Outputs, n: int) -> Callable[[float], None]:
        """What runs (on the poll thread) once Kafka acknowledged every output of a batch of ``n`` events.

        The ``ack`` stage, and the publish latencies (``stream_event_to_publish_seconds``,
        ``stream_ingest_to_publish_seconds``): a prediction is published once Kafka has it, and its
        consumers can read it from then on; the ClickHouse sink's flush and the commit come later
        (the ``settle`` stage) and are not on its way.
        """
        m = self.metrics

        def acked(secs: float) -> None:
            now = time.time()
            observe_n(m.stage["ack"], secs, n)
            observe_many(m.event_to_publish, [max(now - p["event_time"] / 1000, 0.0) for p in out.predictions])
            observe_many(m.ingest_to_publish, [max(now - ms / 1000, 0.0) for ms in out.prediction_ingest_ms])

        return acked

    def _count(self, out: Outputs, queued: float = 0.0, n: int = 0) -> None:
        """Count an acked batch's outputs: in order, after its partition's earlier ones (delivery.py).

        ``queued``: when its outputs were queued; ``n``: its input events (the ``settle`` stage).
        """
        now = time.time()
        m = self.metrics
        observe_n(m.stage["settle"], max(now - queued, 0.0), n)
        per_model: dict[str, int] = {}
        for p in out.predictions:
            per_model[p["model_name"]] = per_model.get(p["model_name"], 0) + 1
        for name, n in per_model.items():
            m.predictions.labels(model=name).inc(n)
        shadow: dict[str, int] = {}
        for p in out.shadow_predictions:
            shadow[p["model_name"]] = shadow.get(p["model_name"], 0) + 1
        for name, n in shadow.items():
            m.shadow_predictions.labels(model=name).inc(n)
        if out.recommendations:
            m.recommendations.inc(len(out.recommendations))

    def unconfirmed(self, now: float | None = None) -> dict[Partition, float]:
        """Per input partition with unconfirmed batches: seconds since the oldest reached publish()."""
        return self.acks.unconfirmed(now)

    def check_stalls(self, now: float | None = None) -> dict[Partition, float]:
        """Set the per-partition gauge; log a partition whose oldest batch waits longer than allowed.

        Such a partition commits nothing until that batch is confirmed; a WARNING is logged again
        every ``STREAM_STALL_WARNING_S`` while it lasts.
        """
        now = time.monotonic() if now is None else now
        ages = self.unconfirmed(now)
        limit = self.settings.stall_warning_s
        for tp in self.acks.held:
            age = ages.get(tp, 0.0)
            self.metrics.unconfirmed_age.labels(topic=tp[0], partition=str(tp[1])).set(age)
            if age > limit and now - self._stall_logged.get(tp, -limit) >= limit:
                self._stall_logged[tp] = now
                log.warning(
                    "partition %s[%d] makes no progress: its oldest batch has waited %.0f s for its "
                    "outputs to be confirmed by Kafka and ClickHouse; nothing after it is committed",
                    tp[0],
                    tp[1],
                    age,
                )
        return ages

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every published batch is settled (before shutdown), at most ``timeout_s``.

        Returns whether all settled; the others stay unacked (read again after a restart).
        """
        return await self.acks.drain(timeout_s)
