"""The article watermark bookkeeping (agents/watermarks.py) without Kafka."""

from __future__ import annotations

import asyncio

import orjson

from stream.kafka.partitioner import partition_for
from stream.worker.agents.watermarks import (
    NO_WATERMARK,
    Progress,
    caught_up,
    decode_progress,
    encode_progress,
    fold_marker,
    folded,
    lagging,
    marker_keys,
    markers,
    progress_key,
    wait_complete,
)
from stream.worker.processor import BatchProcessor


def _fold(progress: Progress, *values: bytes) -> Progress:
    for v in values:
        fold_marker(progress, orjson.loads(v))
    return progress


def test_a_marker_reaches_every_article_partition() -> None:
    for n in (1, 4, 12):
        keys = marker_keys(n)
        assert [partition_for(k.encode(), n) for k in keys] == list(range(n))
    assert {orjson.loads(v)["wm_src"] for _, v in markers(2, 1000, 4)} == {2}


def test_this_workers_progress_wins_for_the_partitions_it_folds() -> None:
    p = BatchProcessor({}, ["a"])
    p.article_progress = {0: {0: (100, False), 1: (50, False)}}
    # the table's copy of partition 0 lags this worker's; partition 1 is another worker's
    table = {
        progress_key(0): encode_progress({0: (90, False)}),
        progress_key(1): encode_progress({0: (100, False), 1: (100, True)}),
    }
    done = folded(p, table, 2)
    assert done == [{0: (100, False), 1: (50, False)}, {0: (100, False), 1: (100, True)}]
    assert lagging(done, 50, 2) == set()
    assert lagging(done, 51, 2) == {1}
    assert lagging(folded(p, {}, 2), 0, 2) == {0, 1}  # article partition 1 folded nothing yet
    assert decode_progress(encode_progress(done[1])) == done[1]


def test_an_idle_source_holds_back_no_watermark_until_it_is_busy_again() -> None:
    progress = _fold({}, markers(0, 1000, 1)[0][1], markers(1, 400, 1, idle=True)[0][1])
    assert lagging([progress], 10**12, 2) == {0}  # 1 is idle: far beyond its 400 it holds nothing back
    _fold(progress, markers(1, 450, 1, idle=False)[0][1])  # new events on 1
    assert lagging([progress], 451, 2) == {1}
    assert lagging([progress], 450, 2) == set()
    # a marker below the highest one (folded again after a rebalance) changes nothing
    _fold(progress, markers(1, 400, 1, idle=True)[0][1])
    assert progress[1] == (450, False)
    _fold(progress, markers(1, 450, 1, idle=True)[0][1])  # caught up again at the same watermark
    assert lagging([progress], 10**12, 2) == {0}


def test_a_source_with_no_event_yet_can_be_idle() -> None:
    progress = _fold({}, markers(3, None, 1, idle=True)[0][1])
    assert progress[3] == (NO_WATERMARK, True)
    assert lagging([progress], 0, 4) == {0, 1, 2}


def test_caught_up_needs_the_highwater_and_every_record_up_to_it() -> None:
    assert not caught_up(None, None, None)  # nothing fetched yet
    assert caught_up(None, None, 0)  # an empty partition
    assert caught_up(None, 12, 12)  # restarted at its end: nothing to process
    assert not caught_up(None, 12, 13)
    assert not caught_up(10, 5, 12)
    assert caught_up(11, 5, 12)


def test_the_wait_releases_idle_partitions_and_returns_when_complete() -> None:
    p = BatchProcessor({}, ["a"])
    p.article_progress = {0: {0: (500, False)}, 1: {0: (500, False)}}
    released: list[int] = []

    async def release(q: int) -> None:
        released.append(q)
        if q == 1:  # this worker's and caught up: its idle marker is folded by every article partition
            for done in p.article_progress.values():
                fold_marker(done, {"wm_src": 1, "wm": NO_WATERMARK, "idle": True})

    behind = asyncio.run(wait_complete(p, {}, 2, 400, 5.0, release))
    assert behind == set() and released == [1]


def test_a_busy_partition_elsewhere_is_waited_for_up_to_the_timeout() -> None:
    p = BatchProcessor({}, ["a"])

    async def release(q: int) -> None:
        pass  # not this worker's, or not caught up

    assert asyncio.run(wait_complete(p, {}, 1, 400, 0.05, release)) == {0}
