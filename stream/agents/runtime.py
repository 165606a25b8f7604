"""What the agents share: settings, tables, topics, models, the sink and metrics."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.streams import _current_event

from stream.config import Settings
from stream.kafka.partitioner import partition_for
from stream.metrics import WorkerMetrics, observe_many
from stream.processor import BatchProcessor, Outputs
from stream.scoring import ModelSet
from stream.sinks import ClickHouseSink


def enter_partition(event: Any) -> None:
    """Make ``event`` the current event of this task, as faust does inside ``async for``.

    faust derives a table write's changelog partition from the current event, which the batch
    handler (a task of its own, see agents/batching.py) does not have. With
    ``isolated_partitions`` every event of a batch comes from the same partition, so any event of
    the batch is the right one.
    """
    _current_event.set(weakref.ref(event))


class _Delivery:
    """One batch's Kafka deliveries: resolves ``future`` on the event loop once all are acknowledged.

    Called by librdkafka's delivery reports, which only the runtime's poll thread serves.
    """

    __slots__ = ("error", "future", "loop", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop = loop
        self.remaining = n
        self.error: str | None = None
        self.future: asyncio.Future[None] = loop.create_future()
        if n == 0:
            self.future.set_result(None)

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None and self.error is None:
            self.error = f"{msg.topic()}: {err}"
        self.remaining -= 1
        if self.remaining == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(RuntimeError(f"output not delivered: {self.error}"))
        else:
            self.future.set_result(None)


#: forwarded article events per repartition record (well under Kafka's 1 MB default record limit)
ARTICLE_CHUNK = 500


def article_messages(events: Sequence[tuple[str, bytes]], partitions: int) -> list[tuple[int, bytes]]:
    """Forwarded article events as (partition, JSON array) records, one per partition and chunk.

    Each event goes to the partition its ``article_id`` key would get from a Java producer, so an
    article still has a single writer, but one record carries many events: the article agent's
    per-record framework cost is paid once per batch and partition instead of once per event.
    The values are the validated original bytes, so joining them makes a valid JSON array.

    >>> article_messages([("a1", b'{"n":1}'), ("a1", b'{"n":2}')], 1)
    [(0, b'[{"n":1},{"n":2}]')]
    """
    groups: dict[int, list[bytes]] = {}
    for article_id, raw in events:
        groups.setdefault(partition_for(article_id.encode(), partitions), []).append(raw)
    return [(p, b"[" + b",".join(raws[i:i + ARTICLE_CHUNK]) + b"]")
            for p, raws in groups.items() for i in range(0, len(raws), ARTICLE_CHUNK)]


@dataclass
class Runtime:
    settings: Settings
    metrics: WorkerMetrics
    models: ModelSet
    processor: BatchProcessor
    sink: ClickHouseSink | None
    topics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Any] = field(default_factory=dict)
    #: last offset handed to the processor, per (topic, partition): for the lag gauge
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    producer: Any = None
    topic_names: dict[str, str] = field(default_factory=dict)
    #: the faust consumer that input offsets are acked to (set by the app)
    consumer: Callable[[], Any] | None = None
    #: batches whose outputs may be in flight at once, over all partitions
    max_inflight_batches: int = 8
    _inflight: asyncio.Semaphore | None = None
    _failure: BaseException | None = None
    _poller: threading.Thread | None = None
    _closing: bool = False
    _settling: set[asyncio.Future[None]] = field(default_factory=set)

    def start_polling(self) -> None:
        """Serve the producer's delivery reports on one thread (they resolve each batch's future)."""
        if self._poller is None and self.producer is not None:
            self._poller = threading.Thread(target=self._poll, name="output-delivery", daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._closing:
            self.producer.poll(0.05)

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the poll thread and flush what is still queued (at shutdown)."""
        self._closing = True
        if self._poller is not None:
            self._poller.join()
            self._poller = None
        if self.producer is not None:
            self.producer.flush(timeout_s)

    def on_revoked(self, revoked: Any) -> None:
        """Forget per-partition caches of partitions another worker now owns."""
        events = self.topics["events"].get_topic_name()
        articles = self.topics["article_events"].get_topic_name()
        self.processor.forget_partitions({tp.partition for tp in revoked if tp.topic == events})
        gone = {tp.partition for tp in revoked if tp.topic == articles}
        if gone:
            owned = self.processor.owned_articles
            partitions = self.settings.topic_partitions
            for aid in [a for a in owned if partition_for(a.encode(), partitions) in gone]:
                del owned[aid]  # its partition is where article_messages sent its events

    async def publish(self, out: Outputs, batch: Sequence[Any]) -> None:
        """Produce every output of a held batch (see agents/batching.py); ack its input once they are confirmed.

        Returns as soon as the outputs are queued, so the next batch is processed while these are
        in flight (at most ``max_inflight_batches``). The batch's offsets become committable only
        when Kafka acknowledged every record and the rows are in ClickHouse: at-least-once delivery.
        Outputs go through one confluent-kafka producer (librdkafka: a few µs per record, where a
        faust ``send`` costs tens); table changelogs stay with faust.
        """
        if self._failure is not None:
            raise self._failure  # crash the agent rather than carry on as if outputs existed
        assert self.producer is not None
        if self._inflight is None:
            self._inflight = asyncio.Semaphore(self.max_inflight_batches)
            self.start_polling()
        await self._inflight.acquire()
        try:
            names = self.topic_names
            articles = article_messages(out.article_events, self.settings.topic_partitions)
            n = len(out.dead_letters) + len(articles) + len(out.predictions) + len(out.decisions)
            report = _Delivery(asyncio.get_running_loop(), n)
            produce = self._produce
            for key, envelope in out.dead_letters:
                produce(names["dead_letter"], orjson.dumps(envelope), key, report)
            for partition, value in articles:
                produce(names["article_events"], value, None, report, partition)
            for p in out.predictions:
                produce(names["predictions"], orjson.dumps(p), p["user_id"].encode(), report)
            for d in out.decisions:
                produce(names["decisions"], orjson.dumps(d), d["user_id"].encode(), report)
            waits: list[asyncio.Future[None]] = [report.future]
            if self.sink is not None:
                if out.predictions:
                    waits.append(await self.sink.put("predictions", out.predictions))
                if out.decisions:
                    waits.append(await self.sink.put("bandit_decisions", out.decisions))
        except BaseException:  # e.g. cancelled by a rebalance: no settle task will release the slot
            self._inflight.release()
            raise
        task = asyncio.ensure_future(self._settle(out, list(batch), waits))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def ack(self, batch: Sequence[Any]) -> None:
        """Release the hold on a batch's events: their offsets become committable."""
        consumer = self.consumer() if self.consumer is not None else None
        if consumer is not None:
            for event in batch:
                event.message.ack(consumer)

    def _produce(self, topic: str, value: bytes, key: bytes | None, report: _Delivery, partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key, partition, on_delivery=report)
                return
            except BufferError:  # librdkafka's queue is full: let the poll thread drain it
                time.sleep(0.01)

    async def _settle(self, out: Outputs, batch: list[Any], waits: list[asyncio.Future[None]]) -> None:
        try:
            await asyncio.gather(*waits)
        except Exception as exc:  # the batch stays uncommitted; the next publish() raises it
            self._failure = exc
            return
        finally:
            assert self._inflight is not None
            self._inflight.release()
        self.ack(batch)
        now = time.time()
        m = self.metrics
        per_model: dict[str, int] = {}
        for p in out.predictions:
            per_model[p["model_name"]] = per_model.get(p["model_name"], 0) + 1
        observe_many(m.event_to_publish, [max(now - p["event_time"] / 1000, 0.0) for p in out.predictions])
        observe_many(m.ingest_to_publish, [max(now - ms / 1000, 0.0) for ms in out.prediction_ingest_ms])
        for name, n in per_model.items():
            m.predictions.labels(model=name).inc(n)

    async def drain(self) -> None:
        """Wait until every published batch is settled (before shutdown)."""
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)
