"""stream.worker.agents.gaps.GapFiller against the real broker: it reads exactly the records of the holes."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from stream.kafka import clients
from stream.testing import produce
from stream.worker.agents.gaps import GapFiller, find_gaps

pytestmark = pytest.mark.kafka


def test_gap_filler_reads_the_records_of_the_holes(kafka_bootstrap: str, unique: str) -> None:
    topic = f"gaps-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    produce(kafka_bootstrap, topic, [(b"k%d" % i, b"v%d" % i) for i in range(20)], timestamps=range(1000, 1020))
    delivered = [0, 1, 2, 6, 7, 9, 15]  # as if the consumer had dropped the others
    gaps, high = find_gaps(None, delivered)
    assert (gaps, high) == ([(3, 5), (8, 8), (10, 14)], 15)
    filler = GapFiller(
        lambda: clients.consumer(
            kafka_bootstrap,
            None,
            **{"group.id": f"g-{unique}", "enable.auto.commit": False, "enable.partition.eof": True},
        )
    )
    try:
        got = filler.fetch(topic, 0, gaps)
        again = filler.fetch(topic, 0, [(19, 19)])  # the same consumer, reused
    finally:
        filler.close()
    assert [r.offset for r in got] == [3, 4, 5, 8, 10, 11, 12, 13, 14]
    assert [(r.key, r.value, r.timestamp_ms) for r in got[:2]] == [(b"k3", b"v3", 1003), (b"k4", b"v4", 1004)]
    assert [(r.offset, r.value) for r in again] == [(19, b"v19")]


def test_reading_start_is_the_groups_committed_offset_or_the_log_start(kafka_bootstrap: str, unique: str) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    topic, group = f"starts-{unique}", f"g-{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    produce(kafka_bootstrap, topic, [(b"k", b"v%d" % i) for i in range(20)])

    def filler_of(group: str) -> GapFiller:
        config = {"group.id": group, "enable.auto.commit": False, "enable.partition.eof": True}
        return GapFiller(lambda: clients.consumer(kafka_bootstrap, None, **config))

    filler, other = filler_of(group), filler_of(f"{group}-other")
    member = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        assert filler.reading_start(topic, 0) == 0  # nothing committed: the log start
        member.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)  # as the last owner did
        assert (filler.reading_start(topic, 0), other.reading_start(topic, 0)) == (7, 0)
        # retention deleted records past the committed offset: reading begins at the new log start
        deleted = admin.delete_records([TopicPartition(topic, 0, 9)])
        deleted[TopicPartition(topic, 0, 9)].result(30)
        assert filler.reading_start(topic, 0) == 9
    finally:
        member.close()
        filler.close()
        other.close()
