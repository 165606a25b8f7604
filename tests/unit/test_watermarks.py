"""The article watermark bookkeeping (agents/watermarks.py) without Kafka."""

from __future__ import annotations

import asyncio

import orjson

from stream.agents.watermarks import folded, lagging, marker_keys, markers, progress_key, wait_complete
from stream.kafka.partitioner import partition_for
from stream.processor import BatchProcessor
from stream.state.article import ARTICLE_LATENESS_MS


def test_a_marker_reaches_every_article_partition() -> None:
    for n in (1, 4, 12):
        keys = marker_keys(n)
        assert [partition_for(k.encode(), n) for k in keys] == list(range(n))
    assert {orjson.loads(v)["wm_src"] for _, v in markers(2, 1000, 4)} == {2}


def test_progress_is_the_highest_of_this_worker_and_the_table() -> None:
    p = BatchProcessor({}, ["a"])
    p.article_progress = {0: {0: 100, 1: 50}}
    table = {progress_key(0): orjson.dumps({"1": 70}), progress_key(1): orjson.dumps({"0": 100, "1": 100})}
    done = folded(p, table, 2)
    assert done == [{0: 100, 1: 70}, {0: 100, 1: 100}]
    assert lagging(done, 70, 2) == set()
    assert lagging(done, 71, 2) == {1}
    assert lagging(folded(p, {}, 2), 0, 2) == {0, 1}  # article partition 1 folded nothing yet


def test_an_idle_partition_is_held_back_and_its_marker_sent() -> None:
    p = BatchProcessor({}, ["a"])
    p.article_progress = {0: {0: 500}, 1: {0: 500}}
    sent: list[tuple[int, int]] = []

    async def send(q: int, w: int) -> None:
        sent.append((q, w))
        for done in p.article_progress.values():  # as the article agents fold it
            done[q] = w

    behind = asyncio.run(wait_complete(p, {}, 2, 400, 5.0, lambda q: q == 1, send))
    assert behind == set() and sent == [(1, 400)]
    assert p.source_watermark(1) == 400  # its later article events before 400 are not forwarded
    assert p.event_hwm[1] == 400 + ARTICLE_LATENESS_MS


def test_a_busy_partition_elsewhere_is_waited_for_up_to_the_timeout() -> None:
    p = BatchProcessor({}, ["a"])

    async def send(q: int, w: int) -> None:
        raise AssertionError("not idle: nothing is sent on its behalf")

    assert asyncio.run(wait_complete(p, {}, 1, 400, 0.05, lambda q: False, send)) == {0}
