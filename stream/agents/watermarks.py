"""Per-input-partition watermarks of the article fold, and the wait that makes click rows exact.

Every scoring batch of input partition ``q`` forwards, after its article events, a marker
``{"wm_src": q, "wm": w}`` to every article partition: ``w`` is ``q``'s newest event time less
``ARTICLE_LATENESS_MS``, and ``q`` forwards no article event before ``w`` afterwards (the
processor drops later ones). The article agent of partition ``a`` keeps, per ``q``, the highest
``w`` it has folded (``BatchProcessor.article_progress`` and the ``articles`` table key
:func:`progress_key` for other workers, written after the batch's states). Once every article
partition has folded ``w >= W`` from every input partition, the article state before ``W`` is
final: a click row read as of ``W`` is the same whatever the read speed.

An idle input partition sends nothing. When it is this worker's and fully processed, the waiting
batch sends its marker on its behalf (and holds its later too-late events back); one owned by
another worker can only be waited for, up to ``STREAM_ARTICLE_WAIT_MS``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from stream.kafka.partitioner import partition_for
from stream.processor import BatchProcessor

_KEYS: dict[int, list[str]] = {}
_NONE = -(2**62)


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


def markers(source: int, watermark: int, partitions: int) -> list[tuple[str, bytes]]:
    """(key, JSON) of ``source``'s marker for every article partition, to forward after its events."""
    value = orjson.dumps({"wm_src": source, "wm": watermark})
    return [(key, value) for key in marker_keys(partitions)]


def progress_key(article_partition: int) -> str:
    """The ``articles`` table key of an article partition's folded watermarks (not an article id)."""
    return f"\x00wm:{article_partition}"


def folded(processor: BatchProcessor, table: Mapping[Any, bytes], partitions: int) -> list[dict[int, int]]:
    """Per article partition, the watermark folded per input partition (this worker's or the table's)."""
    out = []
    for a in range(partitions):
        mine = processor.article_progress.get(a, {})
        raw = table.get(progress_key(a))
        theirs = {int(k): v for k, v in orjson.loads(raw).items()} if raw else {}
        out.append({q: max(mine.get(q, _NONE), theirs.get(q, _NONE)) for q in mine.keys() | theirs.keys()})
    return out


def lagging(progress: list[dict[int, int]], watermark: int, partitions: int) -> set[int]:
    """Input partitions some article partition has not folded up to ``watermark``."""
    return {q for done in progress for q in range(partitions) if done.get(q, _NONE) < watermark}


async def wait_complete(processor: BatchProcessor, table: Mapping[Any, bytes], partitions: int, watermark: int,
                        timeout_s: float, idle: Callable[[int], bool],
                        send: Callable[[int, int], Any]) -> set[int]:
    """Wait until every input partition's article events before ``watermark`` are folded.

    ``idle(q)``: ``q`` is this worker's and has nothing unprocessed; ``send(q, w)`` forwards
    ``q``'s marker. Returns the input partitions still behind when ``timeout_s`` passed first
    (empty: complete; otherwise scores may differ in a replay).
    """
    deadline = time.monotonic() + timeout_s
    sent: set[int] = set()
    while True:
        behind = lagging(folded(processor, table, partitions), watermark, partitions)
        if not behind:
            return behind
        for q in behind - sent:
            if idle(q):
                processor.hold_back(q, watermark)
                await send(q, watermark)
                sent.add(q)
        if time.monotonic() >= deadline:
            return behind
        await asyncio.sleep(0.005)
