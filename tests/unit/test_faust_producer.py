"""stream.kafka.faust_producer: faust's producer interface over a confluent-kafka producer.

A fake stands in for confluent-kafka's Producer (logic only): it keeps what was produced, and
its delivery reports come from another thread, as librdkafka's poll thread serves them. The
real producer's records, partitions and offsets are checked against the broker in
tests/worker/test_worker_changelogs.py; its murmur2 partitioning in tests/test_kafka_io.py, and
aiokafka's (faust's default partitioner) in tests/unit/test_partitioner.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import faust
import pytest
from confluent_kafka import KafkaError
from faust.types.tuples import TP, RecordMetadata

from stream.kafka.faust_producer import DeliveryError, LibrdkafkaProducer, with_librdkafka_producer
from stream.kafka.transport import Transport


class _Msg:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


class _FakeRd:
    """confluent-kafka's Producer as far as the faust producer uses it."""

    def __init__(self, full: int = 0) -> None:
        self.produced: list[tuple[Any, ...]] = []
        self.callbacks: list[Any] = []
        self.full = full  # produce() calls that raise BufferError first

    def produce(self, topic: str, value: Any, key: Any, partition: int, *, on_delivery: Any, **kw: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.produced.append((topic, key, value, partition, kw))
        self.callbacks.append(on_delivery)

    def deliver(self, i: int, partition: int, offset: int, err: Any = None) -> None:
        """Report record ``i`` from another thread (librdkafka's poll)."""
        topic = self.produced[i][0]
        t = threading.Thread(target=self.callbacks[i], args=(err, _Msg(topic, partition, offset)))
        t.start()
        t.join()


@pytest.fixture
def app(tmp_path: Any) -> Iterator[faust.App]:
    yield faust.App("t-producer", broker="kafka://localhost:1", datadir=str(tmp_path), key_serializer="raw")


def _producer(app: faust.App, rd: _FakeRd, failures: list[BaseException]) -> LibrdkafkaProducer:
    app.on_producer_failure = failures.append  # type: ignore[attr-defined]
    producer = LibrdkafkaProducer(app.transport)
    producer._rd = rd  # what on_start builds (it also starts faust's aiokafka producer)
    producer._event_loop = asyncio.get_running_loop()
    app._producer = producer  # what faust's topics publish with (the buffer's path)

    async def started() -> LibrdkafkaProducer:
        return producer

    app.maybe_start_producer = started  # type: ignore[method-assign]
    return producer


async def _until(cond: Any) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not within 1 s")


async def test_send_hands_faust_partition_key_and_value_over_and_resolves_faust_metadata(app: faust.App) -> None:
    rd = _FakeRd()
    producer = _producer(app, rd, [])
    explicit = await producer.send("t-changelog", b"u1", b"v1", 3, None, None)
    keyed = await producer.send("t-other", b"u2", None, None, 1.5, {"h": b"x"})
    assert rd.produced == [
        ("t-changelog", b"u1", b"v1", 3, {"timestamp": 0}),  # 0: now
        ("t-other", b"u2", None, -1, {"timestamp": 1500, "headers": [("h", b"x")]}),  # -1: murmur2 of the key
    ]
    rd.deliver(1, 2, 7)
    rd.deliver(0, 3, 41)
    await _until(lambda: explicit.done() and keyed.done())
    assert explicit.result() == RecordMetadata("t-changelog", 3, TP("t-changelog", 3), 41, 1_700_000_000_000, 1)
    assert keyed.result() == RecordMetadata("t-other", 2, TP("t-other", 2), 7, 1_700_000_000_000, 1)
    assert isinstance(explicit.result().topic_partition, TP)


async def test_flush_waits_for_every_record_sent_before_it(app: faust.App) -> None:
    rd = _FakeRd()
    producer = _producer(app, rd, [])
    await producer.buffer.start()
    try:
        for i in range(3):
            await producer.send("t", b"k%d" % i, b"v", 0, None, None)
        flushing = asyncio.ensure_future(producer.flush())
        await asyncio.sleep(0.05)
        rd.deliver(0, 0, 0)
        rd.deliver(2, 0, 2)
        await asyncio.sleep(0.05)
        assert not flushing.done()  # record 1 is not acknowledged yet
        late = await producer.send("t", b"k3", b"v", 0, None, None)  # sent after the flush began
        rd.deliver(1, 0, 1)
        await asyncio.wait_for(flushing, 1)
        assert not late.done()
    finally:
        await producer.buffer.stop()


async def test_a_lost_record_fails_its_future_the_flush_and_stops_the_worker_once(app: faust.App) -> None:
    rd = _FakeRd()
    failures: list[BaseException] = []
    producer = _producer(app, rd, failures)
    await producer.buffer.start()
    try:
        futs = [await producer.send("t-changelog", b"k", b"v%d" % i, 1, None, None) for i in range(2)]
        rd.deliver(0, 1, -1, KafkaError(KafkaError._MSG_TIMED_OUT))
        rd.deliver(1, 1, -1, KafkaError(KafkaError._MSG_TIMED_OUT))
        await _until(lambda: all(f.done() for f in futs))
        with pytest.raises(DeliveryError, match="record to topic 't-changelog' not delivered: _MSG_TIMED_OUT"):
            futs[0].result()
        with pytest.raises(DeliveryError):
            await producer.flush()  # faust flushes before it commits: no commit past a lost record
        assert len(failures) == 1 and isinstance(failures[0], DeliveryError)
    finally:
        await producer.buffer.stop()


async def test_a_full_librdkafka_queue_makes_send_wait(app: faust.App) -> None:
    rd = _FakeRd(full=3)
    producer = _producer(app, rd, [])
    await producer.send("t", b"k", b"v", 0, None, None)
    assert len(rd.produced) == 1 and rd.full == 0


async def test_transactions_are_refused(app: faust.App) -> None:
    producer = _producer(app, _FakeRd(), [])
    with pytest.raises(faust.exceptions.ProducerSendError):
        await producer.send("t", b"k", b"v", 0, None, None, transactional_id="tid")


def test_the_transport_keeps_the_consumer_and_takes_the_producer() -> None:
    cls = with_librdkafka_producer(Transport)
    assert issubclass(cls, Transport) and cls.Producer is LibrdkafkaProducer
    assert cls.Consumer is Transport.Consumer


async def test_a_table_write_is_produced_at_once_and_gets_faust_result_and_callback(app: faust.App) -> None:
    """send_soon (a table's changelog write) does what faust's buffer task and topic would."""
    rd = _FakeRd()
    producer = _producer(app, rd, [])
    called: list[Any] = []
    topic = app.topic("t-users-changelog", key_serializer="raw", value_serializer="raw")
    fut = topic.as_future_message(key=b"u1", value=b"state", partition=2, callback=called.append)
    producer.send_soon(fut)
    assert rd.produced == [("t-users-changelog", b"u1", b"state", 2, {"timestamp": 0})]
    assert producer.buffer.size == 0
    rd.deliver(0, 2, 17)
    await _until(fut.done)
    assert fut.result() == RecordMetadata("t-users-changelog", 2, TP("t-users-changelog", 2), 17, 1_700_000_000_000, 1)
    assert called == [fut]  # the table's _on_changelog_sent: the offset kept in RocksDB


async def test_after_a_full_queue_table_writes_go_through_faust_buffer_in_order(app: faust.App) -> None:
    rd = _FakeRd(full=1)
    producer = _producer(app, rd, [])
    topic = app.topic("t-users-changelog", key_serializer="raw", value_serializer="raw")
    futs = [topic.as_future_message(key=b"u", value=b"v%d" % i, partition=0) for i in range(3)]
    producer.send_soon(futs[0])  # librdkafka's queue is full: faust's buffer takes it
    producer.send_soon(futs[1])  # behind it, not ahead of it
    assert rd.produced == [] and producer.buffer.size == 2  # what stops the streams past max_messages
    await producer.buffer.start()
    try:
        await _until(lambda: len(rd.produced) == 2)
        await _until(lambda: producer._buffered_in == producer._buffered_out == 2)
        producer.send_soon(futs[2])  # drained: at once again
        assert [r[2] for r in rd.produced] == [b"v0", b"v1", b"v2"]
        for i in range(3):
            rd.deliver(i, 0, i)
        await _until(lambda: all(f.done() for f in futs))
        assert [f.result().offset for f in futs] == [0, 1, 2]
    finally:
        await producer.buffer.stop()
