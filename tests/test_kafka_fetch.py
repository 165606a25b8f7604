"""stream.kafka.fetch.RdFetcher against the real broker: the librdkafka behaviour the fetcher relies on.

Seeks move a partition's next record; a pause keeps librdkafka's position at the last record
returned (nothing is skipped or returned twice across a pause); the read position passes a
transaction's commit marker, so ``more_waiting`` sees a transactional topic as caught up.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from stream.kafka import clients
from stream.kafka.fetch import RdFetcher
from stream.kafka.io import produce
from stream.kafka.transport import more_waiting


def _topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import NewTopic

    admin = clients.admin_client(bootstrap, None)
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def _fetcher(bootstrap: str, group: str) -> RdFetcher:
    client = clients.consumer(
        bootstrap,
        None,
        **{
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_uncommitted",
        },
    )
    return RdFetcher(client, max_records=3)


async def _read(fetcher: RdFetcher, active: set[Any], n: int, timeout_s: float = 30) -> list[tuple[int, int]]:
    """(partition, offset) of the next ``n`` records returned, without those a seek made stale."""
    got: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        messages, epoch = await fetcher.fetch(active, 0.5)
        for m in messages:
            tp = TopicPartition(m.topic(), m.partition())
            if m.error() is None and fetcher.epochs.get(tp, epoch + 1) <= epoch:
                got.append((m.partition(), m.offset()))
    return got


@pytest.fixture
def topic(kafka_bootstrap: str, unique: str) -> str:
    name = f"fetch-{unique}"
    _topic(kafka_bootstrap, name, partitions=1)
    produce(kafka_bootstrap, name, [(b"k", str(i).encode()) for i in range(100)])
    return name


async def test_seeks_move_the_next_record_and_pauses_skip_nothing(kafka_bootstrap: str, topic: str) -> None:
    tp = TopicPartition(topic, 0)
    fetcher = _fetcher(kafka_bootstrap, f"g-{topic}")
    try:
        fetcher.assign([tp])
        fetcher.seek(tp, 10)
        first = await _read(fetcher, {tp}, 5)
        assert first[0] == (0, 10)
        fetcher.seek(tp, 50)  # a partition librdkafka is already fetching
        got = await _read(fetcher, {tp}, 1)
        assert got == [(0, 50), (0, 51), (0, 52)]  # max_records at a time
        assert await fetcher.fetch(set(), 0) == ([], fetcher.epochs[tp])  # paused: prefetched records stay back
        assert fetcher.position(tp) == 53
        rest = await _read(fetcher, {tp}, 47)  # resumed: from the next record on, every one once
        assert [o for _, o in rest] == list(range(53, 100))
        assert fetcher.position(tp) == 100
        assert fetcher.watermark(tp) == 100
    finally:
        fetcher.close()


async def test_a_revoked_then_assigned_partition_starts_at_the_groups_committed_offset(
    kafka_bootstrap: str, topic: str
) -> None:
    from confluent_kafka import TopicPartition as Ctp

    group = f"g-{topic}"
    committer = clients.consumer(kafka_bootstrap, None, **{"group.id": group, "enable.auto.commit": False})
    committer.commit(offsets=[Ctp(topic, 0, 30)], asynchronous=False)
    committer.close()
    tp = TopicPartition(topic, 0)
    fetcher = _fetcher(kafka_bootstrap, group)
    try:
        fetcher.assign([tp])
        assert (await _read(fetcher, {tp}, 1))[0] == (0, 30)
        fetcher.revoke([tp])
        assert (await fetcher.fetch({tp}, 0.5))[0] == []
        fetcher.assign([tp])
        assert (await _read(fetcher, {tp}, 1))[0] == (0, 30)
    finally:
        fetcher.close()


async def test_the_read_position_passes_a_transactions_commit_marker(kafka_bootstrap: str, unique: str) -> None:
    name = f"fetch-tx-{unique}"
    _topic(kafka_bootstrap, name, partitions=1)
    producer = clients.producer(kafka_bootstrap, None, **{"transactional.id": f"tx-{unique}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(name, key=b"k", value=str(i).encode(), partition=0)
    producer.commit_transaction(30)  # records 0-4, the commit marker at 5
    tp = TopicPartition(name, 0)
    fetcher = _fetcher(kafka_bootstrap, f"g-{name}")
    try:
        fetcher.assign([tp])
        got = await _read(fetcher, {tp}, 5)
        assert [o for _, o in got] == [0, 1, 2, 3, 4]
        deadline = time.monotonic() + 10
        while fetcher.position(tp) != 6 and time.monotonic() < deadline:
            await fetcher.fetch({tp}, 0.2)  # librdkafka moves past the marker when a fetch brings it
        assert fetcher.position(tp) == 6
        assert fetcher.watermark(tp) == 6
        assert not more_waiting(4, fetcher.watermark(tp), fetcher.position(tp), 4)
    finally:
        fetcher.close()


async def test_a_partition_revoked_or_sought_while_paused_is_fetched_again_once_wanted(
    kafka_bootstrap: str, topic: str
) -> None:
    """librdkafka keeps a partition's pause across an unassignment: the fetcher resumes it before."""
    tp = TopicPartition(topic, 0)
    fetcher = _fetcher(kafka_bootstrap, f"g-{topic}")
    try:
        fetcher.assign([tp])
        await fetcher.fetch(set(), 0)  # paused (a recovery)
        fetcher.revoke([tp])  # a rebalance during the recovery
        await fetcher.fetch(set(), 0)
        fetcher.assign([tp])
        assert (await _read(fetcher, {tp}, 1))[0] == (0, 0)
        await fetcher.fetch(set(), 0)  # paused again, then sought (the recovery's seek)
        fetcher.seek(tp, 20)
        await fetcher.fetch(set(), 0)
        assert (await _read(fetcher, {tp}, 1))[0] == (0, 20)
    finally:
        fetcher.close()
