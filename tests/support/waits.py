"""Waiting on something observable, for the tests that drive processes from outside, and observables to wait on."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait(cond: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.2) -> float:
    """Poll ``cond`` until it holds; return when it did (monotonic). Fails naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s")
        time.sleep(every_s)
    return time.monotonic()


def topic_size(bootstrap: str, topic: str) -> int:
    """Records on ``topic``: the sum of its partitions' high watermarks (an observable to wait on)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests-topic-size", "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        consumer.close()
