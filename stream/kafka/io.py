"""Kafka I/O for tools and tests: produce through a full queue, read a topic to its end, committed offsets.

For the confluent-kafka clients of the tools (replay, simulator, tests, benches). The worker's
output producer has its own loop (``stream/worker/publisher.py``): a poll thread serves its
delivery callbacks, and it maps produce errors to dead letters.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from stream.config import Settings
from stream.errors import InfraError
from stream.kafka import clients


def produce_blocking(
    producer: Any, topic: str, value: bytes | None, key: bytes | None = None, *, wait_s: float = 0.05, **kwargs: Any
) -> None:
    """``producer.produce(...)``, serving delivery callbacks for ``wait_s`` while librdkafka's queue is full."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, **kwargs)
            return
        except BufferError:
            producer.poll(wait_s)


def read_to_end(
    consumer: Any,
    topic: str,
    *,
    start: Mapping[int, int] | None = None,
    end: Mapping[int, int] | None = None,
    timeout_s: float = 60.0,
) -> list[Any]:
    """The records of ``topic`` from ``start`` up to ``end``, each partition's in offset order.

    ``start`` and ``end`` map partitions to offsets (``end`` exclusive); by default every
    partition from its low to its high watermark at the call. ``consumer`` is assigned the
    partitions (its group is not used) and left open. A partition whose position passes the end
    without a record there (compaction, transaction markers) is done too. Raises InfraError if
    the records do not all arrive within ``timeout_s``.
    """
    from confluent_kafka import TopicPartition

    if start is None or end is None:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            raise InfraError(f"topic {topic!r} does not exist")
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in md.partitions}
        start = start if start is not None else {p: lo for p, (lo, _) in marks.items()}
        end = end if end is not None else {p: hi for p, (_, hi) in marks.items()}
    left = {p: hi for p, hi in end.items() if hi > start.get(p, 0)}
    got: list[Any] = []
    if not left:
        return got
    consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in sorted(left)])
    deadline = time.monotonic() + timeout_s
    while left:
        if time.monotonic() > deadline:
            raise InfraError(
                f"read {len(got)} records of {topic!r} in {timeout_s:.0f}s; partitions {sorted(left)} "
                f"did not reach their end offsets {left}"
            )
        msgs = consumer.consume(500, 0.2)
        for msg in msgs:
            if msg.error() is not None:
                continue
            p, offset = int(msg.partition() or 0), int(msg.offset() or 0)
            if p in left and offset < left[p]:
                got.append(msg)
                if offset + 1 >= left[p]:
                    del left[p]
        if not msgs and left:
            for tp in consumer.position([TopicPartition(topic, p) for p in left]):
                if tp.offset >= left.get(tp.partition, 0):
                    left.pop(tp.partition, None)
    return got


def read_topic(bootstrap: str, topic: str, *, settings: Settings | None = None, timeout_s: float = 60.0) -> list[Any]:
    """Every record of ``topic`` up to its high watermarks now, with a consumer of its own (see :func:`read_to_end`)."""
    consumer = clients.consumer(
        bootstrap, settings, **{"group.id": f"read-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        return read_to_end(consumer, topic, timeout_s=timeout_s)
    finally:
        consumer.close()


def produce(
    bootstrap: str,
    topic: str,
    payloads: Iterable[tuple[bytes | None, bytes | None]],
    timestamps: Iterable[int] | None = None,
    *,
    settings: Settings | None = None,
) -> int:
    """Produce (key, value) pairs in order (idempotent producer: no duplicates, order per key kept).

    ``settings`` carry a secured cluster's credentials (None: a plaintext listener).
    """
    # lz4, as many production producers do: the worker must read compressed topics
    producer = clients.producer(
        bootstrap, settings, **{"linger.ms": 20, "enable.idempotence": True, "compression.type": "lz4"}
    )
    n = 0
    ts_iter = iter(timestamps) if timestamps is not None else None
    for key, value in payloads:
        kwargs: dict[str, Any] = {}
        if ts_iter is not None:
            kwargs["timestamp"] = next(ts_iter)
        produce_blocking(producer, topic, value, key, wait_s=0.1, **kwargs)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        raise InfraError(f"could not deliver every record to {topic!r} within 60 s")
    return n


def consume(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Message]], bool] | None = None,
    timeout_s: float = 60.0,
    idle_s: float | None = None,
    settings: Settings | None = None,
) -> list[Message]:
    """Read ``topic`` from the beginning with a fresh consumer.

    Without ``until``: everything up to the high watermarks seen at the start
    (:func:`stream.kafka.io.read_to_end`; InfraError if not all came within ``timeout_s``). With
    ``until``: until ``until(messages)`` holds (then, with ``idle_s``, until nothing new came for
    that long), or what came within ``timeout_s``. ``settings`` as for :func:`produce`.
    """
    if until is None:
        return read_topic(bootstrap, topic, settings=settings, timeout_s=timeout_s)
    consumer = clients.consumer(
        bootstrap,
        settings,
        **{"group.id": f"test-{uuid.uuid4().hex}", "auto.offset.reset": "earliest", "enable.auto.commit": False},
    )
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            raise InfraError(f"topic {topic!r} does not exist")
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
        got: list[Message] = []
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg)
                last = time.monotonic()
            elif until(got) and (idle_s is None or time.monotonic() - last >= idle_s):
                break
        return got
    finally:
        consumer.close()


def committed_offsets(
    bootstrap: str, group: str, topic: str, *, settings: Settings | None = None
) -> dict[int, int | None]:
    """The offsets ``group`` has committed on each partition of ``topic`` (None: nothing committed)."""
    consumer = clients.consumer(bootstrap, settings, **{"group.id": group, "enable.auto.commit": False})
    try:
        md = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None:
            raise InfraError(f"topic {topic!r} does not exist")
        got = consumer.committed([TopicPartition(topic, p) for p in md.partitions], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in got}
