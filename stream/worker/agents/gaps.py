"""Records of the input that faust's consumer fetched but never handed to the stream.

faust hands a fetched record to the streams and then advances the partition's read offset; a
hand-off interrupted by its flow control is dropped with the offset advanced, and faust's commit
rule passes a gap of one offset. Under load about one run in a few of the bad-record test lost a
record this way at a batch boundary, and its offset was committed.

So the events agent checks that each partition's offsets arrive without holes. A hole is either
a record that was dropped or an offset that holds no record (a transaction marker, a compacted
record): :class:`GapFiller` reads the hole's offsets straight from the broker, and the records it
finds are processed with the batch, in offset order. Holes are rare unless the input is written by
transactional producers (one marker per transaction), and each costs one fetch round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from stream.worker.parsing import Record


def find_gaps(last: int | None, offsets: Iterable[int]) -> tuple[list[tuple[int, int]], int | None]:
    """Inclusive ranges of offsets missing after ``last`` (the partition's last delivered offset),
    and the highest offset delivered now.

    Offsets at or below the highest seen so far are redeliveries, not holes.

    >>> find_gaps(9, [10, 11, 13, 17, 12])
    ([(12, 12), (14, 16)], 17)
    >>> find_gaps(None, [5, 6]), find_gaps(9, [3, 10])
    (([], 6), ([], 10))
    """
    gaps: list[tuple[int, int]] = []
    high = last
    for o in offsets:
        if high is not None and o > high + 1:
            gaps.append((high + 1, o - 1))
        high = o if high is None else max(high, o)
    return gaps, high


class GapFiller:
    """Reads given offset ranges of a topic partition with a consumer of its own (no commits).

    ``make_consumer`` builds a confluent-kafka consumer with the cluster's settings and the
    worker's ``group.id`` (it never joins the group: it only assigns, and reads the group's
    committed offsets); it is made on first use and used by one thread at a time.
    """

    def __init__(self, make_consumer: Callable[[], Any], timeout_s: float = 10.0) -> None:
        self._make = make_consumer
        self._consumer: Any = None
        self._lock = threading.Lock()
        self.timeout_s = timeout_s

    def fetch(self, topic: str, partition: int, gaps: list[tuple[int, int]]) -> list[Record]:
        """The records at the offsets of ``gaps`` (offsets without a record are simply absent)."""
        from confluent_kafka import KafkaError, TopicPartition

        out: list[Record] = []
        with self._lock:
            if self._consumer is None:
                self._consumer = self._make()
            consumer = self._consumer
            for lo, hi in gaps:
                consumer.assign([TopicPartition(topic, partition, lo)])
                while True:
                    msg = consumer.poll(self.timeout_s)
                    if msg is None:
                        raise TimeoutError(
                            f"cannot read offsets {lo}..{hi} of {topic}[{partition}] within {self.timeout_s:g} s"
                        )
                    if msg.error() is not None:
                        if msg.error().code() == KafkaError._PARTITION_EOF:  # noqa: SLF001 - librdkafka's local error code
                            break
                        raise RuntimeError(f"reading {topic}[{partition}]@{lo}: {msg.error().str()}")
                    if msg.offset() > hi:
                        break
                    ts_type, ts = msg.timestamp()
                    out.append(Record(msg.key(), msg.value(), topic, partition, msg.offset(), ts if ts_type else None))
                    if msg.offset() >= hi:
                        break
            consumer.unassign()
        return out

    def log_start(self, topic: str, partition: int) -> int:
        """The partition's first offset on the broker (its low watermark)."""
        return self.watermarks(topic, partition)[0]

    def reading_start(self, topic: str, partition: int) -> int:
        """Where the group reads the partition from: its committed offset, else the log start.

        Asked of the broker: faust learns a newly assigned partition's committed offset only once
        its seek is done, and the partition's first records can reach the agents before that.
        A committed offset below the log start (records deleted by retention) reads from the
        log start, as ``auto.offset.reset=earliest`` does.
        """
        from confluent_kafka import TopicPartition

        with self._lock:
            if self._consumer is None:
                self._consumer = self._make()
            (tp,) = self._consumer.committed([TopicPartition(topic, partition)], timeout=self.timeout_s)
        if tp.error is not None:
            raise RuntimeError(f"cannot read the committed offset of {topic}[{partition}]: {tp.error.str()}")
        return max(tp.offset, self.log_start(topic, partition))  # no committed offset: OFFSET_INVALID, -1001

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """The partition's first offset and the offset after its last, asked of the broker."""
        from confluent_kafka import TopicPartition

        with self._lock:
            if self._consumer is None:
                self._consumer = self._make()
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.timeout_s, cached=False
            )
        return int(low), int(high)

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
