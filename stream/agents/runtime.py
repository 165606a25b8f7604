"""What the agents share: settings, tables, topics, models, the sink and metrics."""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.streams import _current_event

from stream.config import Settings
from stream.metrics import WorkerMetrics
from stream.processor import BatchProcessor, Outputs
from stream.scoring import ModelSet
from stream.sinks import ClickHouseSink


def enter_partition(event: Any) -> None:
    """Make ``event`` the current event of this task, as faust does inside ``async for``.

    faust derives a table write's changelog partition from the current event, which
    ``take_events`` does not set for the consuming task. With ``isolated_partitions`` every event
    of a batch comes from the same partition, so any event of the batch is the right one.
    """
    _current_event.set(weakref.ref(event))


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
    #: article states per owned partition of the article topic (see agents/articles.py)
    article_cache: dict[int, dict[str, Any]] = field(default_factory=dict)
    producer: Any = None
    topic_names: dict[str, str] = field(default_factory=dict)
    _delivery_error: str | None = None

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None and self._delivery_error is None:
            self._delivery_error = f"{msg.topic()}: {err}"

    async def delivered(self) -> None:
        """Wait until every record produced so far is acknowledged by Kafka (idempotent producer)."""
        assert self.producer is not None
        producer = self.producer
        while len(producer) > 0:
            await asyncio.to_thread(producer.flush, 1.0)
        if self._delivery_error is not None:
            # Crash the agent rather than carry on as if the outputs existed.
            raise RuntimeError(f"output not delivered: {self._delivery_error}")

    def on_revoked(self, revoked: Any) -> None:
        """Forget per-partition caches of partitions another worker now owns."""
        events = self.topics["events"].get_topic_name()
        articles = self.topics["article_events"].get_topic_name()
        self.processor.forget_partitions({tp.partition for tp in revoked if tp.topic == events})
        for tp in revoked:
            if tp.topic == articles:
                self.article_cache.pop(tp.partition, None)

    async def publish(self, out: Outputs) -> None:
        """Produce every output of a batch and wait until Kafka (and ClickHouse) have it.

        The caller acks the batch's input only after this returns: at-least-once delivery.
        Outputs go through one confluent-kafka producer (librdkafka: a few µs per record, where
        a faust ``send`` costs tens); table changelogs stay with faust.
        """
        assert self.producer is not None
        names = self.topic_names
        produce = self.producer.produce
        for key, envelope in out.dead_letters:
            produce(names["dead_letter"], orjson.dumps(envelope), key, on_delivery=self._on_delivery)
        for article_id, raw in out.article_events:
            produce(names["article_events"], raw, article_id.encode(), on_delivery=self._on_delivery)
        for p in out.predictions:
            produce(names["predictions"], orjson.dumps(p), p["user_id"].encode(), on_delivery=self._on_delivery)
        for d in out.decisions:
            produce(names["decisions"], orjson.dumps(d), d["user_id"].encode(), on_delivery=self._on_delivery)
        n = len(out.dead_letters) + len(out.article_events) + len(out.predictions) + len(out.decisions)
        sink_futures = []
        if self.sink is not None:
            if out.predictions:
                sink_futures.append(await self.sink.put("predictions", out.predictions))
            if out.decisions:
                sink_futures.append(await self.sink.put("bandit_decisions", out.decisions))
        if n:
            await self.delivered()
        if sink_futures:
            await asyncio.gather(*sink_futures)
        now = time.time()
        m = self.metrics
        for p, ingest_ms in zip(out.predictions, out.prediction_ingest_ms, strict=True):
            m.predictions.labels(model=p["model_name"]).inc()
            m.event_to_publish.observe(max(now - p["event_time"] / 1000, 0.0))
            m.ingest_to_publish.observe(max(now - ingest_ms / 1000, 0.0))
