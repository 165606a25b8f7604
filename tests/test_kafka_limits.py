"""One record limit for producer, topics and broker (STREAM_MAX_MESSAGE_BYTES), against the real broker."""

from __future__ import annotations

import random

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from stream.config import load_settings
from stream.errors import InfraError
from stream.kafka.limits import MIN_MAX_MESSAGE_BYTES, producer_max_bytes, record_budget
from stream.kafka.topics import TOPICS, ensure_topics

pytestmark = pytest.mark.kafka


def _limit(admin: AdminClient, topic: str) -> int:
    [fut] = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return int(fut.result()["max.message.bytes"].value)


def test_the_largest_records_the_worker_makes_are_accepted(kafka_bootstrap: str, unique: str) -> None:
    """At the smallest limit allowed, records of the full budget that do not compress, alone and batched."""
    settings = load_settings(topic_prefix=f"{unique}.", topic_partitions=1, max_message_bytes=MIN_MAX_MESSAGE_BYTES)
    ensure_topics(kafka_bootstrap, settings)
    topic = settings.topic("predictions")
    assert _limit(AdminClient({"bootstrap.servers": kafka_bootstrap}), topic) == MIN_MAX_MESSAGE_BYTES
    # the worker's producer settings (stream/worker/app.py)
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "linger.ms": 50,
            "compression.type": "lz4",
            "enable.idempotence": True,
            "message.max.bytes": producer_max_bytes(settings.max_message_bytes),
        }
    )
    rng = random.Random(3)
    key = b"user-123"
    full = [rng.randbytes(record_budget(settings.max_message_bytes, key)) for _ in range(4)]
    small = [rng.randbytes(rng.randrange(100, 3000)) for _ in range(200)]  # fill batches up to the limit
    errors: list[object] = []
    for value in [*full, *small, *full]:
        producer.produce(topic, value, key, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(30) == 0
    assert [str(e) if e else None for e in errors] == [None] * (2 * len(full) + len(small))


def test_whatever_the_producer_accepts_the_topic_accepts(kafka_bootstrap: str, unique: str) -> None:
    """The producer's limit leaves room for the batch header (with the topic's limit, the broker refused some)."""
    from confluent_kafka import KafkaException

    settings = load_settings(topic_prefix=f"{unique}.", topic_partitions=1, max_message_bytes=MIN_MAX_MESSAGE_BYTES)
    ensure_topics(kafka_bootstrap, settings)
    topic = settings.topic("predictions")
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "compression.type": "lz4",
            "enable.idempotence": True,
            "message.max.bytes": producer_max_bytes(settings.max_message_bytes),
        }
    )
    rng = random.Random(5)
    errors: list[object] = []
    size = producer_max_bytes(settings.max_message_bytes)
    while True:  # the largest value librdkafka takes at produce() (it subtracts its own record overhead)
        try:
            producer.produce(topic, rng.randbytes(size), b"k", on_delivery=lambda err, msg: errors.append(err))
            break
        except KafkaException:
            size -= 1
    assert producer.flush(30) == 0
    assert [str(e) if e else None for e in errors] == [None], size


def test_topics_are_created_with_the_limit_and_a_smaller_existing_one_is_refused(
    kafka_bootstrap: str, unique: str
) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    settings = load_settings(topic_prefix=f"{unique}.", topic_partitions=1, max_message_bytes=2 * 1024 * 1024)
    ensure_topics(kafka_bootstrap, settings)
    for spec in TOPICS:
        assert _limit(admin, settings.topic(spec.name)) == 2 * 1024 * 1024

    other = load_settings(topic_prefix=f"{unique}-b.", topic_partitions=1)
    dlq = other.topic("session-events-dlq")
    for fut in admin.create_topics([NewTopic(dlq, 1, 1, config={"max.message.bytes": "100000"})]).values():
        fut.result()
    with pytest.raises(InfraError) as info:
        ensure_topics(kafka_bootstrap, other)
    assert str(info.value) == (
        f"topic {dlq!r} takes records up to 100000 bytes (max.message.bytes), less than "
        "STREAM_MAX_MESSAGE_BYTES=1048576: raise the topic's max.message.bytes or lower "
        "the setting"
    )
