"""stream.kafka.io against the real broker: produce through a full queue, read a topic to its end."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from stream.errors import InfraError
from stream.kafka.io import produce_blocking, read_to_end, read_topic

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[1]


def _topic(bootstrap: str, name: str, partitions: int) -> str:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the topic exists
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result()
    return name


def _consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"io-{uuid.uuid4().hex}", "enable.auto.commit": False})


def test_produce_blocking_gets_every_record_through_a_tiny_queue(kafka_bootstrap: str, unique: str) -> None:
    topic = _topic(kafka_bootstrap, f"io-full-{unique}", 1)
    # A queue of 5 messages: a plain produce() raises BufferError within the first few records.
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "queue.buffering.max.messages": 5, "linger.ms": 5})
    delivered: list[int] = []
    for i in range(300):
        produce_blocking(producer, topic, b"%d" % i, b"k", on_delivery=lambda err, m: delivered.append(m.offset()))
    assert producer.flush(30) == 0
    assert delivered == list(range(300))
    assert [int(m.value()) for m in read_topic(kafka_bootstrap, topic)] == list(range(300))


def test_read_to_end_reads_each_partition_to_its_watermark_or_a_given_range(kafka_bootstrap: str, unique: str) -> None:
    topic = _topic(kafka_bootstrap, f"io-end-{unique}", 3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(10):
        producer.produce(topic, b"%d" % i, partition=0)
    for i in range(4):
        producer.produce(topic, b"%d" % i, partition=2)  # partition 1 stays empty
    assert producer.flush(30) == 0

    got = read_topic(kafka_bootstrap, topic, timeout_s=30)
    assert sorted((m.partition(), m.offset()) for m in got) == [(0, o) for o in range(10)] + [(2, o) for o in range(4)]

    consumer = _consumer(kafka_bootstrap)
    try:
        part = read_to_end(consumer, topic, start={0: 3, 2: 4}, end={0: 6, 2: 4}, timeout_s=30)
    finally:
        consumer.close()
    assert [(m.partition(), m.offset()) for m in part] == [(0, 3), (0, 4), (0, 5)]


def test_read_to_end_fails_in_one_line_when_the_end_never_comes(kafka_bootstrap: str, unique: str) -> None:
    topic = _topic(kafka_bootstrap, f"io-short-{unique}", 1)
    consumer = _consumer(kafka_bootstrap)
    try:
        with pytest.raises(InfraError, match=r"read 0 records of .* partitions \[0\] did not reach"):
            read_to_end(consumer, topic, start={0: 0}, end={0: 5}, timeout_s=2)
    finally:
        consumer.close()


def test_produce_retry_has_one_home() -> None:
    """Outside stream/kafka/io.py only the worker's output producer and faust's producer on librdkafka
    (each waits on its own event loop, and faust's hands a record to faust's buffer) catch BufferError."""
    homes = sorted(
        str(p.relative_to(ROOT))
        for d in ("stream", "simulator", "batch_training", "bench")
        for p in (ROOT / d).rglob("*.py")
        if "except BufferError" in p.read_text()
    )
    assert homes == ["stream/kafka/faust_producer.py", "stream/kafka/io.py", "stream/worker/publisher.py"]


def test_produce_partitions_keys_like_the_java_clients(kafka_bootstrap: str, unique: str) -> None:
    # murmur2 (Kafka's DefaultPartitioner), not librdkafka's CRC32 default: the worker's API
    # finds a user's owner by this partition (docs/api.md)
    from stream.kafka.io import produce
    from stream.kafka.partitioner import partition_for

    topic = _topic(kafka_bootstrap, f"io-keys-{unique}", 8)
    keys = [f"user-{i}".encode() for i in range(200)]
    produce(kafka_bootstrap, topic, [(k, b"{}") for k in keys])
    got = {m.key(): m.partition() for m in read_topic(kafka_bootstrap, topic)}
    assert got == {k: partition_for(k, 8) for k in keys}
    assert len(set(got.values())) == 8
