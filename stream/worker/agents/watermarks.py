"""Per-input-partition watermarks of the article fold, and the wait that makes click rows exact.

Every scoring batch of input partition ``q`` forwards, after its article events, a marker
``{"wm_src": q, "wm": w, "idle": i}`` to every article partition: ``w`` is ``q``'s newest event
time less ``ARTICLE_LATENESS_MS``, and ``q`` forwards no article event before ``w`` afterwards
(the processor drops later ones); ``i`` says that ``q`` was caught up after the batch (every
record up to its high watermark processed). The article agent of partition ``a`` keeps, per
``q``, the highest ``w`` it has folded and the idle flag of the latest marker at that ``w``
(``BatchProcessor.article_progress`` and the ``articles`` table key :func:`progress_key` for other
workers, written after the batch's states). Once every article partition has folded, from every
input partition, ``w >= W`` or an idle marker, the article state before ``W`` is final: a click
row read as of ``W`` is the same whatever the read speed.

Idleness (as Flink's source idleness): an idle partition holds no watermark back until its next
batch sends a marker that is not idle. An input partition idle from the start, or one that
catches up without a batch, sends nothing by itself: its owner forwards an idle marker for it
(on a timer of :data:`IDLE_CHECK_S`, and at once when one of its own
batches waits for it). Replays stay exact: reading a backlog, a partition is caught up only once
its backlog is done, and then it has no event left to count (docs/worker.md, "Staleness contract").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from stream.kafka.partitioner import partition_for
from stream.worker.processor import BatchProcessor

_KEYS: dict[int, list[str]] = {}
#: the watermark of a source that has forwarded nothing yet
NO_WATERMARK = -(2**62)
#: how often a worker checks its input partitions for idleness (seconds)
IDLE_CHECK_S = 0.25
#: the article agent's batch window while click rows wait (instead of STREAM_SCORE_BATCH_MS): each
#: repartition record already carries a whole scoring batch, and a waiting batch waits for every
#: hop of the fold; with 200 ms windows, chains of batches waiting on each other outran a 2 s wait
FOLD_WINDOW_S = 0.005
#: per input partition: (highest watermark folded, its latest marker at that watermark was idle)
Progress = dict[int, tuple[int, bool]]


def marker_keys(partitions: int) -> list[str]:
    """A key per article partition that the forwarder routes to it (``partition_for``)."""
    keys = _KEYS.get(partitions)
    if keys is None:
        found: dict[int, str] = {}
        i = 0
        while len(found) < partitions:
            key = f"\x00wm{i}"
            found.setdefault(partition_for(key.encode(), partitions), key)
            i += 1
        keys = _KEYS[partitions] = [found[p] for p in range(partitions)]
    return keys


def markers(source: int, watermark: int | None, partitions: int, idle: bool = False) -> list[tuple[str, bytes]]:
    """(key, JSON) of ``source``'s marker for every article partition, to forward after its events.

    ``watermark`` None: the source has had no event yet (only an idle marker says something then).
    """
    value = orjson.dumps({"wm_src": source, "wm": NO_WATERMARK if watermark is None else watermark, "idle": idle})
    return [(key, value) for key in marker_keys(partitions)]


def progress_key(article_partition: int) -> str:
    """The ``articles`` table key of an article partition's folded watermarks (not an article id)."""
    return f"\x00wm:{article_partition}"


def fold_marker(progress: Progress, marker: Mapping[str, Any]) -> None:
    """Record a folded marker: the highest watermark per source, and whether the source is idle.

    A marker below the highest one changes nothing (one folded again after a rebalance); one at
    it sets the idle flag (an idle marker repeats the source's last watermark).
    """
    src, wm = int(marker["wm_src"]), int(marker["wm"])
    if wm >= progress.get(src, (NO_WATERMARK - 1, False))[0]:
        progress[src] = (wm, bool(marker.get("idle", False)))


def encode_progress(progress: Progress) -> bytes:
    """The table value of an article partition's :data:`Progress`."""
    return orjson.dumps({str(q): [wm, idle] for q, (wm, idle) in progress.items()})


def decode_progress(raw: bytes | None) -> Progress:
    """The inverse of :func:`encode_progress` (empty for no value)."""
    return {int(q): (int(wm), bool(idle)) for q, (wm, idle) in orjson.loads(raw).items()} if raw else {}


def folded(processor: BatchProcessor, table: Mapping[Any, bytes], partitions: int) -> list[Progress]:
    """Per article partition, the folded progress: this worker's article agent's for the article
    partitions it folds (the table's copy may lag it), the table's for the others."""
    out = []
    for a in range(partitions):
        mine = processor.article_progress.get(a)
        out.append(mine if mine is not None else decode_progress(table.get(progress_key(a))))
    return out


def lagging(progress: list[Progress], watermark: int, partitions: int) -> set[int]:
    """Input partitions some article partition has not folded up to ``watermark``, nor as idle."""
    behind = set()
    for done in progress:
        for q in range(partitions):
            wm, idle = done.get(q, (NO_WATERMARK - 1, False))
            if wm < watermark and not idle:
                behind.add(q)
    return behind


def caught_up(position: int | None, committed: int | None, highwater: int | None) -> bool:
    """Every record of a partition up to its high watermark is processed.

    ``position``: the last offset processed since it was assigned; ``committed``: where reading
    started (None: not known). Unknown high watermark (nothing fetched yet): not caught up.

    >>> caught_up(9, None, 10), caught_up(None, 10, 10), caught_up(None, None, 0), caught_up(None, None, 3)
    (True, True, True, False)
    """
    if highwater is None:
        return False
    done = position + 1 if position is not None else (committed or 0)
    return done >= highwater


async def wait_complete(
    processor: BatchProcessor,
    table: Mapping[Any, bytes],
    partitions: int,
    watermark: int,
    timeout_s: float,
    release: Callable[[int], Awaitable[Any]],
) -> set[int]:
    """Wait until every input partition's article events before ``watermark`` are folded.

    ``release(q)`` forwards an idle marker for ``q`` if it is this worker's and caught up (once).
    Returns the input partitions still behind when ``timeout_s`` passed first (empty: complete;
    otherwise scores may differ in a replay).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        behind = lagging(folded(processor, table, partitions), watermark, partitions)
        if not behind:
            return behind
        for q in behind:
            await release(q)
        if time.monotonic() >= deadline:
            return behind
        await asyncio.sleep(0.005)
